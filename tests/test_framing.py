"""The framing fast path: the pure functions against a reference encoder, and
the protocol reading raw byte streams (split, mixed with control frames,
fragments and bad frames) exactly as Autobahn alone would."""

from __future__ import annotations

import itertools
import json
import os
import struct
from collections.abc import Iterator

import pytest
import pytest_twisted
from autobahn.websocket.xormasker import create_xor_masker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from memory import Client, Harness

from roulette import framing
from roulette.limits import Limits


def client_frame(
    payload: bytes, opcode: int = 1, fin: bool = True, key: bytes | None = None, rsv: int = 0
) -> bytes:
    """A frame as a browser sends it: masked with a random key (or ``key``;
    an empty ``key`` sends it unmasked)."""
    key = os.urandom(4) if key is None else key
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    mask_bit = 0x80 if key else 0
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 65536:
        head += bytes([mask_bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", n)
    if not key:
        return head + payload
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def chat(text: str) -> bytes:
    return json.dumps({"type": "message", "text": text}).encode()


# -- the pure functions ------------------------------------------------------


@given(st.binary(max_size=300), st.binary(min_size=4, max_size=4))
def test_unmask_matches_autobahn(payload: bytes, key: bytes) -> None:
    expected = create_xor_masker(key, len(payload)).process(payload) if payload else b""
    assert framing.unmask(payload, key) == expected


@given(st.binary(max_size=70_000), st.binary(max_size=20))
@settings(max_examples=50)
def test_next_text_frame_reads_what_a_client_sends(payload: bytes, after: bytes) -> None:
    data = b"junk" + client_frame(payload) + after
    assert framing.next_text_frame(data, 4, 65536) == (payload, len(data) - len(after))


def test_next_text_frame_declines_what_it_does_not_handle() -> None:
    text = chat("hi")
    declined = {
        "unmasked": client_frame(text, key=b""),
        "binary": client_frame(text, opcode=2),
        "not final": client_frame(text, fin=False),
        "continuation": client_frame(text, opcode=0),
        "ping": client_frame(b"", opcode=9),
        "reserved bit": client_frame(text, rsv=4),
        "64-bit length": client_frame(b"x" * 70_000),
        "over the limit": client_frame(b"x" * 200),
        "cut short": client_frame(text)[:-1],
        "header cut short": client_frame(b"x" * 300)[:7],
        "16-bit length below 126": b"\x81\xfe\x00\x05" + b"\0\0\0\0" + b"hello",
    }
    for why, data in declined.items():
        assert framing.next_text_frame(data, 0, 100) is None, why


@given(st.binary(max_size=70_000))
@settings(max_examples=50)
def test_text_frame_is_a_final_unmasked_text_frame(payload: bytes) -> None:
    frame = framing.text_frame(payload)
    n = len(payload)
    assert frame[0] == 0x81
    if n < 126:
        assert frame[1] == n and frame[2:] == payload
    elif n < 65536:
        assert frame[1] == 126 and struct.unpack("!H", frame[2:4])[0] == n
        assert frame[4:] == payload
    else:
        assert frame[1] == 127 and struct.unpack("!Q", frame[2:10])[0] == n
        assert frame[10:] == payload


# -- the protocol on raw byte streams ------------------------------------------


class PongClient(Client):
    def __init__(self) -> None:
        super().__init__()
        self.pongs: list[bytes] = []

    def onPong(self, payload: bytes) -> None:
        self.pongs.append(payload)


def texts(client: Client) -> list[str]:
    return [e["text"] for e in client.take() if e["type"] == "message"]


@pytest_twisted.ensureDeferred
async def test_frames_split_and_mixed_with_control_frames_and_fragments() -> None:
    harness = Harness()
    try:
        a = await harness.connect()
        b = await harness.connect()
        a.take(), b.take()
        first, second = client_frame(chat("one")), client_frame(chat("two"))
        fragmented = chat("three")
        stream = (
            first
            + client_frame(b"are you there", opcode=9)
            + second
            + client_frame(fragmented[:5], fin=False)
            + client_frame(fragmented[5:], opcode=0)
            + client_frame(chat("four"))
        )
        # Cut inside the second message's header and inside the fragment.
        cuts = [0, len(first) + 8, len(first) + 30, len(stream) - 12, len(stream)]
        for start, end in itertools.pairwise(cuts):
            a.transport.write(stream[start:end])
            harness.pump()
        assert texts(b) == ["one", "two", "three", "four"]
        assert a.closed is None
    finally:
        await harness.close()


@pytest_twisted.ensureDeferred
async def test_a_ping_is_answered_between_chat_frames_of_one_read() -> None:
    harness = Harness()
    try:
        a = harness.connect_now(PongClient)
        assert isinstance(a, PongClient)
        b = await harness.connect()
        # Our client sends the ping; the server must send the pong back.
        a.transport.write(
            client_frame(chat("before"))
            + client_frame(b"p1", opcode=9)
            + client_frame(chat("after"))
        )
        harness.pump()
        assert texts(b) == ["before", "after"]
        assert a.pongs == [b"p1"]
    finally:
        await harness.close()


class Streamer:
    """Two clients chatting in memory, driven synchronously, for hypothesis."""

    def __init__(self) -> None:
        self.h = Harness(limits=Limits(message_burst=1e9))
        self.a, self.b = self.h.connect_now(), self.h.connect_now()
        self.a.take(), self.b.take()


@pytest.fixture(scope="module")
def streamer() -> Iterator[Streamer]:
    s = Streamer()
    yield s
    for client in s.h.clients:
        client.dropConnection(abort=True)
    s.h.pump()
    s.h.lobby.stopService()


@given(
    messages=st.lists(
        st.text(min_size=1, max_size=300).filter(lambda t: not t.isspace()), max_size=8
    ),
    cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=12),
)
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_any_split_of_a_stream_delivers_every_message_in_order(
    streamer: Streamer, messages: list[str], cuts: list[int]
) -> None:
    stream = b"".join(client_frame(chat(m)) for m in messages)
    pos = 0
    for size in [*cuts, len(stream)]:
        streamer.a.transport.write(stream[pos : pos + size])
        streamer.h.pump()
        pos += size
    assert texts(streamer.b) == messages
    assert streamer.a.closed is None


@pytest_twisted.ensureDeferred
async def test_bad_frames_after_good_ones_in_one_read_get_their_close_codes(
    harness: Harness,
) -> None:
    cases = {
        1002: client_frame(chat("unmasked"), key=b""),
        1007: client_frame(b'{"type":"message","text":"\xff"}'),
    }
    for code, bad in cases.items():
        a, b = await harness.pair()
        a.transport.write(client_frame(chat("good")) + bad + client_frame(chat("never")))
        harness.pump()
        assert texts(b) == ["good"]
        assert a.closed is not None and a.closed[1] == code
        b.dropConnection(abort=True)
        harness.pump()


@pytest_twisted.ensureDeferred
async def test_a_close_frame_after_a_message_in_one_read(harness: Harness) -> None:
    a, b = await harness.pair()
    a.transport.write(client_frame(chat("bye")) + client_frame(struct.pack("!H", 1000), opcode=8))
    harness.pump()
    assert b.take() == [{"type": "message", "text": "bye"}, {"type": "partner_left"}]
    assert a.closed is not None and a.closed[0] is True
