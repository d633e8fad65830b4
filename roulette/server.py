"""The WebSocket shell around the matchmaker.

:class:`RouletteProtocol` is an adapter: it decodes a frame, validates it
(:mod:`roulette.wire`), dispatches it to the :class:`~roulette.core.Matchmaker`
and encodes what the matchmaker tells it.  :class:`Lobby` puts a matchmaker on
the reactor's clock: it wakes the matchmaker when a cooldown runs out and
tells every client how many people are online.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from roulette import framing, wire
from roulette.abuse import (
    AddressHasher,
    AddressLimits,
    OriginPolicy,
    Reports,
    TokenBucket,
    WindowCounter,
    address_key,
    client_host,
)
from roulette.core import Matchmaker, Stats

#: How often, at most, a client hears the ``online`` count (seconds).
ONLINE_INTERVAL = 1.0

#: Auto-ping: a client that answers no ping within the timeout is dropped.
AUTO_PING_INTERVAL = 20.0
AUTO_PING_TIMEOUT = 10.0

CLOSE_UNSUPPORTED_DATA = WebSocketProtocol.CLOSE_STATUS_CODE_UNSUPPORTED_DATA
CLOSE_POLICY_VIOLATION = WebSocketProtocol.CLOSE_STATUS_CODE_POLICY_VIOLATION
CLOSE_GOING_AWAY = WebSocketProtocol.CLOSE_STATUS_CODE_GOING_AWAY

#: How often the abuse controls forget what has expired (seconds).
HOUSEKEEPING_INTERVAL = 60.0


@dataclass(frozen=True)
class Limits:
    """Per-connection budgets; see ``docs/security.md``."""

    #: Chat messages: tokens a second and the most saved up.
    message_rate: float = 5.0
    message_burst: float = 10.0
    #: Typing notices (the page sends at most one every two seconds).
    typing_rate: float = 1.0
    typing_burst: float = 5.0
    #: next, stop and report: each of them churns the queue.
    queue_rate: float = 1.0
    queue_burst: float = 5.0
    #: This many refused frames within the window close the connection (1008).
    flood_refusals: int = 50
    flood_window: float = 10.0
    #: Bytes a connection may have waiting to be sent before it is dropped.
    send_buffer_limit: int = 256 * 1024


@dataclass
class Gate:
    """Who may open a WebSocket: origins, per-address caps and bans."""

    origins: OriginPolicy = field(default_factory=OriginPolicy)
    addresses: AddressLimits = field(default_factory=lambda: AddressLimits(8, 60, 0))
    reports: Reports | None = None
    hasher: AddressHasher = field(default_factory=AddressHasher)
    #: How many ``X-Forwarded-For`` hops (proxies in front of us) to believe.
    trust_proxy: int = 0


# Module-level: Autobahn's protocol keeps its own (level-filtered) ``self.log``.
log = Logger()


class Lobby(Service):
    """The process's matchmaker, driven by the reactor's clock.

    The protocol calls it, never the matchmaker itself.  It forwards each call
    to the :class:`~roulette.core.Matchmaker`; after those that change who
    waits it makes sure :meth:`~roulette.core.Matchmaker.advance` runs at
    the matchmaker's next deadline.  While running it also sends each client
    the ``online`` count when it has changed, at most once per
    ``ONLINE_INTERVAL``.
    """

    def __init__(
        self,
        matchmaker: Matchmaker,
        reactor: IReactorTime,
        gate: Gate | None = None,
        shutdown_grace: float = 5.0,
    ) -> None:
        self.matchmaker = matchmaker
        self._reactor = reactor
        self.gate = gate if gate is not None else Gate(reports=Reports(reactor.seconds))
        self.shutdown_grace = shutdown_grace
        self._wakeup: IDelayedCall | None = None
        self._clients: dict[RouletteProtocol, None] = {}
        self._online_ticker = LoopingCall(self._broadcast_online)
        self._online_ticker.clock = reactor
        self._housekeeping = LoopingCall(self._prune)
        self._housekeeping.clock = reactor
        self._online_sent = -1
        self._drained: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        self._online_ticker.start(ONLINE_INTERVAL, now=False)
        self._housekeeping.start(HOUSEKEEPING_INTERVAL, now=False)

    def stopService(self) -> Deferred[None]:
        """Tell every client the server is going away (close 1001), and wait
        up to ``shutdown_grace`` seconds for them to go before dropping the
        rest."""
        super().stopService()
        for ticker in (self._online_ticker, self._housekeeping):
            if ticker.running:
                ticker.stop()
        if self._wakeup is not None and self._wakeup.active():
            self._wakeup.cancel()
        self._wakeup = None
        if not self._clients:
            return succeed(None)
        log.info("shutting down: closing {n} connections", n=len(self._clients))
        self._drained = drained = Deferred()
        for client in list(self._clients):
            client.going_away()
        timer = self._reactor.callLater(self.shutdown_grace, self._drop_the_rest)
        drained.addBoth(lambda result: timer.cancel() if timer.active() else None)
        return drained

    def _drop_the_rest(self) -> None:
        log.info("shutdown grace over: dropping {n} connections", n=len(self._clients))
        for client in list(self._clients):
            client.dropConnection(abort=True)
        self._clients.clear()
        self._fire_drained()

    def _fire_drained(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None:
            drained.callback(None)

    def _prune(self) -> None:
        now = self._reactor.seconds()
        self.gate.addresses.prune(now)
        if self.gate.reports is not None:
            self.gate.reports.prune()

    # -- what the protocol calls -------------------------------------------

    def join(self, client: RouletteProtocol, identity: Hashable | None = None) -> None:
        """A client finished its handshake: tell it the count, then queue it."""
        self._clients[client] = None
        # The count it is told includes itself; it must arrive before "waiting".
        client.send_online(self.matchmaker.stats().online + 1, self._reactor.seconds())
        self._online_sent = -1  # the newcomer may have heard another count
        self.matchmaker.connect(client, identity)
        self._reschedule()

    def leave(self, client: RouletteProtocol) -> None:
        if client in self._clients:
            del self._clients[client]
            self.matchmaker.disconnect(client)
            self._reschedule()
        if self._drained is not None and not self._clients:
            self._fire_drained()

    def report(self, client: RouletteProtocol, reporter: str) -> bool:
        """End the client's chat for good; ban the partner's address if enough
        people reported it.  ``False`` when the client had no partner."""
        reported = self.matchmaker.report(client)
        self._reschedule()
        if reported is None:
            return False
        reports = self.gate.reports
        until = None if reports is None else reports.report(reporter, str(reported))
        if until is not None:
            self.ban(str(reported), until)
        return True

    def ban(self, address: str, until: float) -> None:
        """Close every connection from a banned address."""
        banned = [c for c in self._clients if c.address_hash == address]
        log.warn(
            "banned {peers} until {until:.0f} after reports",
            peers=[c.peer for c in banned],
            until=until,
        )
        for client in banned:
            client.ban(until)

    def next(self, client: RouletteProtocol) -> None:
        self.matchmaker.next(client)
        self._reschedule()

    def stop(self, client: RouletteProtocol) -> None:
        self.matchmaker.stop(client)
        self._reschedule()

    def relay_message(self, client: RouletteProtocol, text: str) -> bool:
        return self.matchmaker.relay_message(client, text)

    def banned_until(self, address_hash: str) -> float | None:
        reports = self.gate.reports
        return None if reports is None else reports.banned_until(address_hash)

    def relay_typing(self, client: RouletteProtocol, active: bool) -> bool:
        return self.matchmaker.relay_typing(client, active)

    def stats(self) -> Stats:
        return self.matchmaker.stats()

    # -- timers --------------------------------------------------------------

    def _reschedule(self) -> None:
        deadline = self.matchmaker.next_deadline()
        wakeup = self._wakeup
        if wakeup is not None and wakeup.active():
            if deadline is not None and wakeup.getTime() == deadline:
                return
            wakeup.cancel()
        self._wakeup = None
        if deadline is not None:
            delay = max(0.0, deadline - self._reactor.seconds())
            self._wakeup = self._reactor.callLater(delay, self._wake)

    def _wake(self) -> None:
        self._wakeup = None
        self.matchmaker.advance()
        self._reschedule()

    def _broadcast_online(self) -> None:
        count = self.matchmaker.stats().online
        if count == self._online_sent:
            return
        now = self._reactor.seconds()
        current = True
        for client in self._clients:
            if not client.send_online(count, now):
                current = False
        # Clients told less than an interval ago are told at the next tick.
        self._online_sent = count if current else -1


@implementer(IPushProducer)
class _SendBuffer:
    """Watches a connection's outgoing buffer through the transport's
    producer callbacks: the transport pauses us when its buffer passes its
    ``bufferSize`` and resumes us only once it has drained completely."""

    def __init__(self, buffer_size: int) -> None:
        self.buffer_size = buffer_size
        self.paused = False
        self.queued_since_pause = 0

    def pauseProducing(self) -> None:
        # The transport repeats this for every write while its buffer is full.
        if not self.paused:
            self.paused = True
            self.queued_since_pause = 0

    def resumeProducing(self) -> None:
        self.paused = False
        self.queued_since_pause = 0

    def stopProducing(self) -> None:
        self.paused = False

    def estimate(self) -> int:
        """An upper bound of the bytes waiting to be sent (0 when not paused)."""
        return self.buffer_size + self.queued_since_pause if self.paused else 0


class RouletteProtocol(WebSocketServerProtocol):
    """One client connection: decode, validate, dispatch, encode.

    It is the :class:`~roulette.core.Peer` the matchmaker talks to.
    """

    factory: RouletteFactory

    #: The client's address (after trusted proxies) and its keyed hash.
    address = "?"
    address_hash = ""
    _admitted = False
    _joined = False
    _online_count = -1
    _online_at = float("-inf")
    _send_buffer: _SendBuffer | None = None

    # -- handshake -----------------------------------------------------------

    def onConnect(self, request: ConnectionRequest) -> None:
        """Admit or refuse the upgrade, before it happens (HTTP 403/429/503)."""
        lobby = self.factory.lobby
        gate = lobby.gate
        peer = self.transport.getPeer()
        peer_host = str(getattr(peer, "host", None) or getattr(peer, "name", None) or peer)
        forwarded = request.headers.get("x-forwarded-for")
        self.address = client_host(peer_host, [forwarded] if forwarded else [], gate.trust_proxy)
        self.address_hash = gate.hasher(address_key(self.address))
        if not gate.origins.allows(request.origin, request.headers.get("host")):
            self._refuse(403, "origin not allowed", origin=request.origin)
        until = lobby.banned_until(self.address_hash)
        if until is not None:
            self._refuse(403, "banned", until=until)
        refused = gate.addresses.admit(self.address_hash, self.factory.reactor.seconds())
        if refused == "total":
            self._refuse(503, "server full")
        if refused is not None:
            self._refuse(429, f"too many connections from this address ({refused})")
        self._admitted = True

    def _refuse(self, code: int, reason: str, **details: object) -> None:
        log.info(
            "refused handshake from {address}: {code} {reason} {details}",
            address=self.address,
            code=code,
            reason=reason,
            details=details,
        )
        raise ConnectionDeny(code, reason)

    def onOpen(self) -> None:
        self._joined = True
        limits = self.factory.limits
        now = self.factory.reactor.seconds()
        self._message_budget = TokenBucket(limits.message_rate, limits.message_burst, now)
        self._typing_budget = TokenBucket(limits.typing_rate, limits.typing_burst, now)
        self._queue_budget = TokenBucket(limits.queue_rate, limits.queue_burst, now)
        self._refusals = WindowCounter(limits.flood_window)
        # Behind twisted.web the HTTP channel is still the transport's
        # producer; the connection is ours now.
        self._send_buffer = _SendBuffer(getattr(self.transport, "bufferSize", 65536))
        self.transport.unregisterProducer()
        self.transport.registerProducer(self._send_buffer, True)
        log.info("client {address} connected", address=self.address)
        self.factory.lobby.join(self, self.address_hash)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._admitted:
            self._admitted = False
            self.factory.lobby.gate.addresses.release(self.address_hash)
        if self._joined:
            self._joined = False
            log.info(
                "client {address} disconnected (clean={clean}, code={code})",
                address=self.address,
                clean=wasClean,
                code=code,
            )
            self.factory.lobby.leave(self)

    # -- frames --------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        # Autobahn's own builds a debug log line's arguments for every read.
        self._dataReceived(data)

    def _dataReceived(self, data: bytes) -> None:
        # Whole, small, masked text frames, nearly all a chat ever sees, are
        # read here; whatever else comes (control frames, fragments, a frame
        # split across reads, anything malformed) goes to Autobahn from the
        # first frame not read here on, with its buffer and state untouched.
        if (
            self.state != WebSocketProtocol.STATE_OPEN
            or self.data
            or self.current_frame is not None
            or self.inside_message
            or self.logOctets
        ):
            super()._dataReceived(data)
            return
        pos = 0
        limit = self.maxMessagePayloadSize
        while True:
            frame = framing.next_text_frame(data, pos, limit)
            if frame is None:
                break
            payload, end = frame
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError:
                break  # Autobahn closes with 1007
            pos = end
            # As Autobahn does for every data frame: traffic answers a ping.
            if self.autoPingTimeoutCall and self.autoPingRestartOnAnyTraffic:
                self._cancelAutoPingTimeoutCall()
            self._command(text)
            if self.state != WebSocketProtocol.STATE_OPEN:
                break
        if pos < len(data):
            super()._dataReceived(data[pos:] if pos else data)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            self._close(CLOSE_UNSUPPORTED_DATA, "binary frames are not supported")
            return
        self._command(payload)

    def _command(self, payload: bytes | str) -> None:
        lobby = self.factory.lobby
        now = self.factory.reactor.seconds()
        try:
            command = wire.parse_command(payload, self.factory.max_message_length)
            match command:
                case wire.Message(text):
                    if not self._message_budget.take(now):
                        raise _rate_limited()
                    if not lobby.relay_message(self, text):
                        raise wire.CommandError(
                            wire.NOT_PAIRED, "You have no partner to send a message to."
                        )
                case wire.Typing(active):
                    if not self._typing_budget.take(now):
                        self._refused(now)  # dropped, as typing without a partner is
                        return
                    lobby.relay_typing(self, active)
                case _ if not self._queue_budget.take(now):
                    raise _rate_limited()
                case wire.Next():
                    lobby.next(self)
                case wire.Stop():
                    lobby.stop(self)
                case wire.Report():
                    if not lobby.report(self, self.address_hash):
                        raise wire.CommandError(wire.NOT_PAIRED, "You have no partner to report.")
                    log.info("client {address} reported its partner", address=self.address)
        except wire.CommandError as error:
            self._send(wire.encode_error(error.code, error.message))
            self._refused(now)

    def _refused(self, now: float) -> None:
        limits = self.factory.limits
        if (
            self._refusals.add(now) >= limits.flood_refusals
            and self.state == WebSocketProtocol.STATE_OPEN
        ):
            log.warn("closing {address}: flooding", address=self.address)
            self._close(CLOSE_POLICY_VIOLATION, "too many refused frames")

    def _close(self, code: int, reason: str) -> None:
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8"))

    def _send(self, frame: bytes) -> None:
        # A client whose close handshake has begun is leaving; onClose will
        # tell the matchmaker.  Until then, events for it are dropped.
        if self.state != WebSocketProtocol.STATE_OPEN:
            return
        buffer = self._send_buffer
        if buffer is not None and buffer.paused:
            buffer.queued_since_pause += len(frame) + 4
            if buffer.estimate() > self.factory.limits.send_buffer_limit:
                self._drop_slow_consumer()
                return
        # What sendMessage() would write for an uncompressed, unfragmented
        # text message, without its per-call checks and bookkeeping.
        self.transport.write(framing.text_frame(frame))

    def _drop_slow_consumer(self) -> None:
        log.warn("dropping {address}: it does not read what it is sent", address=self.address)
        # It is not reading, so the close frame is a courtesy; the drop is not.
        self._close(CLOSE_POLICY_VIOLATION, "not reading fast enough")
        self.dropConnection(abort=True)

    # -- what the lobby calls --------------------------------------------------

    def ban(self, until: float) -> None:
        self._send(wire.encode_banned(until))
        self._close(CLOSE_POLICY_VIOLATION, "banned")

    def going_away(self) -> None:
        # sendClose() refuses 1001; sendCloseFrame() does not.
        self._close(CLOSE_GOING_AWAY, "server shutting down")

    # -- Peer ----------------------------------------------------------------

    def send_waiting(self) -> None:
        self._send(wire.WAITING)

    def send_paired(self) -> None:
        log.info("client {address} paired", address=self.address)
        self._send(wire.PAIRED)

    def send_message(self, text: str) -> None:
        self._send(wire.encode_message(text))

    def send_typing(self, active: bool) -> None:
        self._send(wire.encode_typing(active))

    def send_partner_left(self) -> None:
        self._send(wire.PARTNER_LEFT)

    def send_online(self, count: int, now: float) -> bool:
        """Send the ``online`` count unless sent less than an interval ago.

        Returns whether the client now knows ``count``.
        """
        if count == self._online_count:
            return True
        if now - self._online_at < ONLINE_INTERVAL:
            return False
        self._online_count = count
        self._online_at = now
        self._send(wire.encode_online(count))
        return True


def _rate_limited() -> wire.CommandError:
    # A fresh exception every time: raising one shared instance would chain
    # every traceback onto it and keep all those frames alive.
    return wire.CommandError(
        wire.RATE_LIMITED, "You are sending too fast; this one was not delivered."
    )


class RouletteFactory(WebSocketServerFactory):
    """Builds :class:`RouletteProtocol` connections that share one :class:`Lobby`."""

    protocol = RouletteProtocol

    def __init__(
        self,
        lobby: Lobby,
        max_message_length: int = 2000,
        auto_ping_interval: float = AUTO_PING_INTERVAL,
        auto_ping_timeout: float = AUTO_PING_TIMEOUT,
        limits: Limits | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("server", None)  # no "Server: AutobahnPython/<version>"
        super().__init__(**kwargs)
        self.lobby = lobby
        self.max_message_length = max_message_length
        self.limits = limits if limits is not None else Limits()
        self.setProtocolOptions(
            failByDrop=False,
            webStatus=False,
            maxFramePayloadSize=wire.MAX_PAYLOAD,
            maxMessagePayloadSize=wire.MAX_PAYLOAD,
            autoPingInterval=auto_ping_interval,
            autoPingTimeout=auto_ping_timeout,
            # The site puts its own deadline (--handshake-timeout) on the
            # upgrade; Autobahn's would cut it short at five seconds.
            openHandshakeTimeout=0,
            # No per-message compression: it leaks secrets (CRIME/BREACH) and
            # invites decompression bombs.
            perMessageCompressionAccept=lambda offers: None,
            # Autobahn would refuse "Origin: null" with a bare 400 before our
            # own origin check could answer 403.  setProtocolOptions resets
            # this flag on every call, so it is set here, in the one call.
            allowNullOrigin=True,
        )

    def setProtocolOptions(self, **options: Any) -> None:
        """Autobahn's, then the settings put on a subclass of the protocol.

        Autobahn copies its forty-odd settings from the factory onto every
        connection that lacks them, and pretty-prints them all for a debug
        line, which nearly doubles the cost of accepting a connection.  The
        connections of this factory find them on their class instead.
        """
        super().setProtocolOptions(**options)
        settings = {name: getattr(self, name) for name in RouletteProtocol.CONFIG_ATTRS}
        # A function in a class would be bound as a method.
        settings = {k: staticmethod(v) if callable(v) else v for k, v in settings.items()}
        self.protocol = type(
            RouletteProtocol.__name__, (RouletteProtocol,), {**settings, "CONFIG_ATTRS": ()}
        )
