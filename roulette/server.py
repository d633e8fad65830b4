"""The WebSocket shell around the matchmaker.

:class:`RouletteProtocol` is an adapter: it decodes a frame, validates it
(:mod:`roulette.wire`), dispatches it to the :class:`~roulette.core.Matchmaker`
and encodes what the matchmaker tells it.  :class:`Lobby` puts a matchmaker on
the reactor's clock: it wakes the matchmaker when a cooldown runs out and
tells every client how many people are online.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from roulette import wire
from roulette.core import Matchmaker, Stats

#: How often, at most, a client hears the ``online`` count (seconds).
ONLINE_INTERVAL = 1.0

#: Auto-ping: a client that answers no ping within the timeout is dropped.
AUTO_PING_INTERVAL = 20.0
AUTO_PING_TIMEOUT = 10.0

CLOSE_UNSUPPORTED_DATA = WebSocketProtocol.CLOSE_STATUS_CODE_UNSUPPORTED_DATA

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

    def __init__(self, matchmaker: Matchmaker, reactor: IReactorTime) -> None:
        self.matchmaker = matchmaker
        self._reactor = reactor
        self._wakeup: IDelayedCall | None = None
        self._clients: dict[RouletteProtocol, None] = {}
        self._online_ticker = LoopingCall(self._broadcast_online)
        self._online_ticker.clock = reactor
        self._online_sent = -1

    def startService(self) -> None:
        super().startService()
        self._online_ticker.start(ONLINE_INTERVAL, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._online_ticker.running:
            self._online_ticker.stop()
        if self._wakeup is not None and self._wakeup.active():
            self._wakeup.cancel()
        self._wakeup = None

    # -- what the protocol calls -------------------------------------------

    def join(self, client: RouletteProtocol) -> None:
        """A client finished its handshake: tell it the count, then queue it."""
        self._clients[client] = None
        # The count it is told includes itself; it must arrive before "waiting".
        client.send_online(self.matchmaker.stats().online + 1, self._reactor.seconds())
        self._online_sent = -1  # the newcomer may have heard another count
        self.matchmaker.connect(client)
        self._reschedule()

    def leave(self, client: RouletteProtocol) -> None:
        if client in self._clients:
            del self._clients[client]
            self.matchmaker.disconnect(client)
            self._reschedule()

    def next(self, client: RouletteProtocol) -> None:
        self.matchmaker.next(client)
        self._reschedule()

    def stop(self, client: RouletteProtocol) -> None:
        self.matchmaker.stop(client)
        self._reschedule()

    def relay_message(self, client: RouletteProtocol, text: str) -> bool:
        return self.matchmaker.relay_message(client, text)

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


class RouletteProtocol(WebSocketServerProtocol):
    """One client connection: decode, validate, dispatch, encode.

    It is the :class:`~roulette.core.Peer` the matchmaker talks to.
    """

    factory: RouletteFactory

    _joined = False
    _online_count = -1
    _online_at = float("-inf")

    def onOpen(self) -> None:
        self._joined = True
        log.info("client {peer} connected", peer=self.peer)
        self.factory.lobby.join(self)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._joined:
            self._joined = False
            log.info(
                "client {peer} disconnected (clean={clean}, code={code})",
                peer=self.peer,
                clean=wasClean,
                code=code,
            )
            self.factory.lobby.leave(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            self.sendCloseFrame(
                code=CLOSE_UNSUPPORTED_DATA,
                reasonUtf8=b"binary frames are not supported",
            )
            return
        lobby = self.factory.lobby
        try:
            command = wire.parse_command(payload, self.factory.max_message_length)
            match command:
                case wire.Message(text):
                    if not lobby.relay_message(self, text):
                        raise wire.CommandError(
                            wire.NOT_PAIRED, "You have no partner to send a message to."
                        )
                case wire.Typing(active):
                    lobby.relay_typing(self, active)
                case wire.Next():
                    lobby.next(self)
                case wire.Stop():
                    lobby.stop(self)
        except wire.CommandError as error:
            self._send(wire.encode_error(error.code, error.message))

    def _send(self, frame: bytes) -> None:
        # A client whose close handshake has begun is leaving; onClose will
        # tell the matchmaker.  Until then, events for it are dropped.
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.sendMessage(frame)

    # -- Peer ----------------------------------------------------------------

    def send_waiting(self) -> None:
        self._send(wire.WAITING)

    def send_paired(self) -> None:
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


class RouletteFactory(WebSocketServerFactory):
    """Builds :class:`RouletteProtocol` connections that share one :class:`Lobby`."""

    protocol = RouletteProtocol

    def __init__(
        self,
        lobby: Lobby,
        max_message_length: int = 2000,
        auto_ping_interval: float = AUTO_PING_INTERVAL,
        auto_ping_timeout: float = AUTO_PING_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.lobby = lobby
        self.max_message_length = max_message_length
        self.setProtocolOptions(
            failByDrop=False,
            webStatus=False,
            maxFramePayloadSize=wire.MAX_PAYLOAD,
            maxMessagePayloadSize=wire.MAX_PAYLOAD,
            autoPingInterval=auto_ping_interval,
            autoPingTimeout=auto_ping_timeout,
        )
