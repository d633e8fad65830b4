"""The pure abuse controls: buckets, windows, per-address caps, reports and bans."""

from __future__ import annotations

import pytest
from fakes import FakeClock

from roulette.abuse import (
    AddressHasher,
    AddressKeys,
    AddressLimits,
    Ban,
    OriginPolicy,
    PublicHosts,
    Reports,
    TokenBucket,
    WindowCounter,
    address_key,
    address_keys,
    ban_scopes,
    network_key,
    request_scheme,
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


# -- reports and bans ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "network", "scopes"),
    [
        ("203.0.113.7", "203.0.113.0/24", ("203.0.113.7",)),
        ("::ffff:203.0.113.7", "203.0.113.0/24", ("203.0.113.7",)),
        (
            "2001:db8:1:2:3:4:5:6",
            "2001:db8:1::/48",
            ("2001:db8:1:2::/64", "2001:db8:1::/56", "2001:db8:1::/48"),
        ),
        (
            "2001:db8:1:1ff::1",
            "2001:db8:1::/48",
            ("2001:db8:1:1ff::/64", "2001:db8:1:100::/56", "2001:db8:1::/48"),
        ),
        ("/run/roulette.sock", "/run/roulette.sock", ("/run/roulette.sock",)),
    ],
)
def test_network_and_ban_scopes(host: str, network: str, scopes: tuple[str, ...]) -> None:
    assert network_key(host) == network
    assert ban_scopes(host) == scopes
    assert address_keys(host) == AddressKeys(address_key(host), network, scopes)


def test_hasher_hashes_every_key() -> None:
    h = AddressHasher(b"k" * 32)
    keys = h.keys("2001:db8:1:2::1")
    assert keys.address == h("2001:db8:1:2::/64") == keys.scopes[0]
    assert keys.network == h("2001:db8:1::/48") == keys.scopes[2]
    assert keys.scopes[1] == h("2001:db8:1::/56")
    assert not any("2001" in k or "db8" in k for k in (keys.network, *keys.scopes))
    v4 = h.keys("203.0.113.7")
    assert v4.scopes == (v4.address,) and v4.network == h("203.0.113.0/24")


def reporter(n: int) -> AddressKeys:
    """A reporter in a network of its own (its own /24)."""
    return address_keys(f"198.51.{n}.7")


def report(
    reports: Reports, who: AddressKeys, whom: AddressKeys, seconds: float = 60.0, sent: bool = False
) -> Ban | None:
    return reports.report(who, whom, seconds=seconds, sent=sent)


def test_three_networks_ban_for_ten_minutes_then_doubling() -> None:
    clock = FakeClock(0.0)
    reports = Reports(clock, threshold=3, window=600, ban_seconds=600, bans_per_reporter=10)
    bad = address_keys("203.0.113.66")
    assert report(reports, reporter(1), bad) is None
    assert report(reports, reporter(1), bad) is None  # the same reporter counts once
    assert report(reports, reporter(2), bad) is None
    assert reports.banned_until(*bad.scopes) is None
    clock.now = 100
    assert report(reports, reporter(3), bad) == Ban("203.0.113.66", 700)
    assert reports.banned_until(*bad.scopes) == 700
    assert reports.banned_until("203.0.113.67") is None  # IPv4: the address alone
    assert report(reports, reporter(4), bad) is None  # already banned
    clock.now = 700
    assert reports.banned_until(*bad.scopes) is None
    for n in (4, 5, 6):
        clock.now = 800 + n
        ban = report(reports, reporter(n), bad)
    assert ban == Ban("203.0.113.66", 806 + 1200)  # the second ban lasts twice as long
    clock.now = 806 + 1200 + 86_401  # a day later, the history is forgotten
    for n in (7, 8, 9):
        ban = report(reports, reporter(n), bad)
    assert ban == Ban("203.0.113.66", clock.now + 600)


def test_reporters_in_one_network_count_once() -> None:
    clock = FakeClock(0.0)
    reports = Reports(clock, threshold=3)
    bad = address_keys("2001:db8:bad::1")
    one_24 = [address_keys(f"203.0.113.{n}") for n in (1, 2, 3)]
    one_48 = [address_keys(f"2001:db8:1:{n:x}::1") for n in (1, 0x100, 0xFFFF)]
    mapped = address_keys("::ffff:203.0.113.200")
    for who in [*one_24, *one_48, mapped]:
        assert report(reports, who, bad) is None
    assert reports.banned_until(*bad.scopes) is None
    # A third network is the third distinct reporter.
    assert report(reports, reporter(9), bad) is not None
    assert reports.banned_until(*bad.scopes) is not None


def test_short_chats_count_only_if_the_reported_side_spoke() -> None:
    clock = FakeClock(0.0)
    reports = Reports(clock, threshold=3, min_chat_seconds=5.0)
    bad = address_keys("203.0.113.66")
    for n in range(1, 10):  # everyone reports at once: nobody is banned
        assert report(reports, reporter(n), bad, seconds=4.9, sent=False) is None
    assert reports.banned_until(*bad.scopes) is None
    assert report(reports, reporter(10), bad, seconds=5.0) is None  # long enough
    assert report(reports, reporter(11), bad, seconds=0.0, sent=True) is None  # it spoke
    assert report(reports, reporter(12), bad, seconds=0.1, sent=True) is not None


def test_a_reporter_network_helps_ban_only_so_many_an_hour() -> None:
    clock = FakeClock(0.0)
    reports = Reports(clock, threshold=3, bans_per_reporter=2)
    attackers = [reporter(n) for n in (1, 2, 3)]

    def all_report(host: str) -> Ban | None:
        return [report(reports, who, address_keys(host)) for who in attackers][-1]

    assert all_report("192.0.2.1") is not None
    clock.now = 600
    assert all_report("192.0.2.2") is not None
    clock.now = 1200
    assert all_report("192.0.2.3") is None  # their budget is spent
    assert reports.banned_until("192.0.2.3") is None
    # Other networks' reports still count, without the spent ones.
    victim = address_keys("192.0.2.3")
    assert report(reports, reporter(4), victim) is None
    assert report(reports, reporter(5), victim) is None
    assert report(reports, reporter(6), victim) == Ban("192.0.2.3", 1200 + 600)
    # An hour after their first ban they have one more; an hour after the
    # second, another.
    clock.now = 3600.5
    assert all_report("192.0.2.4") is not None
    clock.now = 3700
    assert all_report("192.0.2.5") is None
    clock.now = 4200.5
    assert all_report("192.0.2.5") is not None


def test_reports_made_before_the_budget_was_spent_stop_counting() -> None:
    clock = FakeClock(0.0)
    reports = Reports(clock, threshold=3, bans_per_reporter=1)
    early = reporter(1)
    a, b = address_keys("192.0.2.1"), address_keys("192.0.2.2")
    assert report(reports, early, b) is None  # waits for two more against b
    assert report(reports, reporter(2), a) is None
    assert report(reports, reporter(3), a) is None
    assert report(reports, early, a) is not None  # early's one ban
    assert report(reports, reporter(4), b) is None
    assert report(reports, reporter(5), b) is None  # early's report no longer counts
    assert report(reports, reporter(6), b) is not None


def test_ipv6_bans_widen_from_64_to_56_to_48() -> None:
    clock = FakeClock(0.0)
    reports = Reports(clock, threshold=3, ban_seconds=600, bans_per_reporter=10)
    n = iter(range(1, 100))

    def ban(host: str) -> Ban | None:
        keys = address_keys(host)
        for _ in range(3):
            result = report(reports, reporter(next(n)), keys)
        return result

    def banned(host: str) -> bool:
        return reports.banned_until(*address_keys(host).scopes) is not None

    assert ban("2001:db8:1:1::1") == Ban("2001:db8:1:1::/64", 600)
    assert banned("2001:db8:1:1::2")  # the same /64
    assert not banned("2001:db8:1:2::1")  # another /64 of the same /56
    clock.now = 100  # back from another /64, and reported again
    assert ban("2001:db8:1:2::1") == Ban("2001:db8:1::/56", 100 + 1200)
    assert banned("2001:db8:1:3::1") and banned("2001:db8:1:ff::1")
    assert not banned("2001:db8:1:100::1")  # another /56 of the same /48
    clock.now = 200
    assert ban("2001:db8:1:100::1") == Ban("2001:db8:1::/48", 200 + 2400)
    assert banned("2001:db8:1:ffff::1")
    assert not banned("2001:db8:2::1")  # another /48
    # Each ban ends on its own; the widest outlasts the others.
    clock.now = 1400
    assert reports.banned_until(*address_keys("2001:db8:1:1::1").scopes) == 2600
    clock.now = 2600
    assert not banned("2001:db8:1:1::1") and not banned("2001:db8:1:100::1")
    # The fourth ban (the history is remembered) stays at the /48, twice as long.
    assert ban("2001:db8:1:abcd::1") == Ban("2001:db8:1::/48", 2600 + 4800)


def test_ipv4_bans_stay_per_address() -> None:
    clock = FakeClock(0.0)
    reports = Reports(clock, threshold=3, ban_seconds=600, bans_per_reporter=10)
    for round_, start in enumerate((0.0, 1000.0, 3000.0)):
        clock.now = start
        for k in range(3):
            ban = report(reports, reporter(10 * round_ + k), address_keys("203.0.113.66"))
        assert ban == Ban("203.0.113.66", start + 600 * 2**round_)
        assert reports.banned_until(*address_keys("203.0.113.67").scopes) is None


def test_reports_outside_the_window_do_not_add_up() -> None:
    clock = FakeClock(0.0)
    reports = Reports(clock, threshold=3, window=600, ban_seconds=600)
    x = address_keys("203.0.113.66")
    report(reports, reporter(1), x)
    clock.now = 400
    report(reports, reporter(2), x)
    clock.now = 601
    assert report(reports, reporter(3), x) is None  # reporter 1's report has expired
    assert report(reports, x, x) is None  # nobody reports themself
    reports.prune()
    assert reports.sizes() == (1, 0, 0, 0)


def test_everything_expires() -> None:
    clock = FakeClock(0.0)
    reports = Reports(clock, threshold=3, window=600, ban_seconds=600, memory=86_400)
    for k in range(3):
        report(reports, reporter(k), address_keys("2001:db8:1:1::1"))
    for k in range(3, 5):  # pending
        report(reports, reporter(k), address_keys("203.0.113.66"))
    assert reports.sizes() == (1, 1, 1, 3)
    clock.now = 600
    reports.prune()  # the ban and the pending reports are over
    assert reports.sizes() == (0, 0, 1, 3)
    clock.now = 3600
    reports.prune()  # the reporters' hour is over
    assert reports.sizes() == (0, 0, 1, 0)
    clock.now = 600 + 86_400.5
    reports.prune()  # and so is the memory of the ban
    assert reports.sizes() == (0, 0, 0, 0)
    for k in range(3):
        ban = report(reports, reporter(k), address_keys("2001:db8:1:2::1"))
    assert ban == Ban("2001:db8:1:2::/64", clock.now + 600)  # a first ban again


# -- origins and hosts -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "host", "scheme", "allowed"),
    [
        (None, "127.0.0.1:8080", "http", True),  # no Origin: not a browser
        ("", "127.0.0.1:8080", "http", True),
        ("null", "127.0.0.1:8080", "http", False),
        ("http://127.0.0.1:8080", "127.0.0.1:8080", "http", True),
        # A Host without a port is port 80 over http, never the Origin's port.
        ("http://127.0.0.1:6666", "127.0.0.1", "http", False),
        ("http://127.0.0.1", "127.0.0.1", "http", True),
        ("http://127.0.0.1:80", "127.0.0.1", "http", True),
        ("http://127.0.0.1", "127.0.0.1:80", "http", True),
        ("https://example.com", "example.com", "https", True),
        ("https://example.com:443", "example.com", "https", True),
        ("https://example.com", "example.com:443", "https", True),
        ("https://example.com", "example.com:8443", "https", False),
        ("https://example.com:8443", "example.com", "https", False),
        # The scheme is the connection's, not the Origin's.
        ("https://127.0.0.1:8080", "127.0.0.1:8080", "http", False),
        ("http://example.com", "example.com", "https", False),
        ("http://example.com:443", "example.com:443", "https", False),
        ("ws://127.0.0.1:8080", "127.0.0.1:8080", "http", False),  # no page's origin
        ("wss://example.com", "example.com", "https", False),
        # Case does not matter; IPv6 literals keep their brackets.
        ("HTTP://Example.COM", "example.com", "http", True),
        ("http://example.com", "EXAMPLE.com:80", "http", True),
        ("http://[::1]:8080", "[::1]:8080", "http", True),
        ("http://[::1]", "[0:0::1]", "http", True),
        ("http://[::1]:8080", "[::1]", "http", False),
        ("http://[::1]:8080", "::1:8080", "http", False),
        ("http://example.com", None, "http", False),  # no Host: no own origin
        ("http://example.com", "example.com:http", "http", False),
        ("http://user@example.com", "user@example.com", "http", False),
        ("http://example.com/", "example.com", "http", False),
    ],
)
def test_own_origin_is_scheme_host_and_port(
    origin: str | None, host: str | None, scheme: str, allowed: bool
) -> None:
    assert OriginPolicy().allows(origin, host, scheme) is allowed


def test_origin_patterns() -> None:
    policy = OriginPolicy(("https://*.friends.example", "http://localhost:*"))
    host = "127.0.0.1:8080"
    assert policy.allows("https://chat.friends.example", host, "http")
    assert policy.allows("https://chat.friends.example:443", host, "https")
    assert not policy.allows("https://chat.friends.example:8443", host, "http")
    assert not policy.allows("http://chat.friends.example", host, "http")
    assert not policy.allows("https://friends.example.evil", host, "http")
    assert policy.allows("http://localhost:3000", host, "http")
    assert policy.allows("http://LOCALHOST", host, "http")
    assert not policy.allows("http://localhost.evil:3000", host, "http")
    with pytest.raises(ValueError):
        OriginPolicy(("chat.friends.example",))


def test_a_rebinding_host_is_refused_only_with_public_hosts() -> None:
    # evil.example resolves to the server: page, Host and Origin all agree.
    origin, host = "http://evil.example:8080", "evil.example:8080"
    assert OriginPolicy().allows(origin, host, "http")
    assert PublicHosts().allows(host, "http")  # no names given: any Host
    public = PublicHosts(("chat.example.com:8080",))
    assert not public.allows(host, "http")
    assert public.allows("chat.example.com:8080", "http")
    assert public.allows("Chat.Example.COM:8080", "https")
    assert not public.allows("chat.example.com", "http")
    assert not public.allows(None, "http")  # HTTP/1.0 without a Host
    assert not public.allows("", "http")
    assert not public.allows("chat.example.com:8080:1", "http")


def test_public_hosts_without_a_port_take_the_scheme_default() -> None:
    public = PublicHosts(("chat.example.com", "[2001:DB8::1]", "127.0.0.1:8080"))
    assert public.allows("chat.example.com", "http")
    assert public.allows("chat.example.com:80", "http")
    assert public.allows("chat.example.com", "https")
    assert public.allows("chat.example.com:443", "https")
    assert not public.allows("chat.example.com:443", "http")
    assert not public.allows("chat.example.com:8080", "http")
    assert public.allows("[2001:db8::1]", "https")
    assert public.allows("[2001:db8:0::1]:80", "http")
    assert not public.allows("2001:db8::1", "http")
    assert public.allows("127.0.0.1:8080", "http")
    assert not public.allows("127.0.0.1", "http")
    assert not public.allows("www.chat.example.com", "http")


@pytest.mark.parametrize("name", ["", "host/path", "http://host", "host:0", "host:99999", "[::g]"])
def test_public_hosts_refuse_what_is_no_host(name: str) -> None:
    with pytest.raises(ValueError):
        PublicHosts((name,))


@pytest.mark.parametrize(
    ("secure", "forwarded", "hops", "scheme"),
    [
        (False, [], 0, "http"),
        (True, [], 0, "https"),
        (False, ["https"], 0, "http"),  # nobody to believe
        (True, ["http"], 0, "https"),
        (False, ["https"], 1, "https"),
        (True, ["http"], 1, "http"),
        (False, ["HTTPS"], 1, "https"),
        (False, ["http, https"], 1, "https"),  # the last value
        (False, ["https", " http "], 2, "http"),
        (False, ["https, "], 1, "http"),
        (False, ["wss"], 1, "http"),  # neither http nor https: ignored
        (True, ["gopher"], 1, "https"),
        (False, [], 1, "http"),
    ],
)
def test_request_scheme(secure: bool, forwarded: list[str], hops: int, scheme: str) -> None:
    assert request_scheme(secure, forwarded, hops) == scheme


def test_forwarded_proto_decides_the_own_origin_only_behind_a_trusted_proxy() -> None:
    host, origin = "chat.example.com", "https://chat.example.com"
    policy = OriginPolicy()
    assert policy.allows(origin, host, request_scheme(False, ["https"], 1))
    assert not policy.allows(origin, host, request_scheme(False, ["https"], 0))
