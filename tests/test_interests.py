"""Interests over the wire: the ``interests`` command and URL parameter,
their normalising and refusals, ``paired``'s ``common`` and the fallback to
anyone after ``--interest-wait`` (docs/protocol.md, "Interests"); in
memory, over real sockets, and across two processes sharing Redis."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import urlencode

import pytest
import pytest_twisted
import websockets
from memory import Client, Harness
from redis_server import RedisServer
from support import RunningServer, run_async
from test_e2e import recv, send

from roulette.limits import Limits


def kinds(client: Client) -> list[str]:
    return [event["type"] for event in client.take()]


def heard(client: Client) -> list[dict[str, Any]]:
    """The events since the last call, but the ``online`` counts."""
    return [event for event in client.take() if event["type"] != "online"]


def url_with(interests: list[str]) -> str:
    return "/ws?" + urlencode([("interest", tag) for tag in interests])


async def waiting_with(harness: Harness, interests: list[str]) -> Client:
    """A client that gave ``interests`` in its URL and waits."""
    client = await harness.connect(path=url_with(interests))
    assert client.take()[1:] == [{"type": "interests", "tags": interests}, {"type": "waiting"}]
    return client


# -- in memory ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "rule"),
    [
        ({"type": "interests"}, 'Interests need a list field "tags".'),
        ({"type": "interests", "tags": "cats"}, 'Interests need a list field "tags".'),
        (
            {"type": "interests", "tags": [f"t{i}" for i in range(11)]},
            "You may give at most 10 interests.",
        ),
        ({"type": "interests", "tags": ["cats", 7]}, "Each interest must be a string."),
        (
            {"type": "interests", "tags": ["   "]},
            "Each interest must be 1 to 30 characters long (after trimming).",
        ),
        (
            {"type": "interests", "tags": ["x" * 31]},
            "Each interest must be 1 to 30 characters long (after trimming).",
        ),
        (
            # Thirty characters as typed, more once normalised (one ligature, three letters).
            {"type": "interests", "tags": ["\ufb03" * 11]},
            "Each interest must be 1 to 30 characters long (after trimming).",
        ),
        (
            {"type": "interests", "tags": ["cats\u0000"]},
            "An interest must not contain control characters.",
        ),
        ({"type": "interests", "tags": ["\ud800"]}, "An interest is not valid Unicode."),
    ],
    ids=[
        "no-tags",
        "not-a-list",
        "eleven",
        "not-a-string",
        "blank",
        "too-long",
        "too-long-normalised",
        "control",
        "surrogate",
    ],
)
@pytest_twisted.ensureDeferred
async def test_each_broken_rule_is_named_and_the_interests_kept(
    harness: Harness, command: dict[str, Any], rule: str
) -> None:
    a = await waiting_with(harness, ["cats"])
    a.send(command)
    harness.pump()
    assert a.take() == [{"type": "error", "code": "bad_message", "message": rule}]
    # Nothing lost: a still waits with its cats.
    b = await harness.connect(path=url_with(["dogs"]))
    assert kinds(b) == ["online", "interests", "waiting"]
    c = await harness.connect(path=url_with(["cats"]))
    assert c.take()[-1] == {"type": "paired", "common": ["cats"]}
    assert a.take() == [{"type": "paired", "common": ["cats"]}]


@pytest_twisted.ensureDeferred
async def test_interests_are_normalised_and_answered(harness: Harness) -> None:
    a = await harness.connect()
    a.take()
    a.send(
        {
            "type": "interests",
            "tags": ["Cats ", "\uff23\uff21\uff34\uff33", "  Big \t\n Dogs", "Straße"],
        }
    )
    harness.pump()
    assert a.take() == [{"type": "interests", "tags": ["cats", "big dogs", "strasse"]}]
    a.send({"type": "interests", "tags": []})
    harness.pump()
    assert a.take() == [{"type": "interests", "tags": []}]


@pytest_twisted.ensureDeferred
async def test_cats_meets_the_one_stranger_who_likes_cats(harness: Harness) -> None:
    """The issue's example: a queue of strangers with other interests, and
    one with ``"Cats "``."""
    others = [await waiting_with(harness, tags) for tags in (["dogs"], ["chess", "go"], ["films"])]
    cat = await harness.connect()
    cat.take()
    cat.send({"type": "interests", "tags": ["Cats ", "yarn"]})
    harness.pump()
    assert cat.take() == [{"type": "interests", "tags": ["cats", "yarn"]}]
    me = await harness.connect()
    me.take()
    me.send({"type": "interests", "tags": ["cats"]})
    harness.pump()
    assert me.take() == [
        {"type": "interests", "tags": ["cats"]},
        {"type": "paired", "common": ["cats"]},
    ]
    assert cat.take() == [{"type": "paired", "common": ["cats"]}]
    for other in others:
        assert other.take() == []
    assert harness.lobby.stats().as_dict() == {"online": 5, "waiting": 3, "chatting": 2}


@pytest_twisted.ensureDeferred
async def test_the_fallback_comes_after_the_interest_wait_and_not_before() -> None:
    harness = Harness(limits=Limits(interest_wait=10))
    try:
        a = await waiting_with(harness, ["cats"])
        harness.tick(3)
        b = await waiting_with(harness, ["dogs"])
        plain = await harness.connect()
        assert kinds(plain) == ["online", "waiting"]  # a and b still wait for theirs
        harness.tick(6.9)
        assert heard(a) == [] and heard(plain) == []
        harness.tick(0.1)  # a's wait is over: the stranger without interests will do
        assert heard(a) == [{"type": "paired", "common": []}]
        assert heard(plain) == [{"type": "paired", "common": []}]
        late = await harness.connect()
        assert kinds(late) == ["online", "waiting"]  # b: 3 s to go
        harness.tick(2.9)
        assert heard(b) == []
        harness.tick(0.1)
        assert heard(b) == [{"type": "paired", "common": []}]
        assert heard(late) == [{"type": "paired", "common": []}]
    finally:
        await harness.close()


@pytest_twisted.ensureDeferred
async def test_new_interests_place_a_waiting_client_again_and_leave_a_chat_alone(
    harness: Harness,
) -> None:
    a = await waiting_with(harness, ["cats"])
    b = await waiting_with(harness, ["dogs"])
    b.send({"type": "interests", "tags": ["dogs", "cats"]})
    harness.pump()
    assert heard(b) == [
        {"type": "interests", "tags": ["dogs", "cats"]},
        {"type": "paired", "common": ["cats"]},
    ]
    assert heard(a) == [{"type": "paired", "common": ["cats"]}]
    # In a chat: answered, and nothing else happens until the next queue.
    a.send({"type": "interests", "tags": ["chess"]})
    harness.pump()
    assert heard(a) == [{"type": "interests", "tags": ["chess"]}]
    assert heard(b) == []
    c = await waiting_with(harness, ["chess"])
    a.send({"type": "next"})
    harness.pump()
    assert heard(a) == [{"type": "waiting"}, {"type": "paired", "common": ["chess"]}]
    assert c.take() == [{"type": "paired", "common": ["chess"]}]


@pytest_twisted.ensureDeferred
async def test_interests_in_the_url_count_from_the_first_match(harness: Harness) -> None:
    a = await harness.connect(path=url_with(["Cats", "Chess"]))
    assert a.take()[1:] == [
        {"type": "interests", "tags": ["cats", "chess"]},
        {"type": "waiting"},
    ]
    plain = await harness.connect()
    assert kinds(plain) == ["online", "waiting"]
    b = await harness.connect(path="/ws?video=0&" + url_with(["chess", "cats"])[4:])
    assert b.take()[1:] == [
        {"type": "interests", "tags": ["chess", "cats"]},
        {"type": "waiting"},
        {"type": "paired", "common": ["cats", "chess"]},
    ]


@pytest_twisted.ensureDeferred
async def test_broken_interests_in_the_url_are_left_out_and_explained(harness: Harness) -> None:
    plain = await harness.connect()
    assert kinds(plain) == ["online", "waiting"]
    a = await harness.connect(path=url_with(["cats", "x" * 40]))
    events = a.take()
    assert [e["type"] for e in events] == ["online", "error", "waiting", "paired"]
    assert events[1] == {
        "type": "error",
        "code": "bad_message",
        "message": "The interests in the URL were left out: Each interest must be 1 to 30 "
        "characters long (after trimming).",
    }
    assert events[3] == {"type": "paired", "common": []}  # no interests: anyone at once


@pytest_twisted.ensureDeferred
async def test_interests_spend_the_command_budget(harness: Harness) -> None:
    a = await harness.connect()
    a.take()
    for i in range(6):
        a.send({"type": "interests", "tags": [f"t{i}"]})
    harness.pump()
    events = a.take()
    assert [e["type"] for e in events] == ["interests"] * 5 + ["error"]
    assert events[-1]["code"] == "rate_limited"


@pytest_twisted.ensureDeferred
async def test_an_interest_wait_of_zero_turns_interests_off() -> None:
    harness = Harness(limits=Limits(interest_wait=0))
    try:
        a = await waiting_with(harness, ["cats"])
        b = await harness.connect(path=url_with(["dogs"]))
        assert b.take()[0]["limits"]["interest_wait"] == 0
        assert heard(a) == [{"type": "paired", "common": []}]
    finally:
        await harness.close()


# -- over real sockets ------------------------------------------------------------


async def _connect(url: str, interests: list[str] | None = None) -> Any:
    ws = await websockets.connect(url + (url_with(interests)[3:] if interests else ""))
    assert json.loads(await ws.recv())["type"] == "online"
    if interests:
        assert (await recv(ws))["type"] == "interests"
    assert await recv(ws) == {"type": "waiting"}
    return ws


async def _no_event(ws: Any, seconds: float) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await recv(ws, timeout=seconds)


def _meet_by_interest_then_fall_back(url_one: str, url_two: str) -> float:
    """Strangers with other interests wait; "Cats " meets cats; the others
    fall back to each other once their waits are over.  Returns how long
    the fallback took."""

    async def scenario() -> float:
        dogs = await _connect(url_one, ["dogs"])
        started = time.monotonic()
        chess = await _connect(url_two, ["chess"])
        cat = await _connect(url_one)
        await send(cat, {"type": "interests", "tags": ["Cats "]})
        assert await recv(cat) == {"type": "interests", "tags": ["cats"]}
        me = await _connect(url_two, ["cats"])
        assert await recv(me) == {"type": "paired", "common": ["cats"]}
        assert await recv(cat) == {"type": "paired", "common": ["cats"]}
        # dogs and chess wait for theirs, then meet each other.
        assert await recv(dogs) == {"type": "paired", "common": []}
        assert await recv(chess) == {"type": "paired", "common": []}
        took = time.monotonic() - started
        # A client without interests meets one whose wait is over at once...
        plain = await _connect(url_two)
        late = await _connect(url_one, ["golf"])
        await _no_event(late, 0.3)  # ...but not one still waiting for its own
        assert await recv(late, timeout=5) == {"type": "paired", "common": []}
        assert await recv(plain) == {"type": "paired", "common": []}
        for ws in (dogs, chess, cat, me, plain, late):
            await ws.close()
        return took

    return run_async(scenario())


def test_interests_over_real_sockets() -> None:
    with RunningServer(None, "--interest-wait", "1") as server:
        took = _meet_by_interest_then_fall_back(server.ws_url, server.ws_url)
    assert took >= 1.0  # never before the wait is over


def test_interests_across_two_processes_sharing_redis(redis: RedisServer) -> None:
    url = redis.url.rsplit("/", 1)[0] + "/8"  # a database of this test's own
    options = ("--redis", url, "--repair-cooldown", "0", "--interest-wait", "1")
    with RunningServer(None, *options) as one, RunningServer(None, *options) as two:
        took = _meet_by_interest_then_fall_back(one.ws_url, two.ws_url)
    assert took >= 1.0
