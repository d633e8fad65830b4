"""The WebSocket protocol and its factory.

:class:`RouletteProtocol` is an adapter: it decodes a frame, validates it
(:mod:`roulette.wire`), charges the command's budget, dispatches it to the
:class:`~roulette.lobby.Lobby` and encodes what comes back.  It is the
:class:`~roulette.lobby.Client` the lobby and the matchmaker talk to.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Any, cast

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IPushProducer,
    ISSLTransport,
    ITCPTransport,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from roulette import framing, wire
from roulette.abuse import AddressKeys, TokenBucket, WindowCounter, client_host, request_scheme
from roulette.limits import Limits
from roulette.lobby import ONLINE_INTERVAL, Client, Lobby, SharedAddresses
from roulette.logs import Tally, excerpt
from roulette.metrics import Metrics
from roulette.sessions import MAX_HELD, MAX_HELD_BYTES, Session, well_formed
from roulette.transport import has_unsent, peer_host

#: Auto-ping: a client that answers no ping within the timeout is dropped.
AUTO_PING_INTERVAL = 20.0
AUTO_PING_TIMEOUT = 10.0

CLOSE_UNSUPPORTED_DATA = WebSocketProtocol.CLOSE_STATUS_CODE_UNSUPPORTED_DATA
CLOSE_POLICY_VIOLATION = WebSocketProtocol.CLOSE_STATUS_CODE_POLICY_VIOLATION
CLOSE_GOING_AWAY = WebSocketProtocol.CLOSE_STATUS_CODE_GOING_AWAY

#: Seconds a connection being closed may take to read what it was sent last.
CLOSE_LINGER = 5.0
#: Bytes Autobahn reads at a time (see ``RouletteProtocol._feed``).
_FEED_SLICE = 4096

_CONNECTING = WebSocketProtocol.STATE_CONNECTING
_OPEN = WebSocketProtocol.STATE_OPEN
#: The matchmaker's queues: text chat, and video chat.
TEXT = ""
VIDEO = "video"
_CLOSING = WebSocketProtocol.STATE_CLOSING
_CLOSED = WebSocketProtocol.STATE_CLOSED
_CONNECTION_DONE = Failure(ConnectionDone())


# Module-level: Autobahn's protocol keeps its own (level-filtered) ``self.log``.
log = Logger()


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
    #: Whether the connection holds one of its address's in the pool's count.
    _pool_admitted = False
    #: Told when the upgrade, answered later than it arrived, is done (the
    #: site's deadline for the handshake ends then).
    when_open: Callable[[], None] | None = None
    _joined = False
    #: Video mode: what the client asked for (``/ws?video=1``, the ``video``
    #: command), and what it was when the client last joined the queue, which
    #: is also whether its chat, while it has one, is a video chat: only
    #: joining the queue again (which ends a chat) changes it.
    _video = False
    _queued_video = False
    #: Whether the client is idle (after stop or partner_left): neither
    #: waiting nor paired, as the commands it sent and the events it was sent say.
    _idle = False
    #: Made when first needed: most clients never signal.
    _signal_budget: TokenBucket | None = None
    #: The interests the client gave in the URL (normalised), which it joins with.
    _interests: tuple[str, ...] = ()
    #: What the client hears before it joins the queue: its interests from
    #: the URL, or why they were refused.
    _welcome = b""
    #: Whether the client has a partner, as the pairing events it was sent
    #: say: what ``not_paired`` is decided on, without asking the matchmaker.
    _paired = False
    #: Metrics: since when the client waits (while it does), when it was paired.
    _waiting_since: float | None = None
    _paired_at = 0.0
    _online_count = -1
    _online_at = float("-inf")
    #: The session's token the client presented (``/ws?session=``), if any.
    _token: str | None = None
    #: Set by the lobby when the connection opens.
    session: Session
    #: Whether the server ended this connection (a close or a drop for a
    #: cause of its own): the client is not expected back.
    _ended_here = False
    #: The code of the close frame the client sent, if it sent one.
    _close_received: int | None = None
    #: Another connection took its session over (see replaced).
    _replaced = False
    #: The partner's connection dropped: chat messages to it are held (and
    #: counted here, against the session's caps) until it is back.
    _partner_away = False
    _held_count = 0
    _held_bytes = 0
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

    def onConnect(self, request: ConnectionRequest) -> Deferred[None] | None:  # type: ignore[override]  # Autobahn waits on a Deferred (txaio.as_future); its annotation leaves that out
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
            self._deny_handshake(421, "Misdirected Request", host=host)
        if not lobby.ready:
            # A node of a pool that has not joined it yet: it cannot pair
            # anyone, nor hash addresses as the pool does.
            self._deny_handshake(503, "starting up")
        if not gate.origins.allows(request.origin, host, scheme):
            self._deny_handshake(403, "origin not allowed", origin=request.origin)
        until = lobby.banned_until(*keys.scopes)
        if until is not None:
            self._deny_handshake(403, "banned", until=until)
        refused = gate.addresses.admit(self.address_hash, self.factory.reactor.seconds())
        if refused == "total":
            self._deny_handshake(503, "server full")
        if refused is not None:
            self._deny_handshake(429, f"too many connections from this address ({refused})")
        self._admitted = True
        self._video = request.params.get("video", [""])[-1] == "1"
        given = request.params.get("interest")
        if given:
            try:
                self._interests = wire.normalise_interests(given)
            except wire.CommandError as error:
                self._welcome = wire.encode_error(
                    error.code, f"The interests in the URL were left out: {error.message}"
                )
            else:
                self._welcome = wire.encode_interests(self._interests)
        token = request.params.get("session", [""])[-1]
        if token and well_formed(token):
            self._token = token
        # A pool's process may first have to bring the session the token
        # names from the pool (see Lobby.find_session).
        found = None if self._token is None else lobby.find_session(self._token, keys.address)
        shared = lobby.shared_addresses
        if shared is not None:
            admitted = self._admit_in_pool(shared, gate.addresses.max_per_address)
            if found is not None:
                admitted.addCallback(lambda _: found)
            return admitted
        return found

    def _admit_in_pool(self, shared: SharedAddresses, most: int) -> Deferred[None]:
        """The per-address cap over the whole pool of processes: one round
        trip to its Redis before the upgrade is answered."""
        key = self.address_hash

        def taken(admitted: bool) -> None:
            if self.state == _CLOSED:  # gone meanwhile
                if admitted:
                    shared.release_address(key)
                return
            if not admitted:
                self._deny_handshake(429, "too many connections from this address (pool)")
            self._pool_admitted = True

        return shared.admit_address(key, most).addCallback(taken)

    def _deny_handshake(self, code: int, reason: str, **details: object) -> None:
        """Answer the upgrade with HTTP ``code`` (see :meth:`failHandshake`),
        counting it in the warning tally."""
        self.factory.tally.note(
            f"refused {code} {reason}",
            "refused handshake from {address}: {code} {reason} {details}",
            address=self.address,
            code=code,
            reason=reason,
            details={name: excerpt(value) for name, value in details.items()},
        )
        self.factory.metrics.refused_handshake(reason)
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
            self.factory.metrics.refused("bad_handshake")
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
        when_open, self.when_open = self.when_open, None
        if when_open is not None:
            when_open()
        self._joined = True
        limits = self.factory.limits
        now = self.factory.reactor.seconds()
        self._message_budget = TokenBucket(limits.message_rate, limits.message_burst, now)
        self._typing_budget = TokenBucket(limits.typing_rate, limits.typing_burst, now)
        self._queue_budget = TokenBucket(limits.queue_rate, limits.queue_burst, now)
        self._refusals = WindowCounter(limits.flood_window)
        # Behind twisted.web the HTTP channel is still the transport's
        # producer; the connection is ours now.
        # (TCP, TLS and twisted.web's channel alike are consumers.)
        transport = cast(IConsumer, self.transport)
        self._send_buffer = _SendBuffer(getattr(transport, "bufferSize", 65536))
        transport.unregisterProducer()
        transport.registerProducer(self._send_buffer, True)
        log.info("client {address} connected", address=self.address)
        self._queued_video = self._video
        self.factory.lobby.join(
            self, self.address_hash, VIDEO if self._video else TEXT, self._interests, self._token
        )

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._admitted:
            self._admitted = False
            self.factory.lobby.gate.addresses.release(self.address_hash)
        if self._pool_admitted:
            self._pool_admitted = False
            shared = self.factory.lobby.shared_addresses
            if shared is not None:
                shared.release_address(self.address_hash)
        if self._joined:
            self._joined = False
            # Dropped, or closed with "back soon" (CLOSE_AWAY): the session
            # may be resumed.  A close frame of any other code, or a close
            # of the server's own, ends it.
            away = (
                not self._ended_here
                and not self.closedByMe
                and self._close_received in (None, wire.CLOSE_AWAY)
            )
            log.info(
                "client {address} disconnected (clean={clean}, code={code}, away={away})",
                address=self.address,
                clean=wasClean,
                code=code,
                away=away,
            )
            self.factory.lobby.leave(self, away)
            self.factory.metrics.closed(self.failedByMe, self.localCloseCode)
            # Its chat ended with it, unless a resume may follow or another
            # connection (of this process or another) took the session over.
            if not self._replaced and self.session.connection is None and not self.session.away:
                self._ended("left" if wasClean else "dropped")

    def onCloseFrame(self, code: int, reasonRaw: bytes) -> bool | None:
        if self.state == _OPEN:  # the client's, not its answer to ours
            # (Autobahn passes None for a close frame without a code.)
            self._close_received = 1005 if code is None else code
        return super().onCloseFrame(code, reasonRaw)

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
                self._drop_control_frame()
                return True
            now = self.factory.reactor.seconds()
            budget = self._control_budget
            if budget is None:
                limits = self.factory.limits
                budget = self._control_budget = TokenBucket(
                    limits.control_rate, limits.control_burst, now
                )
            if not budget.take(now):
                self._drop_control_frame()
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
                    self._drop_control_frame()
                    return True
        return super().processControlFrame()

    def _drop_control_frame(self) -> None:
        """Forget the control frame just read, as Autobahn does once it has
        handled one (its annotation says a list; it sets ``None``)."""
        self.control_frame_data = None  # type: ignore[assignment]

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.state != _OPEN:
            return  # the server is closing this connection: nothing more is done
        if isBinary:
            self._close(CLOSE_UNSUPPORTED_DATA, "binary frames are not supported")
            return
        self._command(payload)

    def _command(self, payload: bytes | str) -> None:
        """Decode, validate and dispatch one command; each branch charges
        its own budget first."""
        lobby = self.factory.lobby
        now = self.factory.reactor.seconds()
        try:
            command = wire.parse_command(payload, self.factory.limits.max_message_length)
            match command:
                case wire.Message(text, id):
                    if not self._message_budget.take(now):
                        raise _rate_limited(id)
                    if not self._paired:
                        raise wire.CommandError(
                            wire.NOT_PAIRED, "You have no partner to send a message to.", id
                        )
                    event = wire.encode_message(text)
                    if self._partner_away:
                        self._hold_for_partner(event, id)
                    lobby.relay(self.session, event, True)
                    self.factory.metrics.relayed += 1
                    if id is not None:
                        self.send_event(wire.encode_sent(id))
                case wire.Typing(active):
                    if not self._typing_budget.take(now):
                        self.factory.metrics.refused(wire.RATE_LIMITED)
                        self._count_refusal(now)  # dropped, as typing without a partner is
                    elif self._paired:
                        lobby.relay(self.session, wire.encode_typing(active))
                case wire.Next():
                    if not self._queue_budget.take(now):
                        raise _rate_limited()
                    # The chat is over now, whenever the matchmaker says so.
                    self._ended("next")
                    self._paired = self._idle = False
                    self._join_queue_as_chosen()
                    lobby.next(self)
                case wire.Stop():
                    if not self._queue_budget.take(now):
                        raise _rate_limited()
                    self._ended("stop")
                    self._paired = False
                    self._idle = True
                    lobby.stop(self)
                case wire.Report():
                    if not self._queue_budget.take(now):
                        raise _rate_limited()
                    if not self._paired:
                        raise wire.CommandError(wire.NOT_PAIRED, "You have no partner to report.")
                    self._ended("report")
                    self._paired = False
                    self._join_queue_as_chosen()
                    lobby.report(self)
                case wire.Block():
                    if not self._queue_budget.take(now):
                        raise _rate_limited()
                    if not self._paired:
                        raise wire.CommandError(wire.NOT_PAIRED, "You have no partner to block.")
                    self._ended("block")
                    self._paired = False
                    self._join_queue_as_chosen()
                    lobby.block(self)
                case wire.Signal(event):
                    budget = self._signal_budget
                    if budget is None:
                        limits = self.factory.limits
                        budget = self._signal_budget = TokenBucket(
                            limits.signal_rate, limits.signal_burst, now
                        )
                    if not budget.take(now):
                        raise _rate_limited()
                    if not self._paired:
                        raise wire.CommandError(
                            wire.NOT_PAIRED, "You have no partner to send a signal to."
                        )
                    if not self._queued_video:
                        raise wire.CommandError(
                            wire.NOT_VIDEO, "This is not a video chat: signals are not relayed."
                        )
                    lobby.relay(self.session, event)
                case wire.Interests(tags):
                    if not self._queue_budget.take(now):
                        raise _rate_limited()
                    self.send_event(wire.encode_interests(tags))
                    # A waiting client joins again: the queue of its mode.
                    if not self._paired and not self._idle:
                        self._join_queue_as_chosen()
                    lobby.set_interests(self, tags)
                case wire.Video(on):
                    if not self._queue_budget.take(now):
                        raise _rate_limited()
                    self._video = on
                    if not self._paired and not self._idle and on != self._queued_video:
                        # Waiting: into the other queue at once.
                        self._join_queue_as_chosen()
                        lobby.next(self)
        except wire.CommandError as error:
            self.send_event(wire.encode_error(error.code, error.message, error.id))
            self.factory.metrics.refused(error.code)
            self._count_refusal(now)

    def _hold_for_partner(self, event: bytes, id: int | None) -> None:
        """Count a message to a partner away against what is kept for it;
        past that, refuse it."""
        count, size = self._held_count + 1, self._held_bytes + len(event)
        if count > MAX_HELD or size > MAX_HELD_BYTES:
            raise wire.CommandError(
                wire.PARTNER_AWAY,
                "Your partner's connection dropped, and no more messages are kept for "
                "them until they are back; this one was not delivered.",
                id,
            )
        self._held_count, self._held_bytes = count, size

    def _join_queue_as_chosen(self) -> None:
        """Before the client joins the queue again: the queue of the mode it
        chose, if that changed since it last joined one."""
        if self._video != self._queued_video:
            self._queued_video = self._video
            self.factory.lobby.set_queue(self, VIDEO if self._video else TEXT)

    def _ended(self, how: str) -> None:
        """Metrics: the client ended its chat, if it has one (``how``: see
        ``roulette.metrics.CHAT_ENDINGS``); one that stops waits no more."""
        if self._paired:
            self.factory.metrics.chat_ended(how, self._paired_at)
        if how == "stop":
            self._waiting_since = None

    def _count_refusal(self, now: float) -> None:
        """Count a refused frame; too many of them close the connection."""
        limits = self.factory.limits
        if (
            self._refusals.add(now) >= limits.flood_refusals
            and self.state == WebSocketProtocol.STATE_OPEN
        ):
            log.warn("closing {address}: flooding", address=self.address)
            self._close(CLOSE_POLICY_VIOLATION, "too many refused frames")

    def _close(self, code: int, reason: str) -> None:
        self._ended_here = True
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.factory.metrics.closing(reason)
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8"))

    def send_notice(self, code: str, message: str) -> None:
        self.send_event(wire.encode_notice(code, message))

    def send_welcome(self) -> None:
        if self._welcome:
            self.send_event(self._welcome)
            del self._welcome  # the class's empty one from now on

    def send_event(self, event: bytes) -> None:
        """Send one encoded event as a text frame (the Peer's call, used for
        every event).  Not ``_send``: Autobahn has one of its own."""
        # A client whose close handshake has begun is leaving; onClose will
        # tell the matchmaker.  Until then, events for it are dropped.
        if self.state != WebSocketProtocol.STATE_OPEN:
            return
        buffer = self._send_buffer
        if buffer is not None and buffer.paused and not self._may_queue(len(event) + 4):
            return
        # What sendMessage() would write for an uncompressed, unfragmented
        # text message, without its per-call checks and bookkeeping.
        # (Only an open connection gets here: it has a transport.)
        self.transport.write(framing.text_frame(event))  # type: ignore[union-attr]

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
            self.factory.metrics.refused("slow_consumer")
            self._ended_here = True
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
        self.factory.metrics.refused("close_not_taken")
        self.factory.tally.note(
            "close not taken",
            "dropping {address}: it did not take its close within {seconds} s",
            address=self.address,
            seconds=CLOSE_LINGER,
        )
        cast(ITCPTransport, self.transport).abortConnection()

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        linger = self._linger
        if linger is not None:
            self._linger = None
            if linger.active():
                linger.cancel()
        super().connectionLost(reason)

    # -- Client: what the lobby and the matchmaker call --------------------

    def ban(self, until: float) -> None:
        self.send_event(wire.encode_banned(until))
        self._close(CLOSE_POLICY_VIOLATION, "banned")

    def going_away(self) -> None:
        # sendClose() refuses 1001; sendCloseFrame() does not.
        self._close(CLOSE_GOING_AWAY, "server shutting down")

    def drop(self) -> None:
        self._ended_here = True
        self.dropConnection(abort=True)

    def send_session(self, token: str, resumed: bool) -> None:
        self.send_event(wire.encode_session(token, resumed))

    def resume(self, previous: Client | None) -> None:
        carried = previous.carry() if previous is not None else self.session.carried
        self._paired = carried.get("paired", False)
        self._idle = carried.get("idle", False)
        self._queued_video = carried.get("video", False)
        self._partner_away = carried.get("partner_away", False)
        if isinstance(previous, RouletteProtocol):
            self._held_count = previous._held_count
            self._held_bytes = previous._held_bytes
            self._waiting_since, self._paired_at = previous._waiting_since, previous._paired_at
        elif self._paired:
            # Handed over by another process: the chat's length is counted
            # from here.
            self._paired_at = self.factory.reactor.seconds()

    def carry(self) -> dict[str, bool]:
        return {
            "paired": self._paired,
            "idle": self._idle,
            "video": self._queued_video,
            "partner_away": self._partner_away,
        }

    def send_ended_while_away(self) -> None:
        self._paired = self._partner_away = False
        self._idle = True
        self.send_event(wire.PARTNER_LEFT_WHILE_AWAY)

    def replaced(self) -> None:
        self._replaced = True
        log.info("client {address}: its session was resumed elsewhere", address=self.address)
        # It may be dead (that is why it is resumed): Autobahn drops it if
        # the close is not answered in time.
        self._close(wire.CLOSE_RESUMED_ELSEWHERE, "session resumed by another connection")

    @property
    def idle(self) -> bool:
        return self._idle

    @property
    def chatting(self) -> bool:
        return self._paired

    def send_waiting(self) -> None:
        if self._waiting_since is None:
            self._waiting_since = self.factory.reactor.seconds()
        self._paired = False
        self._partner_away = False
        self.send_event(wire.WAITING)

    def send_paired(self, offer: bool = False, common: Sequence[str] = ()) -> None:
        self._paired_at = self.factory.metrics.paired(offer, self._waiting_since)
        self._waiting_since = None
        self._paired = True
        self._partner_away = False
        log.info("client {address} paired", address=self.address)
        # Both joined one queue: the video one, if this one did.
        if self._queued_video:
            self.send_event(wire.encode_paired_video(offer, self.factory.ice_servers(), common))
        else:
            self.send_event(wire.encode_paired(common))

    def send_partner_left(self) -> None:
        if self._partner_away:  # its session was given up: counted here, once
            self._ended("dropped")
        self._paired = False
        self._idle = True
        self._partner_away = False
        self.send_event(wire.PARTNER_LEFT)

    def send_partner_away(self) -> None:
        self._partner_away = True
        self._held_count = self._held_bytes = 0
        self.send_event(wire.PARTNER_AWAY_EVENT)

    def send_partner_back(self) -> None:
        self._partner_away = False
        self.send_event(wire.PARTNER_BACK)

    def send_wait(self, reason: str | None, until: float | None = None) -> None:
        self.send_event(wire.encode_wait(reason, until))

    def send_online(self, count: int, now: float) -> bool:
        """Send the ``online`` count unless sent less than an interval ago;
        the first also tells the client its limits.

        Returns whether the client now knows ``count``.
        """
        if count == self._online_count:
            return True
        if now - self._online_at < ONLINE_INTERVAL:
            return False
        first = self._online_count < 0
        self._online_count = count
        self._online_at = now
        self.send_event(wire.encode_online(count, self.factory.client_limits if first else b""))
        return True


def _rate_limited(id: int | None = None) -> wire.CommandError:
    # A fresh exception every time: raising one shared instance would chain
    # every traceback onto it and keep all those frames alive.
    return wire.CommandError(
        wire.RATE_LIMITED, "You are sending too fast; this one was not delivered.", id
    )


class RouletteFactory(WebSocketServerFactory):
    """Builds :class:`RouletteProtocol` connections that share one :class:`Lobby`."""

    # (Twisted's Factory types this as any callable making a protocol.)
    protocol: type[RouletteProtocol] = RouletteProtocol  # type: ignore[assignment]

    def __init__(
        self,
        lobby: Lobby,
        auto_ping_interval: float = AUTO_PING_INTERVAL,
        auto_ping_timeout: float = AUTO_PING_TIMEOUT,
        limits: Limits | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("server", None)  # no "Server: AutobahnPython/<version>"
        super().__init__(**kwargs)  # type: ignore[no-untyped-call]  # unannotated in Autobahn
        self.lobby = lobby
        #: The ICE servers for each video chat's ``paired`` event (see
        #: :class:`roulette.ice.IceServers`); none by default.
        self.ice_servers: Callable[[], list[dict[str, object]]] = list
        self.limits = limits = limits if limits is not None else Limits()
        #: What the first ``online`` event tells each client, encoded once.
        self.client_limits = wire.encode_limits(limits.for_clients())
        #: Repeated warnings (floods, deadlines, slow consumers) at most once a minute.
        self.tally = Tally(self.reactor)
        #: What /metrics reports (roulette.metrics): counted whether served or not.
        self.metrics = Metrics(lobby, self.reactor.seconds)
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

    def setProtocolOptions(self, *args: Any, **options: Any) -> None:
        """Autobahn's, then the settings put on a subclass of the protocol.

        Autobahn copies its forty-odd settings from the factory onto every
        connection that lacks them, and pretty-prints them all for a debug
        line, which nearly doubles the cost of accepting a connection.  The
        connections of this factory find them on their class instead.
        """
        super().setProtocolOptions(*args, **options)  # type: ignore[no-untyped-call]  # unannotated in Autobahn
        settings = {name: getattr(self, name) for name in RouletteProtocol.CONFIG_ATTRS}
        # A function in a class would be bound as a method.
        settings = {k: staticmethod(v) if callable(v) else v for k, v in settings.items()}
        self.protocol = cast(
            type[RouletteProtocol],
            type(RouletteProtocol.__name__, (RouletteProtocol,), {**settings, "CONFIG_ATTRS": ()}),
        )
