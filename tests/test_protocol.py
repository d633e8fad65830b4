"""The WebSocket protocol in memory: every event, command and error of wire
protocol v1, through Autobahn's in-memory agent (no sockets)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from autobahn.twisted.websocket import WebSocketServerProtocol
from memory import Client, Harness
from twisted.internet import defer

from roulette.abuse import AddressLimits
from roulette.limits import DEFAULT, Limits


def error(code: str) -> dict[str, Any]:
    return {"type": "error", "code": code}


def errors(client: Client) -> list[str]:
    events = client.take()
    assert all(e["type"] == "error" and isinstance(e["message"], str) for e in events), events
    return [e["code"] for e in events]


#: What the first ``online`` event tells a client under the default limits.
DEFAULT_LIMITS = {
    "message_length": 2000,
    "message_rate": 5,
    "message_burst": 10,
    "typing_rate": 1,
    "typing_burst": 5,
    "command_rate": 1,
    "command_burst": 5,
    "signal_length": 16384,
    "signal_rate": 20,
    "signal_burst": 60,
    "interests": 10,
    "interest_length": 30,
    "interest_wait": 10,
    "resume_grace": 15,
    "held_messages": 50,
    "held_bytes": 65536,
}


@pytest_twisted.ensureDeferred
async def test_new_connection_gets_online_then_waiting(harness: Harness) -> None:
    a = await harness.connect()
    assert a.take() == [
        {"type": "online", "count": 1, "limits": DEFAULT_LIMITS},
        {"type": "waiting"},
    ]
    assert harness.lobby.stats().as_dict() == {"online": 1, "waiting": 1, "chatting": 0}


@pytest_twisted.ensureDeferred
async def test_two_connections_are_paired_and_relay_both_ways(harness: Harness) -> None:
    a, b = await harness.pair()
    a.send({"type": "message", "text": "hello <script>"})
    harness.pump()
    assert b.take() == [{"type": "message", "text": "hello <script>"}]
    b.send({"type": "message", "text": "\u00bfqu\u00e9 tal? \U0001f600", "extra": 1})
    harness.pump()
    assert a.take() == [{"type": "message", "text": "\u00bfqu\u00e9 tal? \U0001f600"}]
    # Verbatim, also on the wire: no escaping of non-ASCII text.
    assert "\U0001f600".encode() in a.raw[-1][0]
    assert a.raw[-1][1] is False


@pytest_twisted.ensureDeferred
async def test_messages_arrive_in_order() -> None:
    h = Harness(limits=Limits(message_burst=100))
    try:
        a, b = await h.pair()
        for i in range(50):
            a.send({"type": "message", "text": f"m{i}"})
        h.pump()
        assert [e["text"] for e in b.take()] == [f"m{i}" for i in range(50)]
    finally:
        await h.close()


@pytest_twisted.ensureDeferred
async def test_typing_is_relayed_and_dropped_without_partner(harness: Harness) -> None:
    a, b = await harness.pair()
    a.send({"type": "typing", "active": True})
    a.send({"type": "typing", "active": False})
    harness.pump()
    assert b.take() == [
        {"type": "typing", "active": True},
        {"type": "typing", "active": False},
    ]
    c = await harness.connect()
    c.take()
    c.send({"type": "typing", "active": True})
    harness.pump()
    assert c.take() == [] and a.take() == [] and b.take() == []


@pytest_twisted.ensureDeferred
async def test_next_ends_chat_and_requeues(harness: Harness) -> None:
    a, b = await harness.pair()
    a.send({"type": "next"})
    harness.pump()
    assert b.take() == [{"type": "partner_left"}]
    assert a.take() == [{"type": "waiting"}]
    # The old partner is idle: a message from it is refused, not relayed.
    b.send({"type": "message", "text": "wait!"})
    harness.pump()
    assert errors(b) == ["not_paired"]
    assert a.take() == []
    # A newcomer meets the one who pressed next.
    c = await harness.connect()
    assert [e["type"] for e in c.take()] == ["online", "waiting", "paired"]
    assert a.take() == [{"type": "paired", "common": []}]
    c.send({"type": "message", "text": "hi a"})
    harness.pump()
    assert a.take() == [{"type": "message", "text": "hi a"}]
    assert b.take() == []


@pytest_twisted.ensureDeferred
async def test_idle_client_rejoins_with_next(harness: Harness) -> None:
    a, b = await harness.pair()
    a.send({"type": "stop"})
    harness.pump()
    assert b.take() == [{"type": "partner_left"}]
    assert a.take() == []
    assert harness.lobby.stats().as_dict() == {"online": 2, "waiting": 0, "chatting": 0}
    b.send({"type": "next"})
    harness.pump()
    assert b.take() == [{"type": "waiting"}]


@pytest_twisted.ensureDeferred
async def test_stop_while_waiting_leaves_queue(harness: Harness) -> None:
    a = await harness.connect()
    a.take()
    a.send({"type": "stop"})
    harness.pump()
    assert a.take() == []
    assert harness.lobby.stats().as_dict() == {"online": 1, "waiting": 0, "chatting": 0}
    b = await harness.connect()
    assert [e["type"] for e in b.take()] == ["online", "waiting"]


@pytest_twisted.ensureDeferred
async def test_partner_disconnect_is_noticed(harness: Harness) -> None:
    a, b = await harness.pair()
    a.sendClose(1000)
    harness.pump()
    assert a.closed is not None and a.closed[1] == 1000
    assert b.take() == [{"type": "partner_left"}]


@pytest_twisted.ensureDeferred
async def test_partner_tcp_drop_is_noticed(harness: Harness) -> None:
    a, b = await harness.pair()
    a.dropConnection(abort=True)
    harness.pump()
    assert b.take() == [{"type": "partner_away"}]  # at once: it may come back
    harness.tick(DEFAULT.resume_grace - 0.1)
    assert b.take() == []
    harness.tick(0.1)  # it did not
    assert [e for e in b.take() if e["type"] != "online"] == [{"type": "partner_left"}]
    assert harness.lobby.stats().as_dict() == {"online": 1, "waiting": 0, "chatting": 0}


@pytest_twisted.ensureDeferred
async def test_cooldown_expiry_pairs_former_partners(harness: Harness) -> None:
    a, b = await harness.pair()
    a.send({"type": "next"})
    harness.pump()
    b.send({"type": "next"})
    harness.pump()
    a.take(), b.take()
    harness.tick(59)
    assert a.take() == [{"type": "online", "count": 2}] and b.take() == []
    harness.tick(1.5)
    assert a.take() == [{"type": "paired", "common": []}]
    assert b.take() == [{"type": "paired", "common": []}]


@pytest_twisted.ensureDeferred
async def test_online_count_updates_at_most_once_a_second(harness: Harness) -> None:
    a = await harness.connect()
    a.take()
    harness.tick(1.0)
    assert a.take() == []  # nothing changed
    b = await harness.connect()
    assert b.take()[0] == {"type": "online", "count": 2, "limits": DEFAULT_LIMITS}
    c = await harness.connect()
    assert c.take()[0] == {"type": "online", "count": 3, "limits": DEFAULT_LIMITS}
    assert [e for e in a.take() if e["type"] == "online"] == []  # not at once
    harness.tick(1.0)
    assert [e for e in a.take() if e["type"] == "online"] == [{"type": "online", "count": 3}]
    # b heard 2 a second ago; c already knows 3.
    assert b.take() == [{"type": "online", "count": 3}]
    assert c.take() == []
    harness.tick(1.0)
    assert a.take() == [] and b.take() == [] and c.take() == []
    c.sendClose()  # (one that dropped would be counted for the resume grace)
    harness.pump()
    harness.tick(1.0)
    assert {"type": "online", "count": 2} in a.take()
    assert {"type": "online", "count": 2} in b.take()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"not json", "bad_json"),
        (b"{", "bad_json"),
        (b"[" * 30_000 + b"]" * 30_000, "bad_json"),
        (b"[]", "bad_message"),
        (b'"message"', "bad_message"),
        (b"null", "bad_message"),
        (b"{}", "bad_message"),
        (b'{"type": 1}', "bad_message"),
        (b'{"type": "dance"}', "bad_message"),
        (b'{"type": "message"}', "bad_message"),
        (b'{"type": "message", "text": 5}', "bad_message"),
        (b'{"type": "message", "text": ""}', "bad_message"),
        (b'{"type": "message", "text": " \\n\\t "}', "bad_message"),
        (b'{"type": "message", "text": "\\ud800"}', "bad_message"),
        # Blank once invisible characters are ignored: zero-width spaces and
        # joiners, a direction override, a word joiner, a Hangul filler, the
        # blank Braille pattern, a variation selector.
        (b'{"type": "message", "text": "\\u200b\\u200c\\u200d \\u202e\\u2060"}', "bad_message"),
        (b'{"type": "message", "text": "\\u3164\\u2800\\ufe0f\\u00ad"}', "bad_message"),
        (b'{"type": "typing"}', "bad_message"),
        (b'{"type": "typing", "active": 1}', "bad_message"),
        (b'{"type": "typing", "active": "yes"}', "bad_message"),
        (b'{"type": "message", "text": "' + b"x" * 2001 + b'"}', "too_long"),
        (b'{"type": "message", "text": "' + b" " * 2001 + b'"}', "bad_message"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_frames_get_an_error_and_the_chat_carries_on(
    harness: Harness, frame: bytes, code: str
) -> None:
    a, b = await harness.pair()
    a.sendMessage(frame)
    harness.pump()
    assert errors(a) == [code]
    assert b.take() == []
    # Nothing was lost: the connection and the chat carry on.
    a.send({"type": "message", "text": "still here"})
    harness.pump()
    assert b.take() == [{"type": "message", "text": "still here"}]
    assert a.closed is None


@pytest_twisted.ensureDeferred
async def test_not_paired_error_when_waiting(harness: Harness) -> None:
    a = await harness.connect()
    a.take()
    a.send({"type": "message", "text": "anyone?"})
    harness.pump()
    assert errors(a) == ["not_paired"]


@pytest_twisted.ensureDeferred
async def test_max_message_length_is_in_characters() -> None:
    h = Harness(max_message_length=5)
    try:
        a, b = await h.pair()
        a.send({"type": "message", "text": "\U0001f600" * 5})
        a.send({"type": "message", "text": "abcdef"})
        h.pump()
        assert b.take() == [{"type": "message", "text": "\U0001f600" * 5}]
        assert errors(a) == ["too_long"]
    finally:
        await h.close()


@pytest_twisted.ensureDeferred
async def test_errors_are_checked_in_order(harness: Harness) -> None:
    a = await harness.connect()  # not paired
    a.take()
    a.sendMessage(b'{"type": "message", "text": "' + b"x" * 3000 + b'"}')
    a.sendMessage(b'{"type": "message", "text": 3}')
    harness.pump()
    assert errors(a) == ["too_long", "bad_message"]


@pytest_twisted.ensureDeferred
async def test_binary_frame_gets_close_1003(harness: Harness) -> None:
    a, b = await harness.pair()
    a.sendMessage(b'{"type": "message", "text": "hi"}', isBinary=True)
    harness.pump()
    assert a.closed is not None
    assert a.closed[1] == 1003
    assert b.take() == [{"type": "partner_left"}]


@pytest_twisted.ensureDeferred
async def test_oversized_message_gets_close_1009(harness: Harness) -> None:
    a, b = await harness.pair()
    a.sendMessage(b'{"type": "message", "text": "' + b"x" * 70_000 + b'"}')
    harness.pump()
    assert a.closed is not None
    assert a.closed[1] == 1009
    assert b.take() == [{"type": "partner_left"}]


@pytest_twisted.ensureDeferred
async def test_oversized_fragmented_message_gets_close_1009(harness: Harness) -> None:
    a, _ = await harness.pair()
    a.beginMessage()
    for _ in range(5):
        a.sendMessageFrame(b"x" * 20_000)
    a.endMessage()
    harness.pump()
    assert a.closed is not None
    assert a.closed[1] == 1009


@pytest_twisted.ensureDeferred
async def test_invalid_utf8_gets_close_1007(harness: Harness) -> None:
    a, _ = await harness.pair()
    a.sendFrame(opcode=1, payload=b'{"type":"message","text":"\xff"}')
    harness.pump()
    assert a.closed is not None
    assert a.closed[1] == 1007


@pytest_twisted.ensureDeferred
async def test_others_chats_carry_on_when_one_client_misbehaves(harness: Harness) -> None:
    a, b = await harness.pair()
    c, d = await harness.pair()
    c.sendMessage(b"\x00" * 10, isBinary=True)
    harness.pump()
    a.send({"type": "message", "text": "fine"})
    harness.pump()
    assert b.take() == [{"type": "message", "text": "fine"}]
    assert d.take() == [{"type": "partner_left"}]
    assert a.closed is None and b.closed is None


# -- abuse controls ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_messages_over_the_budget_are_refused_not_relayed() -> None:
    h = Harness(limits=Limits(message_rate=5, message_burst=10))
    try:
        a, b = await h.pair()
        for i in range(12):
            a.send({"type": "message", "text": f"m{i}"})
        h.pump()
        assert [e["text"] for e in b.take()] == [f"m{i}" for i in range(10)]
        assert errors(a) == ["rate_limited", "rate_limited"]
        h.tick(0.2)  # one token back
        a.send({"type": "message", "text": "later"})
        h.pump()
        assert [e for e in b.take() if e["type"] == "message"] == [
            {"type": "message", "text": "later"}
        ]
        assert a.closed is None
    finally:
        await h.close()


@pytest_twisted.ensureDeferred
async def test_a_flooder_is_closed_with_1008_and_its_partner_told() -> None:
    h = Harness(limits=Limits(message_burst=10, flood_refusals=50, flood_window=10))
    try:
        a, b = await h.pair()
        c, d = await h.pair()
        for i in range(59):
            a.send({"type": "message", "text": f"m{i}"})
        h.pump()
        assert a.closed is None  # 10 delivered, 49 refused
        a.send({"type": "message", "text": "one more"})
        h.pump()
        assert a.closed is not None and a.closed[1] == 1008
        assert b.take()[-1] == {"type": "partner_left"}
        # Nobody else noticed.
        c.send({"type": "message", "text": "hi"})
        h.pump()
        assert d.take() == [{"type": "message", "text": "hi"}]
    finally:
        await h.close()


@pytest_twisted.ensureDeferred
async def test_next_storm_is_rate_limited_and_typing_flood_dropped() -> None:
    h = Harness(cooldown=0, limits=Limits(queue_rate=1, queue_burst=5, typing_burst=5))
    try:
        a, b = await h.pair()
        for _ in range(7):
            a.send({"type": "next"})
        h.pump()
        codes = [e.get("code") for e in a.take() if e["type"] == "error"]
        assert codes == ["rate_limited", "rate_limited"]
        b.send({"type": "next"})
        h.pump()
        b.take()
        for _ in range(8):
            b.send({"type": "typing", "active": True})
        h.pump()
        assert [e for e in a.take() if e["type"] == "typing"] == [
            {"type": "typing", "active": True}
        ] * 5
        assert b.take() == []  # dropped silently, as typing without a partner is
    finally:
        await h.close()


@pytest_twisted.ensureDeferred
async def test_report_ends_the_chat_and_the_two_never_meet_again(harness: Harness) -> None:
    h = harness
    h.lobby.gate.trust_proxy = 1  # two addresses, through one trusted proxy
    a = await h.connect({"X-Forwarded-For": "203.0.113.1"})
    b = await h.connect({"X-Forwarded-For": "203.0.113.2"})
    assert {"type": "paired", "common": []} in a.take() and {
        "type": "paired",
        "common": [],
    } in b.take()
    a.send({"type": "report", "reason": "rude"})
    h.pump()
    assert b.take() == [{"type": "partner_left"}]
    assert a.take() == [{"type": "waiting"}]
    h.tick(3600)  # far beyond the cooldown
    b.send({"type": "next"})
    h.pump()
    assert [e for e in b.take() if e["type"] != "online"] == [{"type": "waiting"}]
    assert h.lobby.stats().as_dict() == {"online": 2, "waiting": 2, "chatting": 0}


@pytest_twisted.ensureDeferred
async def test_report_checks(harness: Harness) -> None:
    a = await harness.connect()
    a.take()
    a.send({"type": "report"})
    a.send({"type": "report", "reason": 5})
    a.send({"type": "report", "reason": "x" * 501})
    harness.pump()
    assert errors(a) == ["not_paired", "bad_message", "too_long"]


@pytest_twisted.ensureDeferred
async def test_three_reporters_ban_the_address(proxied: Harness) -> None:
    """Addresses come from X-Forwarded-For, trusted for one proxy."""
    h = proxied
    bad = await h.connect({"X-Forwarded-For": "198.51.100.66"})
    bad2 = await h.connect({"X-Forwarded-For": "198.51.100.66"})
    bad2.send({"type": "stop"})  # bad2 stays idle; bad looks again
    bad.send({"type": "next"})
    h.pump()
    for n in range(3):  # three networks
        reporter = await h.connect({"X-Forwarded-For": f"203.0.{113 + n}.1"})
        h.pump()
        assert {"type": "paired", "common": []} in reporter.events, n
        bad.send({"type": "message", "text": "buy now"})
        h.pump()
        reporter.send({"type": "report", "reason": "spam"})
        h.pump()
        if n < 2:
            assert bad.closed is None
            bad.send({"type": "next"})  # look again; meets the next reporter
            h.pump()
    until = int(h.clock.seconds() + 600)
    for victim in (bad, bad2):
        assert {"type": "banned", "until": until} in victim.events
        assert victim.closed is not None and victim.closed[1] == 1008
    assert h.lobby.banned_until(h.lobby.gate.hasher("198.51.100.66")) == until


@pytest.fixture
def proxied() -> Iterator[Harness]:
    """A harness without cooldown and with room for many reports, whose
    clients' addresses come from ``X-Forwarded-For`` (one trusted proxy)."""
    h = Harness(cooldown=0, limits=Limits(queue_burst=100))
    h.lobby.gate.trust_proxy = 1
    yield h
    pytest_twisted.blockon(defer.ensureDeferred(h.close()))


async def reported(
    h: Harness, bad: Client, reporters: list[str], say: str | None = None, wait: float = 0.0
) -> None:
    """``bad`` waits, alone in the queue; each reporter meets it, hears ``say``
    from it (if anything), waits ``wait`` seconds, reports it and goes idle;
    ``bad`` looks again unless it has been closed."""
    for host in reporters:
        reporter = await h.connect({"X-Forwarded-For": host})
        assert {"type": "paired", "common": []} in reporter.take()
        if say is not None:
            bad.send({"type": "message", "text": say})
            h.pump()
            assert {"type": "message", "text": say} in reporter.take()
        h.tick(wait)
        reporter.send({"type": "report"})
        reporter.send({"type": "stop"})
        h.pump()
        if bad.closed is None:
            bad.send({"type": "next"})
            h.pump()


def was_banned(client: Client) -> bool:
    return any(e["type"] == "banned" for e in client.events)


@pytest_twisted.ensureDeferred
async def test_reporting_a_silent_partner_at_once_bans_nobody(proxied: Harness) -> None:
    h = proxied
    quiet = await h.connect({"X-Forwarded-For": "192.0.2.10"})
    await reported(h, quiet, ["203.0.113.1", "198.51.100.1", "100.64.0.1"])
    assert not was_banned(quiet) and quiet.closed is None
    assert h.lobby.banned_until(*h.lobby.gate.hasher.keys("192.0.2.10").scopes) is None
    # Chats that last long enough count, silent or not.
    await reported(h, quiet, ["203.0.114.1", "198.51.101.1", "100.64.1.1"], wait=5.0)
    assert was_banned(quiet) and quiet.closed is not None and quiet.closed[1] == 1008


@pytest_twisted.ensureDeferred
async def test_reporters_in_one_network_ban_nobody(proxied: Harness) -> None:
    h = proxied
    bad = await h.connect({"X-Forwarded-For": "192.0.2.10"})
    one_24 = [f"203.0.113.{n}" for n in range(1, 6)]
    one_48 = [f"2001:db8:77:{n}::1" for n in range(1, 6)]
    await reported(h, bad, one_24 + one_48, say="spam")
    assert not was_banned(bad) and bad.closed is None


@pytest_twisted.ensureDeferred
async def test_a_repeat_ipv6_ban_widens_to_the_56(proxied: Harness) -> None:
    h = proxied
    # Idle bystanders: one in the same /56, one in another /56 of the /48.
    near = await h.connect({"X-Forwarded-For": "2001:db8:1:2::1"})
    near.send({"type": "stop"})
    far = await h.connect({"X-Forwarded-For": "2001:db8:1:100::1"})
    far.send({"type": "stop"})
    h.pump()
    bad = await h.connect({"X-Forwarded-For": "2001:db8:1:1::1"})
    await reported(h, bad, ["203.0.113.1", "198.51.100.1", "100.64.0.1"], say="spam")
    assert was_banned(bad) and bad.closed is not None
    assert not was_banned(near) and near.closed is None  # the first ban: the /64 only
    # Back from another /64 of the /56, and reported again.
    back = await h.connect({"X-Forwarded-For": "2001:db8:1:3::1"})
    await reported(h, back, ["203.0.114.1", "198.51.101.1", "100.64.1.1"], say="spam")
    until = int(h.clock.seconds() + 1200)
    for victim in (back, near):
        assert {"type": "banned", "until": until} in victim.events
        assert victim.closed is not None and victim.closed[1] == 1008
    assert not was_banned(far) and far.closed is None
    keys = h.lobby.gate.hasher.keys
    assert h.lobby.banned_until(*keys("2001:db8:1:ff::1").scopes) == until
    assert h.lobby.banned_until(*keys("2001:db8:1:100::1").scopes) is None


@pytest_twisted.ensureDeferred
async def test_shutdown_sends_going_away_and_waits_for_clients(harness: Harness) -> None:
    a, b = await harness.pair()
    stopped = harness.lobby.stopService()
    harness.pump()
    assert a.closed is not None and a.closed[1] == 1001
    assert b.closed is not None and b.closed[1] == 1001
    assert stopped.called


@pytest_twisted.ensureDeferred
async def test_shutdown_drops_clients_that_do_not_close_within_the_grace(
    harness: Harness,
) -> None:
    a, _ = await harness.pair()
    stopped = harness.lobby.stopService()  # the close frames are not pumped
    assert not stopped.called
    harness.clock.advance(harness.lobby.shutdown_grace)
    assert stopped.called
    harness.pump()
    assert a.closed is not None


# -- pings, fragments and everything written ----------------------------------------------


class PingingClient(Client):
    """A client that counts the pongs it gets."""

    pongs = 0

    def onPong(self, payload: bytes) -> None:
        self.pongs += 1


def server_side(harness: Harness) -> Any:
    (server,) = harness.lobby._clients
    return server


@pytest_twisted.ensureDeferred
async def test_pings_beyond_the_burst_close_with_1008() -> None:
    h = Harness(limits=Limits(control_rate=1.0, control_burst=10.0))
    try:
        client = h.connect_now(PingingClient)
        assert isinstance(client, PingingClient)
        for _ in range(10):
            client.sendPing(b"p")
        h.pump()
        assert client.pongs == 10 and client.closed is None
        h.tick(1.0)  # one more a second
        client.sendPing(b"p")
        h.pump()
        assert client.pongs == 11 and client.closed is None
        client.sendPing(b"p")
        h.pump()
        assert client.pongs == 11
        assert client.closed is not None and client.closed[1] == 1008
    finally:
        await h.close()


@pytest_twisted.ensureDeferred
async def test_pongs_count_toward_the_send_buffer_limit() -> None:
    h = Harness(limits=Limits(send_buffer_limit=1))
    try:
        client = h.connect_now(PingingClient)
        server = server_side(h)
        server._send_buffer.pauseProducing()  # the transport's buffer is full
        client.sendPing(b"p" * 100)
        h.pump()
        assert client.pongs == 0
        assert client.closed is not None and client.closed[0] is False  # dropped
        assert h.lobby.stats().online == 0
    finally:
        await h.close()


@pytest_twisted.ensureDeferred
async def test_a_message_in_too_many_fragments_closes_with_1008(harness: Harness) -> None:
    a, b = await harness.pair()
    a.sendMessage(json.dumps({"type": "typing", "active": True}).encode(), fragmentSize=1)
    harness.pump()
    assert a.closed is None  # 30 fragments are fine
    assert b.take() == [{"type": "typing", "active": True}]
    a.sendMessage(json.dumps({"type": "message", "text": "x" * 80}).encode(), fragmentSize=1)
    harness.pump()
    assert a.closed is not None and a.closed[1] == 1008
    assert [e["type"] for e in b.take()] == ["partner_left"]


@pytest.mark.parametrize(
    "payload",
    [
        "\ufeff" + json.dumps({"type": "stop"}),  # a byte order mark
        json.dumps({"type": "stop"}).encode("utf-16-le").decode("utf-8"),  # NULs: UTF-16 JSON
    ],
    ids=["bom", "utf-16"],
)
@pytest.mark.parametrize("fragment", [None, 3], ids=["whole", "fragmented"])
@pytest_twisted.ensureDeferred
async def test_one_answer_to_odd_json_whichever_way_it_is_read(
    harness: Harness, payload: str, fragment: int | None
) -> None:
    a = await harness.connect()
    a.take()
    a.sendMessage(payload.encode("utf-8"), fragmentSize=fragment)
    harness.pump()
    assert errors(a) == ["bad_json"]


# -- limits and message ids -------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_first_online_event_carries_the_limits_in_force() -> None:
    h = Harness(
        limits=Limits(
            max_message_length=500,
            message_rate=2.5,
            message_burst=4,
            queue_burst=3,
            interest_wait=2.5,
        )
    )
    try:
        a = await h.connect()
        first = a.take()[0]
        assert first["type"] == "online"
        assert first["limits"] == {
            "message_length": 500,
            "message_rate": 2.5,
            "message_burst": 4,
            "typing_rate": 1,
            "typing_burst": 5,
            "command_rate": 1,
            "command_burst": 3,
            "signal_length": 16384,
            "signal_rate": 20,
            "signal_burst": 60,
            "interests": 10,
            "interest_length": 30,
            "interest_wait": 2.5,
            "resume_grace": 15,
            "held_messages": 50,
            "held_bytes": 65536,
        }
        b = await h.connect()
        h.tick(1.0)
        # Later counts carry only the count.
        assert [e for e in a.take() if e["type"] == "online"] == [{"type": "online", "count": 2}]
        a.send({"type": "message", "text": "x" * 501, "id": 1})
        a.send({"type": "message", "text": "x" * 500, "id": 2})
        h.pump()
        assert a.take() == [
            {
                "type": "error",
                "code": "too_long",
                "message": "A message may be at most 500 characters long.",
                "id": 1,
            },
            {"type": "sent", "id": 2},
        ]
        assert [e for e in b.take() if e["type"] == "message"] == [
            {"type": "message", "text": "x" * 500}
        ]
    finally:
        await h.close()


@pytest_twisted.ensureDeferred
async def test_a_message_with_an_id_is_answered_sent_or_refused_by_id() -> None:
    h = Harness(limits=Limits(message_burst=2))
    try:
        a, b = await h.pair()
        a.send({"type": "message", "text": "one", "id": 0})
        a.send({"type": "message", "text": "two", "id": 2**53 - 1})
        a.send({"type": "message", "text": "three", "id": 7})  # over the burst
        a.send({"type": "message", "text": " ", "id": 8})
        h.pump()
        assert [(e["type"], e.get("code"), e["id"]) for e in a.take()] == [
            ("sent", None, 0),
            ("sent", None, 2**53 - 1),
            ("error", "rate_limited", 7),
            ("error", "bad_message", 8),
        ]
        assert [e["text"] for e in b.take()] == ["one", "two"]
        # Without an id nothing answers a delivered message, as before.
        h.tick(1.0)
        a.send({"type": "message", "text": "plain"})
        h.pump()
        assert [e for e in a.take() if e["type"] != "online"] == []
        b.send({"type": "next"})
        h.pump()
        a.take()
        a.send({"type": "message", "text": "anyone?", "id": 9})
        h.pump()
        assert [(e["type"], e["code"], e["id"]) for e in a.take()] == [("error", "not_paired", 9)]
    finally:
        await h.close()


@pytest.mark.parametrize("bad", [-1, 2**53, 1.5, "1", True, None, [1]])
@pytest_twisted.ensureDeferred
async def test_a_bad_message_id_is_refused_without_an_id(bad: object) -> None:
    h = Harness()
    try:
        a, b = await h.pair()
        frame: dict[str, object] = {"type": "message", "text": "hi", "id": bad}
        a.send(frame)
        h.pump()
        if bad is None:  # "id": null is no id at all
            assert a.take() == [] and b.take() == [{"type": "message", "text": "hi"}]
            return
        [error] = a.take()
        assert error["code"] == "bad_message" and "id" not in error
        assert b.take() == []
    finally:
        await h.close()


@pytest_twisted.ensureDeferred
async def test_each_command_is_charged_to_its_own_budget_only() -> None:
    h = Harness(cooldown=0, limits=Limits(queue_burst=2, message_burst=3, typing_burst=1))
    try:
        a, b = await h.pair()
        # Refused and ignored frames charge nothing.
        for frame in ({"type": "dance"}, {"type": "message"}, {"type": "typing"}):
            a.send(frame)
        # Messages and typing notices spend their own budgets, not the queue's.
        for i in range(4):
            a.send({"type": "message", "text": f"m{i}"})
        a.send({"type": "typing", "active": True})
        a.send({"type": "typing", "active": False})
        h.pump()
        assert errors(a) == ["bad_message"] * 3 + ["rate_limited"]
        assert [e["type"] for e in b.take()] == ["message"] * 3 + ["typing"]
        # The queue budget is whole: two next commands pass, the third is refused.
        for _ in range(3):
            a.send({"type": "next"})
        h.pump()
        # (b is idle after the first: a waits alone.)
        assert [e["type"] for e in a.take()] == ["waiting", "waiting", "error"]
    finally:
        await h.close()


@pytest_twisted.ensureDeferred
async def test_autobahns_queued_writes_still_work(harness: Harness) -> None:
    # Autobahn sends a synchronous or chopped write through a queue drained
    # by its own ``_send()``; the protocol must not hide that method.
    a = await harness.connect()
    a.take()
    [server_side] = harness.lobby._clients
    assert isinstance(server_side, WebSocketServerProtocol)
    server_side.sendMessage(b'{"type":"notice","text":"queued"}', sync=True)
    for _ in range(5):
        harness.tick(0.01)
    assert a.take() == [{"type": "notice", "text": "queued"}]


@pytest.mark.parametrize(
    "text",
    ["\u200bhi", "\u202eabc", "😀", "\u200d\U0001f469", "\u0627", "\u3164x"],
    ids=["zwsp-first", "override-first", "emoji", "zwj-emoji", "arabic", "filler-first"],
)
@pytest_twisted.ensureDeferred
async def test_text_with_something_visible_is_relayed_verbatim(harness: Harness, text: str) -> None:
    a, b = await harness.pair()
    a.send({"type": "message", "text": text})
    harness.pump()
    assert b.take() == [{"type": "message", "text": text}]
    assert a.take() == []


@pytest_twisted.ensureDeferred
async def test_block_ends_the_chat_for_good_without_counting_toward_a_ban(
    proxied: Harness,
) -> None:
    h = proxied
    bad = await h.connect({"X-Forwarded-For": "198.51.100.66"})
    blockers = []
    for n in range(3):  # three networks: as many reports would ban
        blocker = await h.connect({"X-Forwarded-For": f"203.0.{113 + n}.1"})
        assert {"type": "paired", "common": []} in blocker.take(), n
        bad.send({"type": "message", "text": "buy now"})
        h.pump()
        assert {"type": "message", "text": "buy now"} in blocker.take()
        blocker.send({"type": "block"})
        h.pump()
        assert [e for e in bad.take() if e["type"] == "partner_left"] == [{"type": "partner_left"}]
        assert [e for e in blocker.take() if e["type"] != "online"] == [{"type": "waiting"}]
        blockers.append(blocker)
        bad.send({"type": "next"})  # looks again: none of those who blocked it will do
        h.pump()
        assert [e for e in bad.take() if e["type"] != "online"] == [{"type": "waiting"}]
        blocker.send({"type": "stop"})
        h.pump()
    assert bad.closed is None and not any(e["type"] == "banned" for e in bad.events)
    assert h.lobby.banned_until(h.lobby.gate.hasher("198.51.100.66")) is None
    # Never again, however long it has been; a newcomer still meets it.
    h.tick(3600)
    for blocker in blockers:
        blocker.send({"type": "next"})
        h.pump()
        assert [e for e in blocker.take() if e["type"] != "online"] == [{"type": "waiting"}]
        blocker.send({"type": "stop"})
        h.pump()
    newcomer = await h.connect({"X-Forwarded-For": "192.0.2.7"})
    assert {"type": "paired", "common": []} in newcomer.take()


@pytest_twisted.ensureDeferred
async def test_block_checks(harness: Harness) -> None:
    a = await harness.connect()
    a.take()
    a.send({"type": "block"})
    harness.pump()
    assert errors(a) == ["not_paired"]


@pytest_twisted.ensureDeferred
async def test_admission_names_each_refusal() -> None:
    """What ``GET /admission`` answers, for each reason a handshake is refused."""
    h = Harness()
    try:
        lobby = h.lobby
        lobby.gate.addresses = AddressLimits(8, 60, max_total=1)
        keys = lobby.gate.hasher.keys("198.51.100.7")
        assert lobby.admission(keys) == {"admitted": True}
        lobby.ready = False
        assert lobby.admission(keys)["code"] == "starting"
        lobby.ready = True
        lobby.ban(keys.address, h.clock.seconds() + 90.5)
        lobby.gate.reports.note_ban(keys.address, h.clock.seconds() + 90.5)  # type: ignore[union-attr]
        answer = lobby.admission(keys)
        assert answer["code"] == "banned" and answer["retry_after"] == 91
        assert answer["until"] == math.ceil(h.clock.seconds() + 90.5)
        other = lobby.gate.hasher.keys("198.51.100.8")
        assert lobby.gate.addresses.admit(other.address, h.clock.seconds()) is None
        assert lobby.admission(other)["code"] == "server_full"
    finally:
        await h.close()


@pytest_twisted.ensureDeferred
async def test_a_waiting_client_is_told_why_it_waits(harness: Harness) -> None:
    h = harness
    a = await h.connect()
    assert a.waits == [{"type": "wait", "reason": "alone"}]
    b = await h.connect()
    a.take()
    b.take()
    a.send({"type": "next"})
    h.pump()
    b.send({"type": "next"})
    h.pump()
    until = math.ceil(h.clock.seconds() + 60)
    assert a.waits[-1] == {"type": "wait", "reason": "cooldown", "until": until}
    assert b.waits == [{"type": "wait", "reason": "cooldown", "until": until}]
    h.tick(59.9)
    assert [e for e in a.take() if e["type"] != "online"] == [{"type": "waiting"}]
    h.tick(0.1)
    assert a.take() == [{"type": "paired", "common": []}]
