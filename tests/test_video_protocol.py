"""Video chat's server side in memory: the video queue, which side offers,
the ICE servers, and the ``signal`` command (docs/protocol.md, "Video")."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from fakes import FakeClock, RecordingPeer
from memory import Client, Harness
from twisted.internet import defer

from roulette import wire
from roulette.core import MemoryMatchmaker
from roulette.ice import IceServers, check_ice_url, turn_credential
from roulette.limits import Limits

OFFER = {"description": {"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}}


def kinds(client: Client) -> list[str]:
    return [event["type"] for event in client.take()]


def signal(data: Any) -> dict[str, Any]:
    return {"type": "signal", "data": data}


async def video_pair(h: Harness) -> tuple[Client, Client]:
    a = await h.connect(path="/ws?video=1")
    b = await h.connect(path="/ws?video=1")
    first = a.take()
    second = b.take()
    assert [e["type"] for e in first] == ["online", "waiting", "paired"]
    assert [e["type"] for e in second] == ["online", "waiting", "paired"]
    paired = (first[-1], second[-1])
    for event in paired:
        assert event["video"] is True and event["ice_servers"] == []
    # The one that waited (a) makes the offer; exactly one of them does.
    assert [event["offer"] for event in paired] == [True, False]
    return a, b


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness(cooldown=0)
    yield h
    pytest_twisted.blockon(defer.ensureDeferred(h.close()))


@pytest_twisted.ensureDeferred
async def test_video_clients_meet_and_signal_only_to_each_other(harness: Harness) -> None:
    a, b = await video_pair(harness)
    c, d = await harness.pair()  # a text chat beside theirs
    a.send(signal(OFFER))
    b.send(signal({"candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.1 5000 typ host"}}))
    harness.pump()
    assert b.take() == [signal(OFFER)]
    assert a.take() == [
        signal({"candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.1 5000 typ host"}})
    ]
    assert c.take() == [] and d.take() == []
    # A text chat's paired event has no video fields, and it cannot signal.
    c.send(signal(OFFER))
    harness.pump()
    assert c.take() == [
        {
            "type": "error",
            "code": "not_video",
            "message": "This is not a video chat: signals are not relayed.",
        }
    ]
    assert d.take() == [] and a.take() == [] and b.take() == []


@pytest_twisted.ensureDeferred
async def test_text_and_video_queues_never_mix(harness: Harness) -> None:
    text = await harness.connect()
    video = await harness.connect(path="/ws?video=1")
    assert kinds(text) == ["online", "waiting"]
    assert kinds(video) == ["online", "waiting"]
    assert [e["type"] for e in text.take()] == []
    # A second text client meets the first text one, not the video one.
    other = await harness.connect()
    assert kinds(other) == ["online", "waiting", "paired"]
    assert [e for e in text.take() if e["type"] != "online"] == [{"type": "paired", "common": []}]
    assert [e for e in video.take() if e["type"] != "online"] == []
    # A waiting client that turns video on moves to the video queue at once.
    late = await harness.connect()
    assert kinds(late) == ["online", "waiting"]
    late.send({"type": "video", "on": True})
    harness.pump()
    events = [e for e in late.take() if e["type"] != "online"]
    assert [e["type"] for e in events] == ["waiting", "paired"]
    assert events[-1]["video"] is True and events[-1]["offer"] is False
    assert [e["offer"] for e in video.take() if e["type"] == "paired"] == [True]


@pytest_twisted.ensureDeferred
async def test_a_chat_keeps_its_kind_until_next(harness: Harness) -> None:
    a, b = await harness.pair()
    a.send({"type": "video", "on": True})
    harness.pump()
    assert a.take() == [] and b.take() == []  # the text chat goes on
    a.send({"type": "message", "text": "still text"})
    a.send(signal(OFFER))
    harness.pump()
    assert [e["code"] for e in a.take()] == ["not_video"]
    assert b.take() == [{"type": "message", "text": "still text"}]
    # Next: into the video queue, where a video client waits.
    v = await harness.connect(path="/ws?video=1")
    assert kinds(v) == ["online", "waiting"]
    a.send({"type": "next"})
    harness.pump()
    mine = [e for e in a.take() if e["type"] != "online"]
    assert [e["type"] for e in mine] == ["waiting", "paired"]
    assert mine[-1]["video"] is True
    assert [e["type"] for e in b.take() if e["type"] != "online"] == ["partner_left"]
    # And back to text: b, idle, turns nothing on and meets a in text? No:
    # a turns video off and presses next; it waits for a text stranger.
    a.send({"type": "video", "on": False})
    a.send({"type": "next"})
    b.send({"type": "next"})
    harness.pump()
    assert [e for e in a.take() if e["type"] == "paired"] == [{"type": "paired", "common": []}]
    assert [e for e in b.take() if e["type"] == "paired"] == [{"type": "paired", "common": []}]


@pytest_twisted.ensureDeferred
async def test_signals_are_refused_with_a_clear_error(harness: Harness) -> None:
    idle = await harness.connect(path="/ws?video=1")
    idle.send({"type": "stop"})
    idle.send(signal(OFFER))
    harness.pump()
    assert [e["code"] for e in idle.take() if e["type"] == "error"] == ["not_paired"]
    a, b = await video_pair(harness)
    for bad in (
        {"type": "signal"},
        {"type": "signal", "data": "sdp"},
        {"type": "signal", "data": [1, 2]},
        {"type": "video", "on": "yes"},
    ):
        a.send(bad)
    # The largest signal accepted, and one byte more.
    pad = wire.MAX_SIGNAL_BYTES - len(json.dumps(signal({"sdp": ""})).encode())
    largest = signal({"sdp": "x" * pad})
    assert len(json.dumps(largest).encode()) == wire.MAX_SIGNAL_BYTES
    a.send(largest)
    a.send(signal({"sdp": "x" * (pad + 1)}))
    a.send(signal({"sdp": "é" * (pad // 2 + 1)}))  # over in bytes, not in characters
    harness.pump()
    codes = [e["code"] for e in a.take()]
    assert codes == ["bad_message"] * 4 + ["too_long", "too_long"]
    assert b.take() == [largest]


@pytest_twisted.ensureDeferred
async def test_signals_over_their_budget_are_refused() -> None:
    h = Harness(cooldown=0, limits=Limits(signal_rate=2, signal_burst=3))
    try:
        a, b = await video_pair(h)
        for n in range(5):
            a.send(signal({"n": n}))
        h.pump()
        assert [e["code"] for e in a.take()] == ["rate_limited", "rate_limited"]
        assert b.take() == [signal({"n": n}) for n in range(3)]
        # Messages keep their own budget meanwhile.
        a.send({"type": "message", "text": "hi", "id": 1})
        h.tick(1.0)
        a.send(signal({"n": 5}))
        h.pump()
        assert [e for e in a.take() if e["type"] != "online"] == [{"type": "sent", "id": 1}]
        assert b.take() == [{"type": "message", "text": "hi"}, signal({"n": 5})]
    finally:
        await h.close()


@pytest_twisted.ensureDeferred
async def test_ice_servers_with_fresh_turn_credentials_come_with_each_pairing(
    harness: Harness,
) -> None:
    secret = b"coturn static-auth-secret"
    harness.factory.ice_servers = IceServers(
        ["stun:stun.example.org:3478", "turn:turn.example.org:3478?transport=udp"],
        secret,
        harness.clock.seconds,
        ttl=3600,
    )
    a = await harness.connect(path="/ws?video=1")
    b = await harness.connect(path="/ws?video=1")
    servers = next(e for e in a.take() + b.take() if e["type"] == "paired")["ice_servers"]
    assert servers[0] == {"urls": ["stun:stun.example.org:3478"]}
    turn = servers[1]
    assert turn["urls"] == ["turn:turn.example.org:3478?transport=udp"]
    # coturn's use-auth-secret: username = expiry time, credential =
    # base64(HMAC-SHA1(secret, username)).
    assert turn["username"] == str(int(harness.clock.seconds() + 3600))
    expected = base64.b64encode(hmac.new(secret, turn["username"].encode(), hashlib.sha1).digest())
    assert turn["credential"] == expected.decode()
    # The next pairing, later, gets a later expiry.
    harness.tick(10)
    a.send({"type": "next"})
    c = await harness.connect(path="/ws?video=1")
    harness.pump()
    later = next(e for e in a.take() + c.take() if e["type"] == "paired")["ice_servers"][1]
    assert int(later["username"]) == int(turn["username"]) + 10


def test_turn_credentials_match_the_coturn_formula() -> None:
    # Computed independently: printf 1700000000 | openssl dgst -sha1
    # -hmac secret -binary | base64
    assert turn_credential(b"secret", "1700000000") == "WGw37+g43pfwVUmrc9tgArn/juE="


@pytest.mark.parametrize(
    "url", ["http://example.org", "stun:", "turn:/x", "stun:a b", "example.org:3478"]
)
def test_ice_server_urls_are_checked(url: str) -> None:
    with pytest.raises(ValueError):
        check_ice_url(url)


def test_the_core_pairs_within_a_queue_and_the_waiting_one_offers() -> None:
    mm = MemoryMatchmaker(random.Random(1), FakeClock(), cooldown=0)
    text, video, video2, text2 = (RecordingPeer(n) for n in ("t", "v", "v2", "t2"))
    mm.connect(text)
    mm.connect(video, queue="video")
    assert mm.partner_of(text) is None and mm.partner_of(video) is None
    mm.connect(text2)
    assert mm.partner_of(text2) is text
    assert text.offer is True and text2.offer is False
    mm.connect(video2, queue="video")
    assert mm.partner_of(video2) is video and video.offer is True and video2.offer is False
    # A queue set while chatting applies at the next next.
    mm.set_queue(text, "video")
    assert mm.partner_of(text) is text2
    mm.next(video2)  # video waits idle-less: video2 waits in video
    mm.next(text)
    assert mm.partner_of(text) is video2
    assert text2.status == "partner_left"
