"""``twistd roulette``: command-line options and the service tree."""

from __future__ import annotations

import hashlib
import math
import random
import resource
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import txaio
from twisted.application import strports
from twisted.application.service import IService, MultiService, Service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorCore,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.python import usage
from zope.interface import implementer

from roulette import wire
from roulette.abuse import (
    BANS_PER_REPORTER,
    MIN_CHAT_SECONDS,
    AddressHasher,
    AddressLimits,
    OriginPolicy,
    PublicHosts,
    Reports,
    SocketLimits,
)
from roulette.core import Matchmaker, MemoryMatchmaker
from roulette.ice import TURN_TTL, IceServers, check_ice_url
from roulette.limits import DEFAULT, Limits
from roulette.lobby import Gate, Lobby
from roulette.logs import Tally
from roulette.metrics import check_endpoint as check_metrics_endpoint
from roulette.metrics import serve_metrics
from roulette.pool import RedisMatchmaker, parse_redis_url
from roulette.server import AUTO_PING_INTERVAL, AUTO_PING_TIMEOUT, RouletteFactory
from roulette.transport import direct_tcp
from roulette.website import (
    HANDSHAKE_TIMEOUT,
    MAX_SOCKETS_PER_ADDRESS,
    RESPONSE_TIMEOUT,
    default_web_root,
    load_rules,
    make_site,
)
from roulette.workers import StopWithParent, Workers

log = Logger()


class Options(usage.Options):
    synopsis = "[--port ENDPOINT] [--web-root DIR] [options]"
    longdesc = (
        "Serve roulette, a random one-to-one chat: the page at /, the WebSocket at /ws "
        "and a health check at /healthz, all on one port."
    )

    optParameters = [
        [
            "port",
            "p",
            "tcp:8080",
            "Endpoint to listen on, as a Twisted endpoint string "
            "(e.g. tcp:8080, tcp6:8080:interface=\\:\\:, "
            "ssl:8443:privateKey=key.pem:certKey=cert.pem).",
        ],
        ["web-root", None, None, "Directory of the page to serve [default: the shipped page]."],
        [
            "rules",
            None,
            None,
            "Text file of the rules the first-visit card shows, one per line "
            "[default: rules.txt in the web root].",
        ],
        [
            "max-message-length",
            None,
            DEFAULT.max_message_length,
            f"Longest chat message accepted, in characters (1 to {wire.MAX_TEXT_LIMIT}).",
            int,
        ],
        [
            "repair-cooldown",
            None,
            60.0,
            "Seconds after a chat ends during which its two clients are not paired again.",
            float,
        ],
        [
            "interest-wait",
            None,
            DEFAULT.interest_wait,
            "Seconds a visitor with interests waits for a stranger who shares one before "
            "anyone will do (0 turns interests off).",
            float,
        ],
        [
            "resume-grace",
            None,
            DEFAULT.resume_grace,
            "Seconds a visitor whose connection dropped has to come back and pick up "
            "its chat (0: a dropped connection ends the chat at once).",
            float,
        ],
        [
            "auto-ping-interval",
            None,
            AUTO_PING_INTERVAL,
            "Seconds between WebSocket pings to each client (0 turns pings off).",
            float,
        ],
        [
            "auto-ping-timeout",
            None,
            AUTO_PING_TIMEOUT,
            "Seconds a client may take to answer a ping before it is dropped (at least 1).",
            float,
        ],
        [
            "handshake-timeout",
            None,
            HANDSHAKE_TIMEOUT,
            "Seconds from accepting a connection until its request (or WebSocket upgrade) "
            "must have arrived in full.",
            float,
        ],
        [
            "message-rate",
            None,
            DEFAULT.message_rate,
            "Chat messages a connection may send a second.",
            float,
        ],
        [
            "message-burst",
            None,
            DEFAULT.message_burst,
            "Chat messages a connection may send at once.",
            float,
        ],
        [
            "max-per-ip",
            None,
            DEFAULT.max_per_address,
            "Concurrent WebSocket connections per address (IPv6: /64).",
            int,
        ],
        [
            "connects-per-minute",
            None,
            DEFAULT.connects_per_minute,
            "New WebSocket connections per address a minute (IPv6: /64).",
            int,
        ],
        [
            "max-connections",
            None,
            DEFAULT.max_connections,
            "WebSocket connections in all (0: no cap).",
            int,
        ],
        [
            "max-sockets-per-ip",
            None,
            None,
            "TCP connections of any kind (page, WebSocket, or nothing sent yet) one address may "
            f"hold open (IPv6: /64; 0: no cap) [default: {MAX_SOCKETS_PER_ADDRESS}; no cap with "
            "--trust-proxy, where every connection comes from the proxy].",
            int,
        ],
        [
            "max-sockets",
            None,
            0,
            "TCP connections of any kind the server holds open; at the cap it stops accepting "
            "until one closes (0: the process's descriptor limit, raised to its hard limit at "
            "start, less a tenth for files and logs).",
            int,
        ],
        [
            "response-timeout",
            None,
            RESPONSE_TIMEOUT,
            "Seconds from a request's arrival until the client must have taken its response.",
            float,
        ],
        [
            "trust-proxy",
            None,
            0,
            "How many proxies in front of the server to believe in X-Forwarded-For.",
            int,
        ],
        [
            "send-buffer-limit",
            None,
            DEFAULT.send_buffer_limit,
            "Bytes waiting to be sent to a client that does not read before it is dropped.",
            int,
        ],
        [
            "ban-reports",
            None,
            3,
            "Reports from this many different networks (IPv4 /24, IPv6 /48) within 10 minutes "
            "ban an address.",
            int,
        ],
        [
            "ban-minutes",
            None,
            10.0,
            "Length of a first ban; each repeat doubles it (and widens it for IPv6: "
            "/64, /56, /48).",
            float,
        ],
        [
            "bans-per-reporter",
            None,
            BANS_PER_REPORTER,
            "Bans a network's reports may help bring about in an hour; past that they count "
            "for nothing until the hour is over.",
            int,
        ],
        [
            "report-min-chat",
            None,
            MIN_CHAT_SECONDS,
            "Seconds a chat must last for a report in it to count toward a ban, unless the "
            "reported side sent a message.",
            float,
        ],
        [
            "turn-secret",
            None,
            None,
            "The shared secret of the TURN servers (coturn's static-auth-secret with "
            "use-auth-secret): each video chat gets time-limited TURN credentials "
            "[default: TURN URLs are handed out without credentials].",
        ],
        [
            "turn-secret-file",
            None,
            None,
            "Read --turn-secret from this file (its first line), so that it is not "
            "seen in the list of processes.",
        ],
        [
            "turn-ttl",
            None,
            TURN_TTL,
            "Seconds a TURN credential is valid.",
            float,
        ],
        [
            "signal-rate",
            None,
            DEFAULT.signal_rate,
            "WebRTC signalling frames (video chats) a connection may send a second.",
            float,
        ],
        [
            "signal-burst",
            None,
            DEFAULT.signal_burst,
            "WebRTC signalling frames a connection may send at once.",
            float,
        ],
        [
            "redis",
            None,
            None,
            "Share one pool of strangers with every process using this Redis: "
            "redis://[USER:PASSWORD@]HOST[:PORT][/DB], rediss://... (TLS) or "
            "unix:///PATH[?db=N] [default: none, the process is a pool of its own].",
        ],
        [
            "workers",
            None,
            1,
            "Serve with this many processes sharing the port (SO_REUSEPORT) and the --redis "
            "pool; the process started supervises them.",
            int,
        ],
        [
            "shutdown-grace",
            None,
            5.0,
            "Seconds clients get to close after the server says it is going away.",
            float,
        ],
        [
            "metrics",
            None,
            None,
            "Serve Prometheus metrics at /metrics on this endpoint, a port of their own "
            "(e.g. tcp:9100:interface=127.0.0.1) [default: none].",
        ],
    ]

    optFlags = [
        [
            "reuse-port",
            None,
            "Listen with SO_REUSEPORT, so that several processes share the port (as --workers "
            "does).",
        ],
        [
            "stop-with-stdin",
            None,
            "Stop when standard input ends (what --workers tells its workers).",
        ],
        [
            "no-welcome",
            None,
            "Match visitors at once, without the first-visit card of rules and age notice.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        self["allowed-origin"] = []
        self["public-host"] = []
        self["ice-server"] = []
        #: The command line as given, which --workers passes on to each worker.
        self.arguments: list[str] = []

    def parseOptions(self, options: list[str] | None = None) -> None:
        self.arguments = list(options) if options is not None else []
        super().parseOptions(options)  # type: ignore[no-untyped-call]  # unannotated in Twisted

    def opt_allowed_origin(self, pattern: str) -> None:
        """Also accept WebSockets from pages of this origin (scheme://host[:port], * for any run of characters; repeatable). The server's own origin is always accepted."""  # noqa: E501
        try:
            OriginPolicy((pattern,))
        except ValueError as error:
            raise usage.UsageError(str(error)) from None
        self["allowed-origin"].append(pattern)

    def opt_public_host(self, host: str) -> None:
        """Answer only requests for this host name (host[:port], the scheme's default port if none; repeatable); any other Host gets HTTP 421. Set it on every public deployment [default: any host]."""  # noqa: E501
        try:
            PublicHosts((host,))
        except ValueError as error:
            raise usage.UsageError(str(error)) from None
        self["public-host"].append(host)

    def opt_ice_server(self, url: str) -> None:
        """A STUN or TURN server for video chats' WebRTC connections (stun:HOST[:PORT], turn:HOST[:PORT][?transport=udp|tcp], turns:...; repeatable) [default: none, enough on one machine or one LAN]."""  # noqa: E501
        try:
            check_ice_url(url)
        except ValueError as error:
            raise usage.UsageError(str(error)) from None
        self["ice-server"].append(url)

    def postOptions(self) -> None:
        for name, value in self.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise usage.UsageError(f"--{name} must be a finite number")
        if not 1 <= self["max-message-length"] <= wire.MAX_TEXT_LIMIT:
            raise usage.UsageError(
                f"--max-message-length must be between 1 and {wire.MAX_TEXT_LIMIT}"
            )
        for name in (
            "repair-cooldown",
            "interest-wait",
            "resume-grace",
            "auto-ping-interval",
            "handshake-timeout",
            "max-connections",
            "max-sockets",
            "trust-proxy",
            "report-min-chat",
        ):
            if not self[name] >= 0:
                raise usage.UsageError(f"--{name} must not be negative")
        for name in (
            "message-rate",
            "message-burst",
            "signal-rate",
            "signal-burst",
            "turn-ttl",
            "max-per-ip",
            "connects-per-minute",
            "send-buffer-limit",
            "ban-reports",
            "ban-minutes",
            "bans-per-reporter",
            "shutdown-grace",
            "response-timeout",
        ):
            if not self[name] > 0:
                raise usage.UsageError(f"--{name} must be positive")
        if self["workers"] < 1:
            raise usage.UsageError("--workers must be at least 1")
        if self["workers"] > 1 and self["redis"] is None:
            raise usage.UsageError(
                "--workers needs --redis: workers meet each other's visitors through it"
            )
        if self["max-sockets-per-ip"] is not None and self["max-sockets-per-ip"] < 0:
            raise usage.UsageError("--max-sockets-per-ip must not be negative")
        # Autobahn schedules these timers to whole seconds.
        if not self["auto-ping-timeout"] >= 1:
            raise usage.UsageError("--auto-ping-timeout must be at least 1 second")
        try:
            # Parsed once here, with nothing bound (an ssl: endpoint reads its
            # key and certificate), so that a mistake is one usage line.
            endpoints.serverFromString(object(), self["port"])
        except Exception as error:
            raise usage.UsageError(f"--port {self['port']}: {_reason(error)}") from None
        if self["metrics"] is not None:
            check_metrics_endpoint(self)
        if self["redis"] is not None:
            try:
                self["redis"] = parse_redis_url(self["redis"])
            except ValueError as error:
                raise usage.UsageError(f"--redis {error}") from None
        if self["web-root"] is None:
            self["web-root"] = default_web_root()
        if self["turn-secret-file"] is not None:
            if self["turn-secret"] is not None:
                raise usage.UsageError("give --turn-secret or --turn-secret-file, not both")
            try:
                with open(self["turn-secret-file"], encoding="utf-8") as f:
                    self["turn-secret"] = f.readline().rstrip("\r\n")
            except OSError as error:
                raise usage.UsageError(f"--turn-secret-file: {error.strerror}") from None
        if self["turn-secret"] == "":
            raise usage.UsageError("the TURN secret is empty")
        else:
            root = Path(self["web-root"])
            if not (root / "index.html").is_file():
                raise usage.UsageError(f"--web-root {root} has no index.html")
            self["web-root"] = root
        rules = self["rules"]
        if self["no-welcome"]:
            self["rules"] = None
        else:
            path = Path(rules) if rules is not None else self["web-root"] / "rules.txt"
            try:
                self["rules"] = load_rules(path) if rules is not None or path.exists() else []
            except (OSError, UnicodeDecodeError, ValueError) as error:
                reason = error.strerror if isinstance(error, OSError) else str(error)
                raise usage.UsageError(f"--rules {path} {reason}") from None


def _reason(error: BaseException) -> str:
    """An exception as one line a person can read."""
    if isinstance(error, CannotListenError):
        error = error.socketError
    if isinstance(error, OSError) and error.strerror:
        where = f" ({error.filename})" if error.filename else ""
        return f"{error.strerror}{where}"
    return str(error) or type(error).__name__


class _FlushedTally(Service):
    """On shutdown, the warnings a tally counted and has not logged yet are
    logged, and its timer cancelled."""

    def __init__(self, tally: Tally) -> None:
        self._tally = tally

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        self._tally.stop()


class _Listener(MultiService):
    """The listening service: a port that cannot be had (in use, out of
    range, not permitted) ends the process with one line, not a traceback."""

    def __init__(self, listener: IService, port: str, option: str = "--port") -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        self._description = f"{option} {port}"
        listener.setServiceParent(self)

    def privilegedStartService(self) -> None:
        with self._one_line():
            super().privilegedStartService()  # type: ignore[no-untyped-call]  # unannotated in Twisted

    def startService(self) -> None:
        with self._one_line():
            super().startService()  # type: ignore[no-untyped-call]  # unannotated in Twisted

    @contextmanager
    def _one_line(self) -> Iterator[None]:
        try:
            yield
        except (CannotListenError, OverflowError, OSError) as error:
            raise SystemExit(
                f"roulette: cannot listen on {self._description}: {_reason(error)}"
            ) from None


def socket_budget(requested: int) -> int:
    """How many connections the server may hold open: ``requested``, or,
    when 0, what the descriptor limit allows once raised to its hard limit,
    less a tenth (at least 32) for the files, logs and pipes the process
    also opens.  A request above that is lowered to it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return requested
    budget = max(1, soft - max(32, soft // 10))
    if requested > budget:
        log.warn(
            "--max-sockets {requested} is above what {limit} descriptors allow: using {budget}",
            requested=requested,
            limit=soft,
            budget=budget,
        )
    return min(requested, budget) if requested else budget


@implementer(IStreamServerEndpoint)
class _Listening:
    """An endpoint that hands the port it listens on to ``listening``."""

    def __init__(
        self, endpoint: IStreamServerEndpoint, listening: Callable[[IListeningPort], None]
    ) -> None:
        self._endpoint = endpoint
        self._listening = listening

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        def listening(port: IListeningPort) -> IListeningPort:
            self._listening(port)
            return port

        return self._endpoint.listen(factory).addCallback(listening)


def _without_workers(arguments: list[str]) -> list[str]:
    """The command line less its ``--workers`` option."""
    kept: list[str] = []
    skip = False
    for argument in arguments:
        if skip:
            skip = False
        elif argument == "--workers":
            skip = True
        elif not argument.startswith("--workers="):
            kept.append(argument)
    return kept


def makeService(config: Options, reactor: IReactorCore | None = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    clock: IReactorTime = reactor  # type: ignore[assignment]
    # Autobahn logs every frame and close at debug level; keep the log readable.
    txaio.set_global_log_level("info")  # type: ignore[attr-defined]  # txaio binds it when a framework is chosen
    parent = MultiService()
    if config["workers"] > 1:
        workers = Workers(
            reactor,
            config["workers"],
            [*_without_workers(config.arguments), "--reuse-port", "--stop-with-stdin"],
            grace=config["shutdown-grace"] + 5,
        )
        workers.setServiceParent(parent)  # type: ignore[no-untyped-call]  # unannotated in Twisted
        return parent
    if config["stop-with-stdin"]:
        StopWithParent(reactor).setServiceParent(parent)  # type: ignore[no-untyped-call]  # unannotated in Twisted
    matchmaker: Matchmaker
    if config["redis"] is not None:
        # First among the services: it joins the pool before clients come,
        # and leaves it after they have gone.
        pool = RedisMatchmaker(
            config["redis"],
            random.SystemRandom(),
            reactor,
            cooldown=config["repair-cooldown"],
            interest_wait=config["interest-wait"],
        )
        pool.setServiceParent(parent)  # type: ignore[no-untyped-call]  # unannotated in Twisted
        matchmaker = pool
    else:
        matchmaker = MemoryMatchmaker(
            random.SystemRandom(),
            clock.seconds,
            cooldown=config["repair-cooldown"],
            interest_wait=config["interest-wait"],
        )
    limits = Limits(
        max_message_length=config["max-message-length"],
        message_rate=config["message-rate"],
        message_burst=config["message-burst"],
        signal_rate=config["signal-rate"],
        signal_burst=config["signal-burst"],
        interest_wait=config["interest-wait"],
        resume_grace=config["resume-grace"],
        send_buffer_limit=config["send-buffer-limit"],
        max_per_address=config["max-per-ip"],
        connects_per_minute=config["connects-per-minute"],
        max_connections=config["max-connections"],
    )
    ban_seconds = config["ban-minutes"] * 60
    gate = Gate(
        origins=OriginPolicy(tuple(config["allowed-origin"])),
        addresses=AddressLimits(
            limits.max_per_address, limits.connects_per_minute, limits.max_connections
        ),
        reports=Reports(
            clock.seconds,
            threshold=config["ban-reports"],
            ban_seconds=ban_seconds,
            min_chat_seconds=config["report-min-chat"],
            bans_per_reporter=config["bans-per-reporter"],
        ),
        trust_proxy=config["trust-proxy"],
        hosts=PublicHosts(tuple(config["public-host"])),
    )
    lobby = Lobby(
        matchmaker,
        clock,
        gate,
        shutdown_grace=config["shutdown-grace"],
        resume_grace=limits.resume_grace,
    )
    if isinstance(matchmaker, RedisMatchmaker):
        # Clients wait (503) until the node has joined the pool and hashes
        # addresses with the pool's secret: one address, one identity.
        lobby.ready = False

        def joined(_: object) -> None:
            assert isinstance(matchmaker, RedisMatchmaker) and matchmaker.secret is not None
            gate.hasher = AddressHasher(matchmaker.secret)
            # Tokens too, with a key of their own made from it.
            lobby.sessions.use_secret(
                hashlib.blake2s(b"roulette sessions", key=matchmaker.secret).digest()
            )
            lobby.ready = True
            log.info("joined the pool as node {node}", node=matchmaker.node)

        matchmaker.ready().addCallback(joined)
        matchmaker.on_matching = lobby.matching
        matchmaker.on_ban = lobby.heard_ban
        lobby.shared_reports = matchmaker
        lobby.shared_addresses = matchmaker
        lobby.shared_sessions = matchmaker
        matchmaker.on_handover = lobby.hand_over
    lobby.setServiceParent(parent)  # type: ignore[no-untyped-call]  # unannotated in Twisted
    factory = RouletteFactory(
        lobby,
        auto_ping_interval=config["auto-ping-interval"],
        auto_ping_timeout=config["auto-ping-timeout"],
        limits=limits,
        reactor=reactor,
    )
    secret = config["turn-secret"]
    factory.ice_servers = IceServers(
        config["ice-server"],
        secret.encode("utf-8") if secret is not None else None,
        clock.seconds,
        config["turn-ttl"],
    )
    _FlushedTally(factory.tally).setServiceParent(parent)  # type: ignore[no-untyped-call]  # unannotated in Twisted
    per_address = config["max-sockets-per-ip"]
    if per_address is None:
        per_address = 0 if config["trust-proxy"] else MAX_SOCKETS_PER_ADDRESS
    sockets = SocketLimits(per_address, socket_budget(config["max-sockets"]))
    site = make_site(
        lobby,
        config["web-root"],
        factory,
        config["handshake-timeout"],
        response_timeout=config["response-timeout"],
        sockets=sockets,
        rules=config["rules"],
    )
    # TCP connections that send at once when nothing is buffered: one
    # syscall per relayed message instead of a loop turn and three.
    # strports.service fails at start-up (twistd exits non-zero) when the
    # port cannot be bound; the site must know its port to pause it.
    listener = strports.service(
        config["port"], site, reactor=direct_tcp(reactor, config["reuse-port"])
    )
    listener.endpoint = _Listening(listener.endpoint, site.listening)
    _Listener(listener, config["port"]).setServiceParent(parent)  # type: ignore[no-untyped-call]  # unannotated in Twisted
    if config["metrics"] is not None:  # /metrics and the lag timer (roulette.metrics)
        metrics = serve_metrics(config["metrics"], factory.metrics, reactor)
        _Listener(metrics, config["metrics"], "--metrics").setServiceParent(parent)  # type: ignore[no-untyped-call]  # unannotated in Twisted
    return parent
