"""Arbitrary text and JSON thrown at the protocol: every frame gets a protocol
answer (an event or a close code), never an unhandled exception."""

from __future__ import annotations

import json
from typing import Any

import pytest
from autobahn.twisted.testing import create_memory_agent, create_pumper
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from memory import Client, Harness
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher

from roulette import wire
from roulette.abuse import AddressLimits
from roulette.limits import Limits
from roulette.lobby import Gate

ERROR_CODES = {"bad_json", "bad_message", "too_long", "not_paired", "rate_limited"}
CLOSE_CODES = {1003, 1007, 1008, 1009}
TYPES = [
    "message",
    "typing",
    "next",
    "stop",
    "report",
    "block",
    "interests",
    "online",
    "paired",
    "",
    "MESSAGE",
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
commands = st.fixed_dictionaries(
    {"type": st.sampled_from(TYPES) | json_values},
    optional={
        "text": json_values | st.text(max_size=2100),
        "active": json_values,
        "reason": json_values | st.text(max_size=600),
        "tags": json_values | st.lists(st.text(max_size=40), max_size=12),
    },
)
frames = st.one_of(
    st.text(max_size=200).map(lambda t: (t.encode("utf-8", "surrogatepass"), False)),
    st.binary(max_size=100).map(lambda b: (b, False)),  # often not UTF-8
    st.binary(max_size=20).map(lambda b: (b, True)),
    json_values.map(lambda v: (json.dumps(v).encode(), False)),
    commands.map(lambda c: (json.dumps(c).encode(), False)),
)


def answer(
    payload: bytes, binary: bool, paired: bool, mine: list[dict], theirs: list[dict]
) -> None:
    """What docs/protocol.md says the frame must bring about, for a client
    still open afterwards: ``mine`` are the sender's events, ``theirs`` its
    partner's (``paired``: whether the two were chatting)."""
    assert not binary, "a binary frame must close the connection (1003)"
    try:
        command = wire.parse_command(payload.decode("utf-8"), 2000)
    except UnicodeDecodeError:
        raise AssertionError("a frame that is not UTF-8 must close the connection (1007)") from None
    except wire.CommandError as error:
        assert [e.get("code") for e in mine] == [error.code], (payload, mine)
        assert theirs == [], theirs
        return
    left = {"type": "partner_left"}
    match command:
        case wire.Message(text):
            if paired:
                assert (mine, theirs) == ([], [{"type": "message", "text": text}])
            else:
                assert [e.get("code") for e in mine] == ["not_paired"], mine
        case wire.Typing(active):
            assert mine == []
            assert theirs == ([{"type": "typing", "active": active}] if paired else [])
        case wire.Next():
            assert mine and mine[0]["type"] == "waiting", mine
            assert theirs == ([left] if paired else [])
        case wire.Stop():
            assert theirs == ([left] if paired else [])
        case wire.Report():
            if paired:
                assert theirs == [left]
            else:
                assert [e.get("code") for e in mine] == ["not_paired"], mine
        case wire.Block():
            if paired:
                assert theirs == [left]
            else:
                assert [e.get("code") for e in mine] == ["not_paired"], mine
        case wire.Interests(tags):
            # Answered; a chat is left alone (the partner hears nothing).
            assert mine == [{"type": "interests", "tags": list(tags)}], mine
            if paired:
                assert theirs == [], theirs


class Fuzzer:
    """Two clients chatting; one of them sends whatever hypothesis makes."""

    def __init__(self) -> None:
        self.h = Harness(
            cooldown=0,
            limits=Limits(message_burst=1e9, typing_burst=1e9, queue_burst=1e9),
            gate=Gate(addresses=AddressLimits(10**6, 10**6)),
        )
        self.h.pumper = create_pumper()
        self.h.agent = create_memory_agent(
            MemoryReactorClock(), self.h.pumper, lambda: self.h.factory.buildProtocol(None)
        )
        self.failures: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self._observe)
        self.a, self.b = self._pair()

    def _observe(self, event: dict[str, Any]) -> None:
        if "log_failure" in event or event.get("isError"):
            self.failures.append(event)

    def _pair(self) -> tuple[Client, Client]:
        a = self.h.connect_now()
        b = self.h.connect_now()
        for c in (a, b):
            if {"type": "paired", "common": []} not in c.events:
                c.send({"type": "next"})
        self.h.pump()
        return a, b

    def _chatting(self) -> bool:
        return self.h.lobby.stats().chatting == 2

    def send(self, payload: bytes, binary: bool) -> None:
        a, b = self.a, self.b
        if not self._chatting():  # most frames are worth more inside a chat
            for c in (a, b):
                c.send({"type": "next"})
            self.h.pump()
        paired = self._chatting()
        a.take()
        b.take()
        a.sendMessage(payload, isBinary=binary)
        self.h.pump()
        assert not self.failures, self.failures
        if a.closed is not None or a.state != a.STATE_OPEN:
            assert a.closed is not None and a.closed[1] in CLOSE_CODES, a.closed
            self.a, self.b = self._pair()
            return
        mine = [e for e in a.take() if e.get("type") != "online"]
        theirs = [e for e in b.take() if e.get("type") != "online"]
        for event in mine:
            assert isinstance(event, dict) and isinstance(event.get("type"), str)
            if event["type"] == "error":
                assert event["code"] in ERROR_CODES
                assert isinstance(event["message"], str) and event["message"]
        answer(payload, binary, paired, mine, theirs)

    def close(self) -> None:
        globalLogPublisher.removeObserver(self._observe)
        for client in self.h.clients:
            if client.closed is None:
                client.dropConnection(abort=True)
        self.h.pump()
        self.h.lobby.stopService()


@pytest.fixture(scope="module")
def fuzzer():
    f = Fuzzer()
    yield f
    f.close()


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(frame=frames)
def test_every_frame_gets_a_protocol_answer(fuzzer: Fuzzer, frame: tuple[bytes, bool]) -> None:
    fuzzer.send(*frame)


def test_the_fuzzer_notices_a_lost_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: an answer that never goes out is noticed."""
    from roulette import framing

    f = Fuzzer()
    try:
        # Every event is framed here on its way out (a relayed one goes
        # straight to the partner's connection, through its session).
        monkeypatch.setattr(framing, "text_frame", lambda event: b"")
        with pytest.raises(AssertionError):
            f.send(b'{"type": "bogus"}', False)
        with pytest.raises(AssertionError):
            f.send(json.dumps({"type": "message", "text": "hi"}).encode(), False)
    finally:
        f.close()


def test_the_fuzzer_notices_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: a handler that raises is caught."""
    from roulette import wire

    f = Fuzzer()
    try:

        def explode(payload: bytes, max_length: int) -> Any:
            raise RuntimeError("boom")

        monkeypatch.setattr(wire, "parse_command", explode)
        with pytest.raises(Exception):  # noqa: B017 - any way of failing will do
            f.send(b'{"type": "next"}', False)
    finally:
        f.close()
