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
from http import HTTPStatus
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime, ISSLTransport
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from roulette import framing, wire
from roulette.abuse import (
    AddressHasher,
    AddressKeys,
    AddressLimits,
    OriginPolicy,
    PublicHosts,
    Reports,
    TokenBucket,
    WindowCounter,
    client_host,
    request_scheme,
)
from roulette.core import Matchmaker, Stats
from roulette.logs import Tally, excerpt
from roulette.transport import has_unsent, peer_host

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

#: Seconds a connection being closed may take to read what it was sent last.
CLOSE_LINGER = 5.0
#: Bytes Autobahn reads at a time (see ``RouletteProtocol._feed``).
_FEED_SLICE = 4096

_CONNECTING = WebSocketProtocol.STATE_CONNECTING
_OPEN = WebSocketProtocol.STATE_OPEN
_CLOSING = WebSocketProtocol.STATE_CLOSING
_CLOSED = WebSocketProtocol.STATE_CLOSED
_CONNECTION_DONE = Failure(ConnectionDone())


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
    #: Bytes a connection may have waiting to be sent before it is dropped;
    #: everything written counts (events, pongs, close frames).
    send_buffer_limit: int = 256 * 1024
    #: Pings and pongs from a client: a second, and at once.  A browser sends
    #: none (it answers the server's pings only); past the burst, 1008.
    control_rate: float = 1.0
    control_burst: float = 10.0
    #: Frames one fragmented message may come in; past it, 1008.
    max_fragments: int = 64


@dataclass
class Gate:
    """Who may open a WebSocket: origins, per-address caps and bans."""

    origins: OriginPolicy = field(default_factory=OriginPolicy)
    addresses: AddressLimits = field(default_factory=lambda: AddressLimits(8, 60, 0))
    reports: Reports | None = None
    hasher: AddressHasher = field(default_factory=AddressHasher)
    #: How many ``X-Forwarded-For`` hops (proxies in front of us) to believe.
    trust_proxy: int = 0
    #: The names the server answers for (none: any ``Host``).
    hosts: PublicHosts = field(default_factory=PublicHosts)


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

    def report(self, client: RouletteProtocol) -> bool:
        """End the client's chat for good; ban the partner's address if enough
        people reported it (see :class:`~roulette.abuse.Reports`).  ``False``
        when the client had no partner."""
        chat = self.matchmaker.report(client)
        self._reschedule()
        if chat is None:
            return False
        reports = self.gate.reports
        partner = chat.partner
        if reports is not None and isinstance(partner, RouletteProtocol):
            ban = reports.report(
                client.keys, partner.keys, seconds=chat.seconds, sent=chat.partner_sent
            )
            if ban is not None:
                self.ban(ban.scope, ban.until)
        return True

    def ban(self, scope: str, until: float) -> None:
        """Close every connection from a banned address or network (``scope``
        is one of :attr:`RouletteProtocol.keys`' scopes)."""
        banned = [c for c in self._clients if scope in c.keys.scopes]
        log.warn(
            "banned {peers} until {until:.0f} after reports",
            peers=[c.address for c in banned],
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

    def banned_until(self, *scopes: str) -> float | None:
        """When the latest ban covering any of the hashed ``scopes`` ends."""
        reports = self.gate.reports
        return None if reports is None else reports.banned_until(*scopes)

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

    #: The client's address (after trusted proxies), its keyed hash, and
    #: the hashed keys of its network and of what a ban of it may cover.
    address = "?"
    address_hash = ""
    _keys: AddressKeys | None = None
    _admitted = False
    _joined = False
    _online_count = -1
    _online_at = float("-inf")
    _send_buffer: _SendBuffer | None = None
    _refusal: str | None = None
    #: Pings and pongs: a budget made at the first one (a browser sends a
    #: pong every ``--auto-ping-interval``, a program may send none).
    _control_budget: TokenBucket | None = None
    _linger: IDelayedCall | None = None
    _fragments = 0
    #: Bytes still read, once closing, in search of the client's close frame:
    #: room for the rest of a message of the largest size, and the close.
    _closing_allowance = 2 * wire.MAX_PAYLOAD

    @property
    def keys(self) -> AddressKeys:
        """The hashed keys of the client's address, its network and what a
        ban of it may cover (made when first needed: for a report or a ban)."""
        keys = self._keys
        if keys is None:
            keys = self._keys = self.factory.lobby.gate.hasher.keys(self.address)
        return keys

    # -- handshake -----------------------------------------------------------

    def onConnect(self, request: ConnectionRequest) -> None:
        """Admit or refuse the upgrade, before it happens (HTTP 403/429/503)."""
        lobby = self.factory.lobby
        gate = lobby.gate
        forwarded = request.headers.get("x-forwarded-for")
        self.address = client_host(
            peer_host(self.transport), [forwarded] if forwarded else [], gate.trust_proxy
        )
        keys = gate.hasher.keys(self.address)
        self.address_hash = keys.address
        host = request.headers.get("host")
        proto = request.headers.get("x-forwarded-proto")
        scheme = request_scheme(
            ISSLTransport.providedBy(self.transport), [proto] if proto else [], gate.trust_proxy
        )
        if not gate.hosts.allows(host, scheme):
            self._refuse(421, "Misdirected Request", host=host)
        if not gate.origins.allows(request.origin, host, scheme):
            self._refuse(403, "origin not allowed", origin=request.origin)
        until = lobby.banned_until(*keys.scopes)
        if until is not None:
            self._refuse(403, "banned", until=until)
        refused = gate.addresses.admit(self.address_hash, self.factory.reactor.seconds())
        if refused == "total":
            self._refuse(503, "server full")
        if refused is not None:
            self._refuse(429, f"too many connections from this address ({refused})")
        self._admitted = True

    def _refuse(self, code: int, reason: str, **details: object) -> None:
        self.factory.tally.note(
            f"refused {code} {reason}",
            "refused handshake from {address}: {code} {reason} {details}",
            address=self.address,
            code=code,
            reason=reason,
            details={name: excerpt(value) for name, value in details.items()},
        )
        self._refusal = reason
        raise ConnectionDeny(code, reason)

    def failHandshake(self, reason: str, code: int = 400, responseHeaders: Any = None) -> None:
        """Refuse the upgrade with ``code`` and close.

        Autobahn's own puts its reason, often with the offending header in
        it, into the status line and the log; here the status line carries
        our own refusal's reason or the code's standard phrase, and the log
        an escaped excerpt.
        """
        self.wasNotCleanReason = excerpt(reason)
        phrase, self._refusal = self._refusal, None
        if phrase is None:  # Autobahn's own refusal: its reason is not repeated
            self.factory.tally.note(
                "failed handshake",
                "failed WebSocket handshake from {address}: {code} {reason}",
                address=self.address if self.address != "?" else peer_host(self.transport),
                code=code,
                reason=excerpt(reason),
            )
            try:
                phrase = HTTPStatus(code).phrase
            except ValueError:
                phrase = "Bad Request"
        response = f"HTTP/1.1 {code} {phrase}\r\n"
        for name, value in responseHeaders or ():
            response += f"{name}: {value}\r\n"
        response += "Content-Length: 0\r\nConnection: close\r\n\r\n"
        self.sendData(response.encode("latin-1", "replace"))
        self.dropConnection(abort=False)

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
            self._feed(data)
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
            self._feed(data[pos:] if pos else data)

    def _feed(self, data: bytes) -> None:
        """Hand ``data`` to Autobahn's reading, a slice at a time.

        Autobahn cuts each frame off the front of its buffer, copying the
        rest: one read of many tiny frames would cost the square of its
        length.  In slices, the copying stays proportional to the read.
        Once the connection is closing, only the client's close frame is
        still of use: a little is read to find it, and the rest is dropped
        (the close handshake's timeout ends the connection).
        """
        start = 0
        end = len(data)
        step = _FEED_SLICE
        while start < end:
            state = self.state
            if state == _CONNECTING:
                super()._dataReceived(data[start:] if start else data)
                return
            if state != _OPEN:
                if state == _CLOSING and self._closing_allowance > 0:
                    chunk = data[start : start + self._closing_allowance]
                    self._closing_allowance -= len(chunk)
                    super()._dataReceived(chunk)
                return
            if start == 0 and end <= step:
                super()._dataReceived(data)
                return
            super()._dataReceived(data[start : start + step])
            start += step

    def onMessageBegin(self, isBinary: bool) -> None:
        self._fragments = 0
        super().onMessageBegin(isBinary)

    def onMessageFrameBegin(self, length: int) -> None:
        self._fragments += 1
        if self._fragments > self.factory.limits.max_fragments:
            self._close(CLOSE_POLICY_VIOLATION, "message in too many fragments")
        super().onMessageFrameBegin(length)

    def processControlFrame(self) -> bool:
        """Pings and pongs from the client, within their budget.

        Nothing is answered or dispatched once the connection is closing.
        An unsolicited pong (RFC 6455 allows it, as a heartbeat) is taken
        quietly, where Autobahn would log a warning for each.
        """
        opcode = self.current_frame.opcode
        if opcode == 9 or opcode == 10:
            if self.state != _OPEN:
                self.control_frame_data = None
                return True
            now = self.factory.reactor.seconds()
            budget = self._control_budget
            if budget is None:
                limits = self.factory.limits
                budget = self._control_budget = TokenBucket(
                    limits.control_rate, limits.control_burst, now
                )
            if not budget.take(now):
                self.control_frame_data = None
                self.factory.tally.note(
                    "control flood",
                    "closing {address}: too many pings or pongs",
                    address=self.address,
                )
                self._close(CLOSE_POLICY_VIOLATION, "too many pings")
                return True
            if opcode == 10:
                pending = self.autoPingPending
                payload = b"".join(self.control_frame_data)
                if pending is None or payload != pending:
                    self.control_frame_data = None
                    return True
        return super().processControlFrame()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.state != _OPEN:
            return  # the server is closing this connection: nothing more is done
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
                    if not lobby.report(self):
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
        if buffer is not None and buffer.paused and not self._may_queue(len(frame) + 4):
            return
        # What sendMessage() would write for an uncompressed, unfragmented
        # text message, without its per-call checks and bookkeeping.
        self.transport.write(framing.text_frame(frame))

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        # Everything Autobahn writes (the handshake, pongs, close frames)
        # counts toward the send buffer limit, as events do.
        buffer = self._send_buffer
        if buffer is not None and buffer.paused and not self._may_queue(len(data)):
            return
        super().sendData(data, sync, chopsize)

    def _may_queue(self, size: int) -> bool:
        """Count ``size`` more bytes queued while the transport is full;
        whether they stay under the limit (if not, the client is dropped)."""
        buffer = self._send_buffer
        assert buffer is not None
        buffer.queued_since_pause += size
        if buffer.estimate() <= self.factory.limits.send_buffer_limit:
            return True
        if self.state != _CLOSED:
            self.factory.tally.note(
                "slow consumer",
                "dropping {address}: it does not read what it is sent",
                address=self.address,
            )
            # It is not reading: a close frame would never reach it.
            self.wasNotCleanReason = "not reading fast enough"
            self.dropConnection(abort=True)
        return False

    def _closeConnection(self, abort: bool = False) -> None:
        super()._closeConnection(abort)
        if not abort and self._linger is None and has_unsent(self.transport):
            # A clean close waits for what is buffered to be sent; a client
            # that does not read it would hold the connection for ever.
            self._linger = self.factory.reactor.callLater(CLOSE_LINGER, self._abort_lingering)

    def _abort_lingering(self) -> None:
        self._linger = None
        self.factory.tally.note(
            "close not taken",
            "dropping {address}: it did not take its close within {seconds} s",
            address=self.address,
            seconds=CLOSE_LINGER,
        )
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        linger = self._linger
        if linger is not None:
            self._linger = None
            if linger.active():
                linger.cancel()
        super().connectionLost(reason)

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
        #: Repeated warnings (floods, deadlines, slow consumers) at most once a minute.
        self.tally = Tally(self.reactor)
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
