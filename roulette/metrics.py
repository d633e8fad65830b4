"""Prometheus metrics: what an operator watches and alerts on.

``twistd roulette --metrics ENDPOINT`` serves them at ``/metrics`` on a port
of their own (never the public one); ``docs/operations.md`` lists every
metric, and its names are a contract like the wire protocol's.

What each figure costs where it is counted:

* Counters are plain ``int`` attributes of :class:`Metrics`, which the
  connections hold through their factory (``factory.metrics``): a relayed
  message costs one ``+= 1``, with no lock and no call.  A collector reads
  them when ``/metrics`` is scraped.
* The gauges (connections, waiting, chatting) are the matchmaker's own
  counts, read at scrape time.
* The histograms (time waited, chat length, event-loop lag) are
  ``prometheus_client`` histograms, observed off the relay's path: once per
  client paired, once per chat ended, once per lag timer.

``prometheus_client``'s Twisted resource renders in the reactor's thread
pool; the figures that only the reactor's thread may read (the lobby's
counts) are copied there first, each time ``/metrics`` is asked for
(:meth:`Metrics.refresh`).

In a pool of processes (``--redis``) every metric carries a ``node`` label,
the node's random id (never an address); the pool-wide counts are the
``roulette_pool_*`` gauges.  No label ever carries what a client sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import cast

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.twisted import MetricsResource
from twisted.application import strports
from twisted.application.service import IService, MultiService, Service
from twisted.internet import endpoints
from twisted.internet.interfaces import IDelayedCall, IReactorCore, IReactorTime
from twisted.python import threadable, usage
from twisted.web import resource, server
from twisted.web.iweb import IRequest

from roulette import wire
from roulette.core import Stats
from roulette.lobby import Lobby
from roulette.pool import RedisMatchmaker

#: How a chat ended (``roulette_chats_ended_total``'s ``how``), counted at
#: the side that ended it: its ``next``, ``stop``, ``report`` or ``block``,
#: or its connection closing with a closing handshake (``left``) or without
#: one (``dropped``: the TCP connection lost, a ping unanswered).
CHAT_ENDINGS = ("next", "stop", "report", "block", "left", "dropped")

#: Why something was refused (``roulette_refusals_total``'s ``reason``),
#: each listed so that its series exists, at 0, from the start.
REFUSALS = (
    # The WebSocket handshake (HTTP 403, 421, 429, 503; 400 from Autobahn).
    "origin",
    "banned",
    "per_address_cap",
    "connect_rate",
    "total_cap",
    "misdirected_host",
    "starting",
    "bad_handshake",
    # Any HTTP request, the upgrade included.
    "method_not_allowed",
    "request_body",
    "headers_too_large",
    "bad_request",
    "upgrade_required",
    # Deadlines and caps on TCP connections.
    "no_request",
    "handshake_timeout",
    "response_timeout",
    "sockets_per_address",
    "sockets_total",
    # An open WebSocket closed by the server.
    "too_large",
    "invalid_utf8",
    "protocol_error",
    "binary_frame",
    "too_many_fragments",
    "control_flood",
    "flood",
    "slow_consumer",
    "close_not_taken",
    # A command refused with an ``error`` event: its code.
    wire.RATE_LIMITED,
    wire.TOO_LONG,
    wire.BAD_JSON,
    wire.BAD_MESSAGE,
    wire.NOT_PAIRED,
    wire.NOT_VIDEO,
    wire.PARTNER_AWAY,
)

#: The reasons ``RouletteProtocol._deny_handshake`` gives, and their labels.
_HANDSHAKE_REFUSALS = {
    "origin not allowed": "origin",
    "banned": "banned",
    "too many connections from this address (concurrent)": "per_address_cap",
    "too many connections from this address (pool)": "per_address_cap",
    "too many connections from this address (rate)": "connect_rate",
    "server full": "total_cap",
    "Misdirected Request": "misdirected_host",
    "starting up": "starting",
}

#: The HTTP refusals of the site (``website._write_refusal``), by status.
_HTTP_REFUSALS = {
    400: "bad_request",
    405: "method_not_allowed",
    413: "request_body",
    421: "misdirected_host",
    426: "upgrade_required",
    431: "headers_too_large",
}

#: What a connection's deadline ran out on (``website.Deadline``).
_DEADLINES = {
    "no request": "no_request",
    "no complete request": "handshake_timeout",
    "response not taken": "response_timeout",
}

#: The reasons of the server's own closes that refuse what a client did.
_CLOSES = {
    "too many refused frames": "flood",
    "message in too many fragments": "too_many_fragments",
    "too many pings": "control_flood",
    "binary frames are not supported": "binary_frame",
}

#: Autobahn's own failures of an open connection, by the close code it sent.
_FAILURES = {1009: "too_large", 1007: "invalid_utf8", 1002: "protocol_error"}

#: A refusal whose cause has no label of its own (yet).
OTHER = "other"

#: Seconds between two runs of the event-loop lag timer.
LAG_INTERVAL = 0.5

WAIT_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)
CHAT_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

_NO_ONE = Stats(0, 0, 0)


@dataclass(frozen=True)
class Figures:
    """What the collector reports, copied in the reactor's thread."""

    own: Stats = _NO_ONE
    #: The pool's counts, in a pool (``--redis``).
    pool: Stats | None = None
    nodes: int = 0
    matching_paused: bool = False
    pairs: int = 0
    relayed: int = 0
    ended: dict[str, int] = field(default_factory=dict)
    refusals: dict[str, int] = field(default_factory=dict)
    #: Sessions away now (their connection dropped, within the grace), and
    #: sessions picked up again by a connection since the start.
    away: int = 0
    resumed: int = 0


class Metrics:
    """The figures of one process.

    :param lobby: whose counts the gauges report (none: zeros).
    :param clock: the reactor's ``seconds``, for the times it observes.
    """

    def __init__(
        self, lobby: Lobby | None = None, clock: Callable[[], float] | None = None
    ) -> None:
        self._lobby = lobby
        if clock is None:
            from twisted.internet import reactor

            clock = reactor.seconds
        self._clock: Callable[[], float] = clock
        matchmaker = lobby.matchmaker if lobby is not None else None
        #: The node's id in a pool (the ``node`` label), else ``None``.
        self.node = matchmaker.node if isinstance(matchmaker, RedisMatchmaker) else None
        #: Chat messages relayed (incremented by the connection that sent one).
        self.relayed = 0
        #: Chats begun, counted at the side told to make the offer (one a chat).
        self.pairs = 0
        self.ended = dict.fromkeys(CHAT_ENDINGS, 0)
        self.refusals = dict.fromkeys(REFUSALS, 0)
        self.wait = Histogram(
            "roulette_wait_seconds",
            "Seconds from a client's joining the queue to its being paired.",
            buckets=WAIT_BUCKETS,
            registry=None,
        )
        self.chat = Histogram(
            "roulette_chat_seconds",
            "Seconds a chat lasted, observed at the side that ended it.",
            buckets=CHAT_BUCKETS,
            registry=None,
        )
        self.lag = Histogram(
            "roulette_event_loop_lag_seconds",
            f"Seconds late the reactor ran a timer due every {LAG_INTERVAL} s.",
            buckets=LAG_BUCKETS,
            registry=None,
        )
        self._figures = Figures()
        self._registry: CollectorRegistry | None = None

    # -- what the connections call ---------------------------------------------

    def paired(self, offer: bool, waiting_since: float | None) -> float:
        """A client was paired (``offer``: the side that counts the chat),
        after waiting since ``waiting_since``; the time now."""
        now = self._clock()
        if offer:
            self.pairs += 1
        if waiting_since is not None:
            self.wait.observe(max(0.0, now - waiting_since))
        return now

    def chat_ended(self, how: str, paired_at: float) -> None:
        """The client ended (``how``: one of :data:`CHAT_ENDINGS`) the chat
        it was paired in at ``paired_at``."""
        self.ended[how] += 1
        self.chat.observe(max(0.0, self._clock() - paired_at))

    def refused(self, reason: str) -> None:
        """Count a refusal (``reason``: one of :data:`REFUSALS`, or an error
        code of :mod:`roulette.wire`)."""
        self.refusals[reason] = self.refusals.get(reason, 0) + 1

    def refused_handshake(self, reason: str) -> None:
        """Count an upgrade refused with ``reason`` (the HTTP status line's)."""
        self.refused(_HANDSHAKE_REFUSALS.get(reason, OTHER))

    def refused_http(self, code: int) -> None:
        """Count a request the site refused with HTTP ``code``."""
        self.refused(_HTTP_REFUSALS.get(code, OTHER))

    def deadline(self, why: str) -> None:
        """Count a connection dropped when its deadline (``why``) ran out."""
        self.refused(_DEADLINES.get(why, OTHER))

    def closing(self, reason: str) -> None:
        """The server closes an open WebSocket with ``reason``: count it if
        it refuses something the client did (not a ban or a shutdown)."""
        label = _CLOSES.get(reason)
        if label is not None:
            self.refused(label)

    def closed(self, failed_by_server: bool, code: int | None) -> None:
        """An open WebSocket closed; count it if Autobahn failed it for what
        the client sent (with close ``code``: too large, bad UTF-8, ...)."""
        if failed_by_server and code in _FAILURES:
            self.refused(_FAILURES[code])

    # -- what /metrics reads ---------------------------------------------------

    def refresh(self) -> None:
        """Copy the figures the collector reports (in the reactor's thread)."""
        self._figures = self._read()

    def figures(self) -> Figures:
        """The figures now in the reactor's thread; elsewhere, as copied at
        the last :meth:`refresh`."""
        if threadable.ioThread is None or threadable.isInIOThread():  # no reactor, or its thread
            return self._read()
        return self._figures

    def _read(self) -> Figures:
        own, pool, nodes, paused = _NO_ONE, None, 0, False
        away = resumed = 0
        lobby = self._lobby
        if lobby is not None:
            away, resumed = lobby.sessions_away, lobby.resumed
            matchmaker = lobby.matchmaker
            if isinstance(matchmaker, RedisMatchmaker):
                own, pool, nodes = matchmaker.local_stats(), matchmaker.stats(), matchmaker.nodes
                paused = lobby.matching_paused
            else:
                own = matchmaker.stats()
        return Figures(
            own,
            pool,
            nodes,
            paused,
            self.pairs,
            self.relayed,
            dict(self.ended),
            dict(self.refusals),
            away,
            resumed,
        )

    @property
    def registry(self) -> CollectorRegistry:
        """The registry ``/metrics`` serves (made when first asked for):
        these figures, and the process's own (CPU, memory, descriptors,
        garbage collection), with a ``node`` label in a pool."""
        if self._registry is None:
            own = CollectorRegistry()
            own.register(_Collector(self))
            for histogram in (self.wait, self.chat, self.lag):
                own.register(histogram)
            ProcessCollector(registry=own)
            PlatformCollector(registry=own)
            GCCollector(registry=own)
            if self.node is None:
                self._registry = own
            else:
                self._registry = CollectorRegistry()
                self._registry.register(_Labelled(own, {"node": self.node}))
        return self._registry


class _Collector:
    """The counters and gauges of a :class:`Metrics`, as families."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        f = self._metrics.figures()
        yield GaugeMetricFamily(
            "roulette_connections", "WebSocket connections open (clients online).", f.own.online
        )
        yield GaugeMetricFamily("roulette_waiting", "Clients waiting to be paired.", f.own.waiting)
        yield GaugeMetricFamily("roulette_chatting", "Clients in a chat.", f.own.chatting)
        if f.pool is not None:
            yield GaugeMetricFamily(
                "roulette_pool_connections",
                "WebSocket connections open in the whole pool, as of the last lease renewal.",
                f.pool.online,
            )
            yield GaugeMetricFamily(
                "roulette_pool_waiting",
                "Clients waiting in the whole pool, as of the last lease renewal.",
                f.pool.waiting,
            )
            yield GaugeMetricFamily(
                "roulette_pool_chatting",
                "Clients in a chat in the whole pool, as of the last lease renewal.",
                f.pool.chatting,
            )
            yield GaugeMetricFamily(
                "roulette_pool_nodes", "Nodes (processes) in the pool.", f.nodes
            )
            yield GaugeMetricFamily(
                "roulette_matching_paused",
                "1 while the node is cut off from the pool's Redis (no pairing).",
                int(f.matching_paused),
            )
        yield CounterMetricFamily("roulette_pairs", "Chats begun (clients paired).", f.pairs)
        yield CounterMetricFamily(
            "roulette_messages_relayed", "Chat messages relayed to a partner.", f.relayed
        )
        ended = CounterMetricFamily(
            "roulette_chats_ended",
            "Chats ended, by how (counted at the side that ended it).",
            labels=("how",),
        )
        for how, count in f.ended.items():
            ended.add_metric((how,), count)
        yield ended
        refusals = CounterMetricFamily(
            "roulette_refusals",
            "Connections, requests, frames and commands refused, by reason.",
            labels=("reason",),
        )
        for reason, count in f.refusals.items():
            refusals.add_metric((reason,), count)
        yield refusals
        yield GaugeMetricFamily(
            "roulette_sessions_away",
            "Sessions whose connection dropped, waiting out the resume grace.",
            f.away,
        )
        yield CounterMetricFamily(
            "roulette_sessions_resumed",
            "Sessions picked up by a new connection after a drop (their chat or wait went on).",
            f.resumed,
        )


class _Labelled:
    """Every metric of a registry with more labels (a pool node's ``node``)."""

    def __init__(self, inner: CollectorRegistry, labels: dict[str, str]) -> None:
        self._inner = inner
        self._labels = labels

    def collect(self) -> Iterable[Metric]:
        for family in self._inner.collect():
            labelled = Metric(family.name, family.documentation, family.type, family.unit)
            labelled.samples = [
                sample._replace(labels={**sample.labels, **self._labels})
                for sample in family.samples
            ]
            yield labelled


class LagMonitor(Service):
    """How late the reactor runs a timer: one is due every ``interval``
    seconds, and how long after its time it ran is observed."""

    def __init__(
        self, clock: IReactorTime, observe: Callable[[float], None], interval: float = LAG_INTERVAL
    ) -> None:
        self._clock = clock
        self._observe = observe
        self.interval = interval
        self._call: IDelayedCall | None = None
        self._due = 0.0

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        self._schedule()

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self) -> None:
        self._due = self._clock.seconds() + self.interval
        self._call = self._clock.callLater(self.interval, self._tick)

    def _tick(self) -> None:
        self._call = None
        self._observe(max(0.0, self._clock.seconds() - self._due))
        self._schedule()


class _Scrape(resource.Resource):
    """``/metrics``: the figures copied in the reactor's thread, then
    rendered by ``prometheus_client``'s resource (in the thread pool)."""

    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        self._metrics = metrics
        # A lambda in prometheus_client: untyped.
        self._render: resource.IResource = MetricsResource(metrics.registry)  # type: ignore[no-untyped-call]

    def render(self, request: IRequest) -> bytes | int:
        self._metrics.refresh()
        rendered: bytes | int = self._render.render(request)
        return rendered


class _MetricsSite(server.Site):
    """The metrics port's site: scrapes are not written to the log."""

    def log(self, request: object) -> None:
        pass


def metrics_site(metrics: Metrics) -> server.Site:
    """A site serving ``/metrics`` (and nothing else: 404)."""
    root = resource.Resource()
    root.putChild(b"metrics", _Scrape(metrics))
    site = _MetricsSite(root, timeout=60)  # type: ignore[no-untyped-call]  # unannotated in Twisted
    return site


def serve_metrics(endpoint: str, metrics: Metrics, reactor: IReactorCore) -> IService:
    """The service of ``--metrics``: ``/metrics`` served on ``endpoint``,
    and the event-loop lag timer."""
    service = MultiService()
    LagMonitor(cast(IReactorTime, reactor), metrics.lag.observe).setServiceParent(service)  # type: ignore[no-untyped-call]  # unannotated in Twisted
    listener = strports.service(endpoint, metrics_site(metrics), reactor=reactor)
    listener.setServiceParent(service)
    return service


def check_endpoint(options: dict[str, object]) -> None:
    """``--metrics``, checked beside the options it could clash with;
    :class:`~twisted.python.usage.UsageError` says what is wrong."""
    endpoint = options["metrics"]
    assert isinstance(endpoint, str)
    if endpoint == options["port"]:
        raise usage.UsageError("--metrics must not be the public --port")
    workers = options["workers"]
    if isinstance(workers, int) and workers > 1:
        raise usage.UsageError(
            "--metrics serves one process's figures: with --workers each worker would need a "
            "port of its own; start the processes yourself (each with --reuse-port and its own "
            "--metrics) instead"
        )
    try:
        endpoints.serverFromString(object(), endpoint)
    except Exception as error:
        raise usage.UsageError(f"--metrics {endpoint}: {error or type(error).__name__}") from None


def of_site(site: object) -> Metrics:
    """The metrics of a site (``RouletteSite.metrics``), or, for another
    site, figures that nobody reads."""
    metrics = getattr(site, "metrics", None)
    return metrics if isinstance(metrics, Metrics) else _UNREAD


_UNREAD = Metrics(clock=lambda: 0.0)
