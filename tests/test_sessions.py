"""Sessions that outlive a connection: tokens, a dropped connection's chat
picked up within the grace, held messages, cooldowns across a reload.  In
memory (Autobahn's memory agent, a fake clock); the same over real sockets
and in the browser is in test_sessions_e2e.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from memory import Client, Harness
from twisted.internet import defer

from roulette import sessions, wire
from roulette.limits import DEFAULT, Limits

GRACE = DEFAULT.resume_grace


@pytest.fixture
def h() -> Iterator[Harness]:
    """No cooldown unless a test sets one; room for many commands."""
    harness = Harness(cooldown=0, limits=Limits(queue_burst=100, message_burst=1000))
    yield harness
    pytest_twisted.blockon(defer.ensureDeferred(harness.close()))


def said(client: Client) -> list[dict[str, Any]]:
    """The events since the last call, but the ``online`` counts."""
    return [e for e in client.take() if e["type"] != "online"]


async def back(h: Harness, token: str, headers: dict[str, str] | None = None) -> Client:
    return await h.connect(headers, path=f"/ws?session={token}")


async def pair(h: Harness) -> tuple[Client, Client]:
    a = await h.connect()
    b = await h.connect()
    assert [e["type"] for e in said(a)] == ["waiting", "paired"]
    assert [e["type"] for e in said(b)] == ["waiting", "paired"]
    return a, b


async def dropped(h: Harness, *addresses: str) -> tuple[Client, Client]:
    """Two clients chatting (from ``addresses``, behind a trusted proxy,
    if given), the first of whose connection drops without a close; its
    partner is told at once."""
    if addresses:
        h.lobby.gate.trust_proxy = 1
        a, b = [await h.connect({"X-Forwarded-For": address}) for address in addresses]
        said(a), said(b)
    else:
        a, b = await pair(h)
    a.dropConnection(abort=True)
    h.pump()
    assert said(b) == [{"type": "partner_away"}]
    return a, b


def close(client: Client, code: int | None) -> None:
    """Send a close frame, as a browser does (Autobahn's sendClose refuses
    1001, which a page that goes away sends)."""
    client.sendCloseFrame(code=code, isReply=False)


def message(client: Client, text: str, id: int | None = None) -> None:
    client.send({"type": "message", "text": text, **({"id": id} if id else {})})


@pytest_twisted.ensureDeferred
async def test_each_connection_gets_a_token_after_its_first_count(h: Harness) -> None:
    a = await h.connect()
    b = await h.connect()
    assert [json.loads(payload)["type"] for payload, _ in a.raw][:3] == [
        "online",
        "session",
        "waiting",
    ]
    for client in (a, b):
        [event] = client.sessions
        assert event["resumed"] is False
        assert sessions.well_formed(event["token"])
    assert a.token != b.token
    # Only a keyed hash is kept.
    kept = {s.digest for s in h.lobby.sessions}
    assert a.token.encode() not in kept and len(kept) == 2


@pytest_twisted.ensureDeferred
async def test_a_dropped_client_comes_back_to_its_chat_with_what_it_missed(h: Harness) -> None:
    a, b = await pair(h)
    message(a, "before")
    h.pump()
    assert said(b) == [{"type": "message", "text": "before"}]
    a.dropConnection(abort=True)  # its network went: no close frame
    h.pump()
    assert said(b) == [{"type": "partner_away"}]
    for i in range(3):
        message(b, f"meanwhile {i}", id=i + 1)
    b.send({"type": "typing", "active": True})  # not worth keeping
    h.pump()
    assert said(b) == [
        {"type": "sent", "id": 1},
        {"type": "sent", "id": 2},
        {"type": "sent", "id": 3},
    ]
    h.tick(GRACE - 1)
    a2 = await back(h, a.token)
    assert a2.sessions[0]["resumed"] is True
    assert a2.token != a.token  # a token is used once
    assert said(a2) == [
        {"type": "partner_back"},
        {"type": "message", "text": "meanwhile 0"},
        {"type": "message", "text": "meanwhile 1"},
        {"type": "message", "text": "meanwhile 2"},
    ]
    assert said(b) == [{"type": "partner_back"}]
    # The chat goes on, both ways, and nothing comes twice.
    message(a2, "after", id=7)
    message(b, "welcome back")
    h.pump()
    got = said(a2)  # (in the order the server read the two)
    assert sorted(got, key=str) == [
        {"type": "message", "text": "welcome back"},
        {"type": "sent", "id": 7},
    ]
    assert said(b) == [{"type": "message", "text": "after"}]
    h.tick(GRACE)
    assert said(a2) == [] and said(b) == []
    assert h.lobby.stats().as_dict() == {"online": 2, "waiting": 0, "chatting": 2}


@pytest_twisted.ensureDeferred
async def test_back_after_the_grace_the_chat_has_ended_and_it_starts_idle(h: Harness) -> None:
    a, b = await dropped(h)
    message(b, "still there?")
    h.pump()
    h.tick(GRACE)
    assert said(b) == [{"type": "partner_left"}]
    a2 = await back(h, a.token)
    assert a2.sessions[0]["resumed"] is False
    assert said(a2) == [{"type": "partner_left", "while_away": True}]  # idle: not queued
    assert h.lobby.stats().as_dict() == {"online": 2, "waiting": 0, "chatting": 0}
    a2.send({"type": "next"})
    b.send({"type": "next"})
    h.pump()
    assert [e["type"] for e in said(a2)] == ["waiting", "paired"]


@pytest_twisted.ensureDeferred
async def test_a_partner_who_leaves_meanwhile_ends_the_chat(h: Harness) -> None:
    a, b = await dropped(h)
    message(b, "bye then")
    b.send({"type": "next"})
    h.pump()
    assert [e["type"] for e in said(b)] == ["waiting"]
    c = await h.connect()  # b meets someone else; never the one away
    assert [e["type"] for e in said(c)] == ["waiting", "paired"]
    assert [e["type"] for e in said(b)] == ["paired"]
    a2 = await back(h, a.token)
    assert a2.sessions[0]["resumed"] is True
    assert said(a2) == [
        {"type": "message", "text": "bye then"},
        {"type": "partner_left", "while_away": True},
    ]
    assert said(b) == [] and said(c) == []
    assert h.lobby.stats().as_dict() == {"online": 3, "waiting": 0, "chatting": 2}


@pytest_twisted.ensureDeferred
async def test_what_is_held_for_a_partner_away_is_capped(h: Harness) -> None:
    a, b = await dropped(h)
    for i in range(sessions.MAX_HELD):
        message(b, f"m{i}", id=i + 1)
    message(b, "one too many", id=99)
    h.pump()
    events = said(b)
    assert events[:-1] == [{"type": "sent", "id": i + 1} for i in range(sessions.MAX_HELD)]
    assert events[-1]["type"] == "error"
    assert events[-1]["code"] == wire.PARTNER_AWAY and events[-1]["id"] == 99
    assert b.closed is None  # an error, not a close
    a2 = await back(h, a.token)
    got = said(a2)
    assert got[0] == {"type": "partner_back"}
    assert [e["text"] for e in got[1:]] == [f"m{i}" for i in range(sessions.MAX_HELD)]


@pytest_twisted.ensureDeferred
async def test_what_is_held_is_capped_in_bytes_too(h: Harness) -> None:
    a, b = await dropped(h)
    text = "é" * 2000  # 4 KiB and a little more, encoded
    size = len(wire.encode_message(text))
    fits = sessions.MAX_HELD_BYTES // size
    for i in range(fits + 1):
        message(b, text, id=i + 1)
    h.pump()
    events = said(b)
    assert [e["type"] for e in events] == ["sent"] * fits + ["error"]
    assert events[-1]["code"] == wire.PARTNER_AWAY
    a2 = await back(h, a.token)
    assert [e["type"] for e in said(a2)] == ["partner_back"] + ["message"] * fits


@pytest_twisted.ensureDeferred
async def test_a_token_from_another_address_starts_a_fresh_session(h: Harness) -> None:
    a, b = await dropped(h, "203.0.113.1", "203.0.113.2")
    thief = await back(h, a.token, {"X-Forwarded-For": "198.51.100.9"})
    assert thief.sessions[0]["resumed"] is False
    assert said(thief) == [{"type": "waiting"}]  # a newcomer, nowhere near b's chat
    assert said(b) == []
    # The stolen token was not spent: its owner comes back with it.
    a2 = await back(h, a.token, {"X-Forwarded-For": "203.0.113.1"})
    assert a2.sessions[0]["resumed"] is True
    assert said(a2) == [{"type": "partner_back"}]


@pytest_twisted.ensureDeferred
async def test_a_spent_or_made_up_token_starts_a_fresh_session(h: Harness) -> None:
    a, _ = await dropped(h)
    old = a.token
    a2 = await back(h, old)
    assert a2.sessions[0]["resumed"] is True
    for token in (old, "A" * sessions.TOKEN_LENGTH, "short", "x" * 500, "%00" * 3):
        c = await back(h, token)
        assert c.sessions[0]["resumed"] is False
        assert said(c)[0] == {"type": "waiting"}
        c.sendClose()
        h.pump()


def test_a_token_expires_an_hour_after_its_session_was_last_used() -> None:
    now = [1000.0]
    store = sessions.Sessions(lambda: now[0])
    session, token = store.start("addr")
    store.release(session)  # its connection closed
    now[0] += sessions.LIFETIME
    claimed = store.claim(token, "addr")
    assert claimed is not None and claimed[0] is session  # just in time
    token = claimed[1]
    store.release(session)
    now[0] += sessions.LIFETIME + 0.001
    assert store.claim(token, "addr") is None
    assert len(store) == 0  # and it is forgotten
    # Pruned without being presented, too.
    other, _ = store.start("addr")
    store.release(other)
    now[0] += sessions.LIFETIME + 1
    store.prune()
    assert len(store) == 0


def test_sessions_without_a_connection_are_bounded_per_address_and_in_all() -> None:
    store = sessions.Sessions(lambda: 0.0, max_detached=5, max_detached_per_address=2)
    made = []
    for _ in range(4):
        session, token = store.start("one")
        store.release(session)
        made.append(token)
    assert len(store) == 2
    assert store.claim(made[0], "one") is None and store.claim(made[3], "one") is not None
    for i in range(6):
        session, _ = store.start(f"addr{i}")
        store.release(session)
    assert len(store) == 6  # five detached, and the one claimed above


@pytest_twisted.ensureDeferred
async def test_a_reload_does_not_bring_back_the_stranger_just_skipped() -> None:
    h = Harness(cooldown=60, limits=Limits(queue_burst=100))
    try:
        a, b = await pair(h)
        a.send({"type": "next"})  # a skips b
        b.send({"type": "next"})
        h.pump()
        # (Whichever Next the server reads first, both end up waiting.)
        assert said(a)[-1] == said(b)[-1] == {"type": "waiting"}
        close(a, 1001)  # a reload closes the page's connection
        h.pump()
        a2 = await back(h, a.token)
        assert a2.sessions[0]["resumed"] is False
        assert said(a2) == [{"type": "waiting"}]  # not paired with b, waiting too
        c = await h.connect()
        assert [e["type"] for e in said(c)] == ["waiting", "paired"]
        assert [e["type"] for e in said(a2) + said(b)] == ["paired"]
    finally:
        await h.close()


@pytest_twisted.ensureDeferred
async def test_without_its_token_a_reload_meets_the_stranger_again() -> None:
    """The test above can fail: a new session has no cooldown."""
    h = Harness(cooldown=60, limits=Limits(queue_burst=100))
    try:
        a, b = await pair(h)
        a.send({"type": "next"})
        b.send({"type": "next"})
        h.pump()
        close(a, 1001)
        h.pump()
        a2 = await h.connect()
        assert [e["type"] for e in said(a2)] == ["waiting", "paired"]
    finally:
        await h.close()


@pytest.mark.parametrize("code", [1000, 1001, None])
@pytest_twisted.ensureDeferred
async def test_a_close_frame_ends_the_chat_at_once(h: Harness, code: int | None) -> None:
    a, b = await pair(h)
    close(a, code)
    h.pump()
    assert said(b) == [{"type": "partner_left"}]
    a2 = await back(h, a.token)
    assert a2.sessions[0]["resumed"] is False
    assert said(a2) == [{"type": "waiting"}]


@pytest_twisted.ensureDeferred
async def test_closing_with_4000_says_back_soon(h: Harness) -> None:
    a, b = await pair(h)
    a.sendClose(code=wire.CLOSE_AWAY, reason="offline")
    h.pump()
    assert said(b) == [{"type": "partner_away"}]
    a2 = await back(h, a.token)
    assert said(a2) == [{"type": "partner_back"}]


@pytest_twisted.ensureDeferred
async def test_a_waiting_client_away_is_not_paired_and_waits_again_when_back(h: Harness) -> None:
    a = await h.connect()
    assert said(a) == [{"type": "waiting"}]
    a.dropConnection(abort=True)
    h.pump()
    b = await h.connect()
    assert said(b) == [{"type": "waiting"}]  # never paired with one away
    a2 = await back(h, a.token)
    assert a2.sessions[0]["resumed"] is True
    assert [e["type"] for e in said(a2)] == ["waiting", "paired"]
    assert [e["type"] for e in said(b)] == ["paired"]


@pytest_twisted.ensureDeferred
async def test_an_idle_client_that_drops_is_simply_gone(h: Harness) -> None:
    a = await h.connect()
    a.send({"type": "stop"})
    h.pump()
    a.dropConnection(abort=True)
    h.pump()
    assert h.lobby.stats().online == 0


@pytest_twisted.ensureDeferred
async def test_a_connection_still_open_is_replaced_by_the_one_with_its_token(h: Harness) -> None:
    """A phone that changed networks comes back before the server noticed
    its old connection died (or the tab was duplicated): the newest goes on."""
    a, b = await pair(h)
    a2 = await back(h, a.token)
    assert a2.sessions[0]["resumed"] is True
    assert a.closed is not None and a.closed[1] == wire.CLOSE_RESUMED_ELSEWHERE
    assert said(b) == [{"type": "partner_away"}, {"type": "partner_back"}]
    assert said(a2) == [{"type": "partner_back"}]
    message(b, "hello again")
    h.pump()
    assert said(a2) == [{"type": "message", "text": "hello again"}]
    assert h.lobby.stats().as_dict() == {"online": 2, "waiting": 0, "chatting": 2}


@pytest_twisted.ensureDeferred
async def test_a_grace_of_zero_ends_a_dropped_chat_at_once() -> None:
    h = Harness(cooldown=0, resume_grace=0)
    try:
        a, b = await pair(h)
        a.dropConnection(abort=True)
        h.pump()
        assert said(b) == [{"type": "partner_left"}]
    finally:
        await h.close()


@pytest_twisted.ensureDeferred
async def test_shutting_down_gives_up_on_the_sessions_away(h: Harness) -> None:
    _, b = await dropped(h)
    h.lobby.stopService()
    h.pump()
    assert b.closed is not None and b.closed[1] == 1001
    assert h.lobby.stats().online == 0


def test_a_token_in_a_url_is_left_out_of_the_access_log() -> None:
    from twisted.web.test.requesthelper import DummyRequest

    from roulette.website import access_log_line

    token = "Ab-_" * 8
    request = DummyRequest([b"ws"])
    request.uri = f"/ws?video=1&session={token}&interest=cats".encode()
    request.clientproto = b"HTTP/1.1"
    request.sentLength = 0
    request.code = 101
    line = access_log_line("[06/Dec/2026:03:00:00 +0000]", request)
    assert token not in line
    assert "/ws?video=1&session=-&interest=cats" in line


@pytest_twisted.ensureDeferred
async def test_a_ban_gives_up_on_the_banned_sessions_away(h: Harness) -> None:
    _, b = await dropped(h, "203.0.113.1", "203.0.113.2")
    keys = h.lobby.gate.hasher.keys("203.0.113.1")
    h.lobby.ban(keys.address, h.clock.seconds() + 600)
    h.pump()
    # It will not be let back in: its partner need not wait out the grace.
    assert said(b) == [{"type": "partner_left"}]
    assert h.lobby.stats().online == 1
