"""Log lines stay short, escaped and few, whatever a client sends."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from roulette.abuse import SocketLimits, socket_key
from roulette.logs import Tally, excerpt


def test_excerpt_escapes_control_characters_and_cuts() -> None:
    assert excerpt("plain") == "plain"
    assert excerpt("a\x1b[31mb\x07") == "a\\x1b[31mb\\x07"
    assert excerpt(b"caf\xe9") == "caf\\xe9"
    assert excerpt("é\n") == "\\xe9\\x0a"
    long = excerpt("z" * 5000)
    assert long.startswith("z" * 80) and long.endswith("…(+4920)")
    assert len(excerpt("\x00" * 5000)) < 100


@pytest.fixture
def lines() -> Any:
    seen: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


def test_tally_logs_a_kind_once_a_minute_with_a_count(lines: list[dict[str, Any]]) -> None:
    clock = Clock()
    tally = Tally(clock)
    for i in range(1000):
        tally.note("flood", "flood from {who}", who=i)
    ours = [e for e in lines if e.get("log_namespace") == "roulette"]
    assert [e["who"] for e in ours] == [0]
    assert tally.count("flood") == 999
    clock.advance(60)
    ours = [e for e in lines if e.get("log_namespace") == "roulette"]
    assert len(ours) == 2 and ours[1]["count"] == 999
    tally.note("flood", "flood from {who}", who="next")  # within the new interval
    tally.note("other", "other")  # another kind is logged at once
    ours = [e for e in lines if e.get("log_namespace") == "roulette"]
    assert len(ours) == 3 and ours[2]["log_format"] == "other"
    clock.advance(60)
    tally.stop()
    ours = [e for e in lines if e.get("log_namespace") == "roulette"]
    assert len(ours) == 4 and ours[3]["count"] == 1
    assert not clock.getDelayedCalls()


def test_socket_limits_per_address_and_in_all() -> None:
    sockets = SocketLimits(max_per_address=2, max_total=3)
    assert sockets.open("a") is None and sockets.open("a") is None
    assert sockets.open("a") == "address"
    assert sockets.open(None) is None  # no IP address: counted in the total only
    assert sockets.full
    assert sockets.open("b") == "total"
    sockets.close("a")
    assert not sockets.full and sockets.open("b") is None
    for key in ("a", "b", None):
        sockets.close(key)
    assert sockets.total == 0 and len(sockets) == 0
    unlimited = SocketLimits(0, 0)
    assert all(unlimited.open("a") is None for _ in range(1000))


def test_socket_keys() -> None:
    assert socket_key("192.0.2.7") == "192.0.2.7"
    assert socket_key("2001:db8:1:2:3:4:5:6") == socket_key("2001:db8:1:2::9")  # one /64
    assert socket_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert socket_key("/run/roulette.sock") is None
