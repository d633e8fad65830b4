"""The pure abuse controls: buckets, windows, per-address caps, reports and bans."""

from __future__ import annotations

import pytest
from fakes import FakeClock

from roulette.abuse import (
    AddressHasher,
    AddressLimits,
    Reports,
    TokenBucket,
    WindowCounter,
    address_key,
)


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:198.51.100.1", "198.51.100.1"),
        ("fe80::1%eth0", "fe80::/64"),
        ("/run/roulette.sock", "/run/roulette.sock"),
    ],
)
def test_address_key(host: str, key: str) -> None:
    assert address_key(host) == key


def test_hasher_is_stable_per_secret_and_hides_the_address() -> None:
    h = AddressHasher(b"k" * 32)
    assert h("203.0.113.7") == h("203.0.113.7")
    assert h("203.0.113.7") != h("203.0.113.8")
    assert "203" not in h("203.0.113.7")
    assert AddressHasher()("203.0.113.7") != AddressHasher()("203.0.113.7")


def test_token_bucket_allows_burst_then_rate() -> None:
    bucket = TokenBucket(rate=5, burst=10, now=0.0)
    assert [bucket.take(0.0) for _ in range(11)] == [True] * 10 + [False]
    assert bucket.take(0.1) is False  # half a token
    assert bucket.take(0.2) is True
    assert bucket.take(0.2) is False
    # Saving up is capped at the burst.
    assert sum(bucket.take(1000.0) for _ in range(20)) == 10


def test_window_counter_forgets_old_events() -> None:
    counter = WindowCounter(10.0)
    assert [counter.add(t) for t in (0, 1, 2)] == [1, 2, 3]
    assert counter.add(10.5) == 3  # 0 fell out of the window
    assert counter.add(12.0) == 2  # so did 1 and 2


def test_address_limits_concurrent_rate_and_total() -> None:
    limits = AddressLimits(max_per_address=2, per_minute=3, max_total=4)
    assert limits.admit("a", 0) is None
    assert limits.admit("a", 0) is None
    assert limits.admit("a", 0) == "concurrent"
    limits.release("a")
    assert limits.admit("a", 1) is None  # third new connection this minute
    limits.release("a")
    assert limits.admit("a", 2) == "rate"
    assert limits.admit("a", 60.5) is None  # the first one left the window
    assert limits.admit("b", 61) is None
    assert limits.admit("c", 61) is None
    assert limits.admit("d", 61) == "total"
    assert limits.total == 4


def test_address_limits_forget_idle_addresses() -> None:
    limits = AddressLimits(max_per_address=8, per_minute=60)
    for i in range(100):
        assert limits.admit(f"ip{i}", 0) is None
        limits.release(f"ip{i}")
    assert limits.admit("busy", 0) is None
    limits.prune(30)
    assert len(limits) == 101
    limits.prune(61)
    assert len(limits) == 1  # only the one still connected


def test_three_distinct_reporters_ban_for_ten_minutes_then_doubling() -> None:
    clock = FakeClock(0.0)
    reports = Reports(clock, threshold=3, window=600, ban_seconds=600)
    assert reports.report("r1", "bad") is None
    assert reports.report("r1", "bad") is None  # the same reporter counts once
    assert reports.report("r2", "bad") is None
    assert reports.banned_until("bad") is None
    clock.now = 100
    assert reports.report("r3", "bad") == 700
    assert reports.banned_until("bad") == 700
    clock.now = 700
    assert reports.banned_until("bad") is None
    for i, who in enumerate(("r4", "r5", "r6")):
        clock.now = 800 + i
        until = reports.report(who, "bad")
    assert until == 802 + 1200  # the second ban lasts twice as long
    clock.now = 802 + 1200 + 86_401  # a day later, the history is forgotten
    reports.prune()
    assert reports.sizes() == (0, 0, 0)
    for who in ("r7", "r8", "r9"):
        until = reports.report(who, "bad")
    assert until == clock.now + 600


def test_reports_outside_the_window_do_not_add_up() -> None:
    clock = FakeClock(0.0)
    reports = Reports(clock, threshold=3, window=600, ban_seconds=600)
    reports.report("r1", "x")
    clock.now = 400
    reports.report("r2", "x")
    clock.now = 601
    assert reports.report("r3", "x") is None  # r1's report has expired
    assert reports.report("x", "x") is None  # nobody reports themself
    reports.prune()
    assert reports.sizes() == (1, 0, 0)
