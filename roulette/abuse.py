"""Abuse controls, with no I/O: rate limits, per-address caps, reports and bans.

Every structure here takes the current time as an argument (or a clock
callable) and forgets what it no longer needs, so memory stays bounded by the
traffic of the last few minutes.  Addresses are kept only as keyed hashes
(:class:`AddressHasher`), never in the clear, and no message text is stored.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

#: A report counts toward a ban only for a chat that lasted this many seconds,
#: or in which the reported side sent a message: reporting every partner the
#: moment it appears bans nobody.
MIN_CHAT_SECONDS = 5.0

#: How many bans one reporter network may help bring about in an hour.
BANS_PER_REPORTER = 2


#: An IPv4 address written as the kernel (and :mod:`ipaddress`) writes it:
#: what ``getPeer()`` gives, the common case, read without :mod:`ipaddress`.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"(?:{_OCTET}\.){{3}}{_OCTET}")


@dataclass(frozen=True, slots=True)
class AddressKeys:
    """The keys of one client address, as :meth:`AddressHasher.keys` hashes them."""

    #: What per-address limits count and who is kept apart (:func:`address_key`).
    address: str
    #: Whose reports count once (:func:`network_key`).
    network: str
    #: What a ban may cover, narrowest first (:func:`ban_scopes`); the first is ``address``.
    scopes: tuple[str, ...]


def _prefix(ip: ipaddress.IPv6Address, bits: int) -> str:
    """The /``bits`` network of ``ip``, written as :mod:`ipaddress` writes it."""
    shift = 128 - bits
    return f"{ipaddress.IPv6Address(int(ip) >> shift << shift)}/{bits}"


def _ip_keys(host: str) -> AddressKeys | None:
    """The keys of ``host`` in the clear, from one parse (this runs for every
    connection), or ``None`` when ``host`` is no IP address.

    IPv4 (and IPv4-mapped IPv6): the address, its /24, and the address
    alone to ban.  IPv6: its /64, its /48, and the /64, /56 and /48 to ban.
    """
    if _IPV4.fullmatch(host):
        return AddressKeys(host, host.rpartition(".")[0] + ".0/24", (host,))
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv4Address):
        address = str(ip)
        return AddressKeys(address, address.rpartition(".")[0] + ".0/24", (address,))
    address, network = _prefix(ip, 64), _prefix(ip, 48)
    return AddressKeys(address, network, (address, _prefix(ip, 56), network))


def address_keys(host: str) -> AddressKeys:
    """The keys of ``host``, in the clear: :func:`address_key`,
    :func:`network_key` and :func:`ban_scopes`.  Anything that is not an IP
    address (a UNIX socket, say) is its own unit for all three."""
    return _ip_keys(host) or AddressKeys(host, host, (host,))


def address_key(host: str) -> str:
    """The unit that per-address limits count: the IPv4 address, or the /64
    of an IPv6 address (one subscriber usually holds a whole /64).

    IPv4-mapped IPv6 addresses count as their IPv4 address.  Anything that
    is not an IP address (a UNIX socket, say) is its own unit.
    """
    return address_keys(host).address


def network_key(host: str) -> str:
    """The network a reporter counts for: the IPv4 /24 or the IPv6 /48.

    However many addresses one network holds, its reports count once.
    Anything that is not an IP address is its own network.
    """
    return address_keys(host).network


def ban_scopes(host: str) -> tuple[str, ...]:
    """What a ban of ``host`` may cover, narrowest first: the IPv4 address
    alone, or the IPv6 /64, /56 and /48 (repeated bans widen)."""
    return address_keys(host).scopes


class AddressHasher:
    """Turns an address key into an opaque token with a per-process secret,
    so that what is kept in memory (and could leak) names nobody."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret if secret is not None else os.urandom(32)

    def __call__(self, key: str) -> str:
        # Keyed BLAKE2s is a MAC in itself, without HMAC's two passes.
        digest = hashlib.blake2s(key.encode("utf-8"), key=self._secret, digest_size=16)
        return digest.hexdigest()

    def keys(self, host: str) -> AddressKeys:
        """The keys of ``host``, each hashed."""
        clear = address_keys(host)
        address = self(clear.address)
        return AddressKeys(
            address, self(clear.network), (address, *(self(k) for k in clear.scopes[1:]))
        )


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

    def refusal(self, key: str, now: float) -> tuple[str, float] | None:
        """Why :meth:`admit` would refuse ``key`` now, and in how many
        seconds it may no longer (0 when that depends on connections
        closing); ``None`` if it would admit it.  Nothing is taken."""
        if self.max_total and self.total >= self.max_total:
            return ("total", 0.0)
        entry = self._addresses.get(key)
        if entry is None:
            return None
        if entry.connections >= self.max_per_address:
            return ("concurrent", 0.0)
        recent = [t for t in entry.recent if t > now - self.WINDOW]
        if len(recent) >= self.per_minute:
            return ("rate", recent[-self.per_minute] + self.WINDOW - now)
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


class SocketLimits:
    """Open TCP connections of any kind (page, health check, WebSocket, or
    nothing yet): per address key and in all.

    :param max_per_address: connections one address may hold open (0: no cap).
    :param max_total: connections the whole server holds open (0: no cap).
    """

    def __init__(self, max_per_address: int, max_total: int) -> None:
        self.max_per_address = max_per_address
        self.max_total = max_total
        self.total = 0
        self._open: dict[str, int] = {}

    def open(self, key: str | None) -> str | None:
        """Take a slot for a connection from ``key`` (``None``: a peer that
        is no IP address, counted in the total only).

        Returns ``None`` when admitted (call :meth:`close` when it closes),
        or why not: ``"total"`` or ``"address"``.
        """
        if self.max_total and self.total >= self.max_total:
            return "total"
        if key is not None:
            count = self._open.get(key, 0)
            if self.max_per_address and count >= self.max_per_address:
                return "address"
            self._open[key] = count + 1
        self.total += 1
        return None

    def close(self, key: str | None) -> None:
        self.total -= 1
        if key is not None:
            count = self._open[key] - 1
            if count:
                self._open[key] = count
            else:
                del self._open[key]

    @property
    def full(self) -> bool:
        """Whether the total cap is reached."""
        return bool(self.max_total) and self.total >= self.max_total

    def __len__(self) -> int:
        return len(self._open)


def socket_key(host: str) -> str | None:
    """The unit :class:`SocketLimits` counts for a TCP peer: its
    :func:`address_key`, or ``None`` for a peer that is no IP address."""
    keys = _ip_keys(host)
    return None if keys is None else keys.address


@dataclass(frozen=True)
class Ban:
    """A ban that a report brought about."""

    #: The hashed key banned: an address, or an IPv6 /64, /56 or /48.
    scope: str
    #: When it ends (clock time).
    until: float


class Reports:
    """Reports against addresses, and the bans they lead to.

    Reports from ``threshold`` distinct reporter networks (IPv4 /24, IPv6
    /48) within ``window`` seconds ban the reported address for
    ``ban_seconds``.  A report counts only for a chat that lasted
    ``min_chat_seconds``, or in which the reported side sent a message; and
    only while its reporter network has helped bring about fewer than
    ``bans_per_reporter`` bans in the last hour.

    Each further ban within ``memory`` seconds of the last one lasts twice as
    long, and for IPv6 covers more: the /64 first, then the /56, then the
    /48.  Addresses come as :class:`AddressKeys`, hashed or not: only equality
    matters here.
    """

    #: The hour over which ``bans_per_reporter`` counts.
    BUDGET_WINDOW = 3600.0

    def __init__(
        self,
        clock: Callable[[], float],
        threshold: int = 3,
        window: float = 600.0,
        ban_seconds: float = 600.0,
        memory: float = 86_400.0,
        min_chat_seconds: float = MIN_CHAT_SECONDS,
        bans_per_reporter: int = BANS_PER_REPORTER,
    ) -> None:
        self._clock = clock
        self.threshold = threshold
        self.window = window
        self.ban_seconds = ban_seconds
        self.memory = memory
        self.min_chat_seconds = min_chat_seconds
        self.bans_per_reporter = bans_per_reporter
        # reported address -> {reporter network: time of its latest report}
        self._reports: dict[str, dict[str, float]] = {}
        # scope -> time its ban ends
        self._banned: dict[str, float] = {}
        # widest scope -> (bans so far, when the last one ended)
        self._history: dict[str, tuple[int, float]] = {}
        # reporter network -> when the bans it helped bring about began
        self._spent: dict[str, deque[float]] = {}

    def report(
        self, reporter: AddressKeys, reported: AddressKeys, *, seconds: float, sent: bool
    ) -> Ban | None:
        """Record a report about a chat that lasted ``seconds``, in which the
        reported side did (``sent``) or did not send a message; return the ban
        it brought about, if any."""
        now = self._clock()
        if reporter.address == reported.address:
            return None  # nobody reports themself
        if self.banned_until(*reported.scopes) is not None:
            return None
        if seconds < self.min_chat_seconds and not sent:
            return None
        if not self._has_budget(reporter.network, now):
            return None
        reporters = self._reports.setdefault(reported.address, {})
        reporters[reporter.network] = now
        horizon = now - self.window
        for who in [w for w, t in reporters.items() if t <= horizon]:
            del reporters[who]
        counted = [w for w in reporters if self._has_budget(w, now)]
        if len(counted) < self.threshold:
            return None
        del self._reports[reported.address]
        for who in counted:
            self._spent.setdefault(who, deque()).append(now)
        scopes = reported.scopes or (reported.address,)
        widest = scopes[-1]
        count, last_end = self._history.get(widest, (0, float("-inf")))
        if now - last_end > self.memory:
            count = 0
        scope = scopes[min(count, len(scopes) - 1)]
        until = now + self.ban_seconds * (2**count)
        self._banned[scope] = until
        self._history[widest] = (count + 1, until)
        return Ban(scope, until)

    def _has_budget(self, network: str, now: float) -> bool:
        """Whether reports from ``network`` still count toward a ban."""
        spent = self._spent.get(network)
        if spent is None:
            return True
        horizon = now - self.BUDGET_WINDOW
        while spent and spent[0] <= horizon:
            spent.popleft()
        if not spent:
            del self._spent[network]
            return True
        return len(spent) < self.bans_per_reporter

    def banned_until(self, *scopes: str) -> float | None:
        """When the latest ban covering any of ``scopes`` ends, or ``None``
        if none is banned (pass all of an address's scopes)."""
        latest = None
        now = self._clock()
        for scope in scopes:
            until = self._banned.get(scope)
            if until is None:
                continue
            if until <= now:
                del self._banned[scope]
            elif latest is None or until > latest:
                latest = until
        return latest

    def note_ban(self, scope: str, until: float) -> None:
        """A ban decided elsewhere (by another process of a shared pool):
        :meth:`banned_until` reports it from now on."""
        if until > self._banned.get(scope, float("-inf")):
            self._banned[scope] = until

    def prune(self) -> None:
        """Forget reports, bans, reporters' budgets and histories that have run out."""
        now = self._clock()
        horizon = now - self.window
        for reported in list(self._reports):
            reporters = self._reports[reported]
            for who in [w for w, t in reporters.items() if t <= horizon]:
                del reporters[who]
            if not reporters:
                del self._reports[reported]
        for scope in [s for s, until in self._banned.items() if until <= now]:
            del self._banned[scope]
        for scope in [s for s, (_, end) in self._history.items() if now - end > self.memory]:
            del self._history[scope]
        for network in list(self._spent):
            self._has_budget(network, now)

    def sizes(self) -> tuple[int, int, int, int]:
        """How many reported addresses, bans, ban histories and reporter
        budgets are remembered."""
        return len(self._reports), len(self._banned), len(self._history), len(self._spent)


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

#: The schemes of a page, as a browser names them in ``Origin``.
_PAGE_SCHEMES = ("http", "https")

_HOSTPORT = re.compile(r"(?P<host>[a-z0-9_.-]+|\[[0-9a-f:.]+\])(?::(?P<port>[0-9]{0,5}))?\Z")


def request_scheme(secure: bool, forwarded_proto: list[str], trusted_hops: int) -> str:
    """The scheme the client reached the server with: ``"https"`` or ``"http"``.

    ``secure`` tells whether the connection is TLS.  ``forwarded_proto``
    holds the ``X-Forwarded-Proto`` header lines of the request; behind
    trusted proxies (``trusted_hops`` above 0) its last value decides, when it
    is ``http`` or ``https``.  Anything else in it, and the header itself when
    no proxy is trusted, is ignored.
    """
    scheme = "https" if secure else "http"
    if trusted_hops <= 0:
        return scheme
    values = [value.strip().lower() for line in forwarded_proto for value in line.split(",")]
    if values and values[-1] in _PAGE_SCHEMES:
        return values[-1]
    return scheme


def _split_hostport(hostport: str, default_port: int) -> tuple[str, int] | None:
    """``host[:port]`` (``[v6]:port`` too) as (host, port), lower-cased, the
    port filled in with ``default_port`` when missing; ``None`` when it is no
    host and port."""
    match = _HOSTPORT.match(hostport.strip().lower())
    if match is None:
        return None
    host, port = match["host"], match["port"]
    if host.startswith("["):
        try:
            host = f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
        except ValueError:
            return None
    if not port:
        return host, default_port
    number = int(port)
    if not 0 < number < 65536:
        return None
    return host, number


def _split_origin(origin: str) -> tuple[str, str, int] | None:
    """``scheme://host[:port]`` as (scheme, host, port), the port always filled in."""
    scheme, sep, rest = origin.strip().lower().partition("://")
    default = _DEFAULT_PORTS.get(scheme)
    if not sep or default is None:
        return None
    hostport = _split_hostport(rest, default)
    if hostport is None:
        return None
    return scheme, *hostport


class PublicHosts:
    """The host names (``host[:port]``) the server answers for.

    A name without a port means the default port of the request's scheme.
    With no names at all every ``Host`` is accepted; otherwise a request
    must carry one of them, compared case-insensitively, or it is refused:
    a page served under any other name (a DNS-rebinding attacker's, say)
    would count as its own origin.
    """

    def __init__(self, hosts: tuple[str, ...] = ()) -> None:
        self.hosts = hosts
        self._names: set[tuple[str, int | None]] = set()
        for name in hosts:
            parsed = _split_hostport(name, 0)
            if parsed is None or not parsed[0].strip("."):
                raise ValueError(f"public host {name!r} is not host[:port]")
            host, port = parsed
            self._names.add((host, port or None))

    def __bool__(self) -> bool:
        return bool(self._names)

    def allows(self, host: str | None, scheme: str) -> bool:
        """Whether a request with this ``Host`` (``None``: none) reached us
        under one of our names, over ``scheme``."""
        if not self._names:
            return True
        default = _DEFAULT_PORTS.get(scheme)
        if not host or default is None:
            return False
        parsed = _split_hostport(host, default)
        if parsed is None:
            return False
        name, port = parsed
        return (name, port) in self._names or (port == default and (name, None) in self._names)


class OriginPolicy:
    """Which ``Origin`` may open a WebSocket.

    A request without ``Origin`` (a program, not a browser) is allowed.
    ``Origin: null`` is refused.  The page's own origin is always allowed:
    the one whose scheme is the request's (``http`` or ``https``, see
    :func:`request_scheme`) and whose host and port are the request's
    ``Host``, a missing port being the default of that scheme on both
    sides.  So is any origin matching one of ``patterns``:
    ``scheme://host:port`` where ``*`` matches any run of characters other
    than ``:`` and ``/``, and a missing port means the scheme's default (so
    ``https://*.example.com`` allows every subdomain over HTTPS on port 443).

    ``Host`` is the client's word: on its own it cannot tell a page of ours
    from a page of a DNS-rebinding attacker's domain.  :class:`PublicHosts`
    closes that gap.
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

    def allows(self, origin: str | None, host: str | None, scheme: str = "http") -> bool:
        """Whether a page of ``origin`` may open a WebSocket through a request
        with this ``Host`` that reached the server over ``scheme``."""
        if not origin:  # no Origin header
            return True
        parts = _split_origin(origin)
        if parts is None:  # "null", or anything that is no origin
            return False
        origin_scheme, origin_host, port = parts
        if origin_scheme == scheme and scheme in _PAGE_SCHEMES and host:
            if _split_hostport(host, _DEFAULT_PORTS[scheme]) == (origin_host, port):
                return True
        normal = f"{origin_scheme}://{origin_host}:{port}"
        return any(p.match(normal) for p in self._compiled)
