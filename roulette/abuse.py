"""Abuse controls, with no I/O: rate limits, per-address caps, reports and bans.

Every structure here takes the current time as an argument (or a clock
callable) and forgets what it no longer needs, so memory stays bounded by the
traffic of the last few minutes.  Addresses are kept only as keyed hashes
(:class:`AddressHasher`), never in the clear, and no message text is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


def address_key(host: str) -> str:
    """The unit that per-address limits count: the IPv4 address, or the /64
    of an IPv6 address (one subscriber usually holds a whole /64).

    IPv4-mapped IPv6 addresses count as their IPv4 address.  Anything that
    is not an IP address (a UNIX socket, say) is its own unit.
    """
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class AddressHasher:
    """Turns an address key into an opaque token with a per-process secret,
    so that what is kept in memory (and could leak) names nobody."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret if secret is not None else os.urandom(32)

    def __call__(self, key: str) -> str:
        digest = hmac.new(self._secret, key.encode("utf-8"), hashlib.blake2s)
        return digest.hexdigest()[:32]


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up."""

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._stamp = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        tokens = self._tokens + (now - self._stamp) * self._rate
        self._stamp = now
        if tokens > self._burst:
            tokens = self._burst
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return True
        self._tokens = tokens
        return False


class WindowCounter:
    """Counts events in the last ``window`` seconds."""

    __slots__ = ("_times", "_window")

    def __init__(self, window: float) -> None:
        self._window = window
        self._times: deque[float] = deque()

    def add(self, now: float) -> int:
        """Record an event; return how many fell in the window, this one included."""
        times = self._times
        times.append(now)
        horizon = now - self._window
        while times[0] <= horizon:
            times.popleft()
        return len(times)


@dataclass
class _Address:
    connections: int = 0
    recent: deque[float] = field(default_factory=deque)


class AddressLimits:
    """Concurrent connections and new connections a minute, per address key,
    and the total number of connections.

    :param max_per_address: concurrent connections one address may hold.
    :param per_minute: new connections one address may open in 60 seconds.
    :param max_total: connections the whole server holds (0: no cap).
    """

    WINDOW = 60.0

    def __init__(self, max_per_address: int, per_minute: int, max_total: int = 0) -> None:
        self.max_per_address = max_per_address
        self.per_minute = per_minute
        self.max_total = max_total
        self.total = 0
        self._addresses: dict[str, _Address] = {}

    def admit(self, key: str, now: float) -> str | None:
        """Take a slot for a new connection from ``key``.

        Returns ``None`` when admitted (call :meth:`release` when it closes),
        or why not: ``"total"``, ``"concurrent"`` or ``"rate"``.
        """
        if self.max_total and self.total >= self.max_total:
            return "total"
        entry = self._addresses.get(key)
        if entry is None:
            entry = self._addresses[key] = _Address()
        recent = entry.recent
        horizon = now - self.WINDOW
        while recent and recent[0] <= horizon:
            recent.popleft()
        if entry.connections >= self.max_per_address:
            return "concurrent"
        if len(recent) >= self.per_minute:
            return "rate"
        recent.append(now)
        entry.connections += 1
        self.total += 1
        return None

    def release(self, key: str) -> None:
        entry = self._addresses[key]
        entry.connections -= 1
        self.total -= 1

    def prune(self, now: float) -> None:
        """Forget addresses with no connection and no recent one."""
        horizon = now - self.WINDOW
        for key in [
            k
            for k, e in self._addresses.items()
            if e.connections == 0 and (not e.recent or e.recent[-1] <= horizon)
        ]:
            del self._addresses[key]

    def __len__(self) -> int:
        return len(self._addresses)


class Reports:
    """Reports against addresses, and the bans they lead to.

    Reports from ``threshold`` distinct reporters within ``window`` seconds ban
    the reported address for ``ban_seconds``; each further ban of the same
    address within ``memory`` seconds of the last one lasts twice as long.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        threshold: int = 3,
        window: float = 600.0,
        ban_seconds: float = 600.0,
        memory: float = 86_400.0,
    ) -> None:
        self._clock = clock
        self.threshold = threshold
        self.window = window
        self.ban_seconds = ban_seconds
        self.memory = memory
        # reported -> {reporter: time of its latest report}
        self._reports: dict[str, dict[str, float]] = {}
        # address -> time its ban ends
        self._banned: dict[str, float] = {}
        # address -> (bans so far, when the last one ended)
        self._history: dict[str, tuple[int, float]] = {}

    def report(self, reporter: str, reported: str) -> float | None:
        """Record a report; return the end of a ban it started, if any."""
        now = self._clock()
        if reporter == reported or self.banned_until(reported) is not None:
            return None
        reporters = self._reports.setdefault(reported, {})
        reporters[reporter] = now
        horizon = now - self.window
        for who in [w for w, t in reporters.items() if t <= horizon]:
            del reporters[who]
        if len(reporters) < self.threshold:
            return None
        del self._reports[reported]
        count, last_end = self._history.get(reported, (0, float("-inf")))
        if now - last_end > self.memory:
            count = 0
        until = now + self.ban_seconds * (2**count)
        self._banned[reported] = until
        self._history[reported] = (count + 1, until)
        return until

    def banned_until(self, address: str) -> float | None:
        """When the address's ban ends, or ``None`` if it is not banned."""
        until = self._banned.get(address)
        if until is None:
            return None
        if until <= self._clock():
            del self._banned[address]
            return None
        return until

    def prune(self) -> None:
        """Forget reports, bans and histories that have run out."""
        now = self._clock()
        horizon = now - self.window
        for reported in list(self._reports):
            reporters = self._reports[reported]
            for who in [w for w, t in reporters.items() if t <= horizon]:
                del reporters[who]
            if not reporters:
                del self._reports[reported]
        for address in [a for a, until in self._banned.items() if until <= now]:
            del self._banned[address]
        for address in [a for a, (_, end) in self._history.items() if now - end > self.memory]:
            del self._history[address]

    def sizes(self) -> tuple[int, int, int]:
        """How many reported addresses, bans and ban histories are remembered."""
        return len(self._reports), len(self._banned), len(self._history)


def client_host(peer_host: str, forwarded_for: list[str], trusted_hops: int) -> str:
    """The client's address, honouring the last ``trusted_hops`` proxies.

    ``forwarded_for`` holds the ``X-Forwarded-For`` header lines of the
    request.  Each trusted proxy appends the address it received the request
    from, so with ``n`` trusted proxies the client is the ``n``-th address
    from the right.  Anything short of that (no header, too few hops, or a
    hop that is not an IP address) falls back to the TCP peer: what a client
    writes into the header itself is never believed.
    """
    if trusted_hops <= 0:
        return peer_host
    hops = [hop.strip() for line in forwarded_for for hop in line.split(",")]
    hops = [hop for hop in hops if hop]
    if len(hops) < trusted_hops:
        return peer_host
    candidate = hops[-trusted_hops]
    if candidate.startswith("[") and "]" in candidate:  # [v6]:port
        candidate = candidate[1 : candidate.index("]")]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return peer_host


_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _split_hostport(hostport: str, default_port: str) -> tuple[str, str]:
    """``host[:port]`` (``[v6]:port`` too) as (host, port), lower-cased."""
    hostport = hostport.strip().lower()
    if hostport.startswith("["):
        host, _, tail = hostport.partition("]")
        host += "]"
        port = tail[1:] if tail.startswith(":") else ""
    else:
        host, _, port = hostport.partition(":")
    return host, port if port else default_port


def _split_origin(origin: str) -> tuple[str, str, str] | None:
    """``scheme://host[:port]`` as (scheme, host, port), the port always filled in."""
    scheme, sep, rest = origin.strip().lower().partition("://")
    default = _DEFAULT_PORTS.get(scheme)
    if not sep or not rest or "/" in rest or default is None:
        return None
    host, port = _split_hostport(rest, str(default))
    return scheme, host, port


class OriginPolicy:
    """Which ``Origin`` may open a WebSocket.

    A request without ``Origin`` (a program, not a browser) is allowed.
    ``Origin: null`` is refused.  The page's own origin (the one whose host
    and port are the request's ``Host``) is always allowed; so is any origin
    matching one of ``patterns``: ``scheme://host:port`` where ``*`` matches
    any run of characters other than
    ``:`` and ``/``, and a missing port means the scheme's default (so
    ``https://*.example.com`` allows every subdomain over HTTPS on port 443).
    """

    def __init__(self, patterns: tuple[str, ...] = ()) -> None:
        self.patterns = patterns
        self._compiled = [self._compile(p) for p in patterns]

    @staticmethod
    def _compile(pattern: str) -> re.Pattern[str]:
        scheme, sep, rest = pattern.strip().lower().partition("://")
        if not sep or not scheme or not rest:
            raise ValueError(f"origin pattern {pattern!r} is not scheme://host[:port]")
        if not re.search(r":(\d+|\*)$", rest):
            default = _DEFAULT_PORTS.get(scheme)
            if default is None:
                raise ValueError(f"origin pattern {pattern!r} needs a port")
            rest = f"{rest}:{default}"
        body = re.escape(f"{scheme}://{rest}").replace(r"\*", "[^/:@]*")
        return re.compile(body + r"\Z")

    def allows(self, origin: str | None, host: str | None) -> bool:
        if not origin:  # no Origin header
            return True
        parts = _split_origin(origin.strip())
        if parts is None:  # "null", or anything that is no origin
            return False
        scheme, origin_host, port = parts
        if host and _split_hostport(host, port) == (origin_host, port):
            return True
        normal = f"{scheme}://{origin_host}:{port}"
        return any(p.match(normal) for p in self._compiled)
