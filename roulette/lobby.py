"""The process's matchmaker on the reactor's clock, and who may come in.

:class:`Lobby` is the one object a connection talks to: it forwards each call
to the :class:`~roulette.core.Matchmaker`, wakes the matchmaker when a
cooldown runs out, tells every client how many people are online, turns
reports into bans and closes every connection when the server stops.
:class:`Gate` bundles what decides whether a handshake is admitted.

Neither knows anything of WebSockets: a connection is a :class:`Client`,
a :class:`~roulette.core.Peer` with a few more calls.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

from roulette import wire
from roulette.abuse import (
    AddressHasher,
    AddressKeys,
    AddressLimits,
    OriginPolicy,
    PublicHosts,
    Reports,
)
from roulette.core import Matchmaker, ReportedChat, Stats
from roulette.limits import DEFAULT
from roulette.sessions import Connection, Session, Sessions, well_formed

#: How often, at most, a client hears the ``online`` count (seconds).
ONLINE_INTERVAL = 1.0

#: How often the abuse controls forget what has expired (seconds).
HOUSEKEEPING_INTERVAL = 60.0

#: How often, and how many times, a process asks the pool again for a
#: session another process has live (its connection closing, say, as a
#: page reloads) before the connection that presented its token starts a
#: new one.
SESSION_RETRY = 0.2
SESSION_TRIES = 5

#: What the ``notice`` events say when matching stops and starts again.
MATCHING_PAUSED = (
    "Finding strangers is paused for a moment; your chat goes on. You will be matched "
    "again as soon as it is back."
)
MATCHING_RESUMED = "Finding strangers works again."

log = Logger()


def _refused(code: str, message: str, retry_after: float) -> dict[str, object]:
    return {
        "admitted": False,
        "code": code,
        "message": message,
        "retry_after": math.ceil(retry_after),
    }


class SharedReports(Protocol):
    """Reports counted by a pool of processes together."""

    def report_chat(
        self,
        reporter: AddressKeys,
        reported: AddressKeys,
        seconds: float,
        sent: bool,
        rules: Reports,
    ) -> object:
        """Count a report; a ban it brings about comes back to every
        process of the pool (see :meth:`Lobby.heard_ban`)."""


class SharedAddresses(Protocol):
    """Per-address connection counts kept by a pool of processes together."""

    def admit_address(self, key: str, most: int) -> Deferred[bool]:
        """Take a connection for ``key`` unless it holds ``most`` already."""

    def release_address(self, key: str) -> None:
        """Give back a connection taken for ``key``."""


class SharedSessions(Protocol):
    """Sessions without a connection kept by a pool of processes together,
    so that a token may be presented to any of them."""

    def keep_session(
        self,
        digest: str,
        address: str,
        sid: str,
        ended: bool,
        lifetime: float,
        live: bool = False,
        replaces: str = "",
    ) -> None:
        """Keep it under ``digest`` (its token's hash, in hex; in place of
        ``replaces``, its last one's) for ``lifetime`` seconds; ``live``:
        this process has it (with a connection, or away)."""

    def take_session(self, digest: str, address: str) -> Deferred[tuple[str, bool] | str | None]:
        """Take the session kept under ``digest`` for ``address`` (its id, and
        whether its chat ended while it was away), if there is one; the id
        of the process that has it live (and nothing is taken) while one has."""

    def request_session(
        self, node: str, digest: str, address: str
    ) -> Deferred[dict[str, Any] | None]:
        """Ask the process ``node`` to hand over the session it has live."""

    def hand_over(self, peer: Session, client: str, passed: dict[str, Any]) -> None:
        """Hand a session over to the process that asked for it."""

    def adopt(self, peer: Session, state: dict[str, Any]) -> None:
        """Take up a session another process handed over."""


class Client(Connection, Protocol):
    """A connection, as the lobby sees it."""

    #: The client's address, as logs name it (after trusted proxies).
    address: str
    #: The session it speaks for (set by :meth:`Lobby.join`).
    session: Session

    @property
    def idle(self) -> bool:
        """Whether it is neither waiting nor chatting, as far as it knows."""

    @property
    def chatting(self) -> bool:
        """Whether it has a partner, as far as it knows."""

    def carry(self) -> dict[str, bool]:
        """What it knows of its chat, for a connection of another process
        that takes its session up (see :meth:`resume`)."""

    @property
    def keys(self) -> AddressKeys:
        """The hashed keys of its address, its network and what a ban may cover."""

    def send_online(self, count: int, now: float) -> bool:
        """Tell it ``count`` people are online, unless it was told less than
        ``ONLINE_INTERVAL`` ago; whether it now knows ``count``."""

    def send_notice(self, code: str, message: str) -> None:
        """Tell the person something about the service."""

    def send_welcome(self) -> None:
        """What the client hears after its first count and before it joins
        the queue (the interests it gave when it connected, or why they
        were refused)."""

    def send_session(self, token: str, resumed: bool) -> None:
        """Its session's token, and whether it picks up a dropped connection's
        chat; sent right after its first count."""

    def resume(self, previous: Client | None) -> None:
        """It picks up where ``previous``, its session's connection before
        it, left off: the chat, the queue and the mode it had (without one:
        where the session's ``carried`` says)."""

    def send_ended_while_away(self) -> None:
        """Its chat ended while its session was away: it is idle."""

    def replaced(self) -> None:
        """Another connection resumed its session: close, and speak for it
        no more."""

    def ban(self, until: float) -> None:
        """Its address is banned until ``until``: tell it, and close."""

    def going_away(self) -> None:
        """The server is shutting down: close (1001)."""

    def drop(self) -> None:
        """Drop the connection at once, without a closing handshake."""


def _default_addresses() -> AddressLimits:
    return AddressLimits(
        DEFAULT.max_per_address, DEFAULT.connects_per_minute, DEFAULT.max_connections
    )


@dataclass
class Gate:
    """Who may open a WebSocket: origins, per-address caps and bans."""

    origins: OriginPolicy = field(default_factory=OriginPolicy)
    addresses: AddressLimits = field(default_factory=_default_addresses)
    reports: Reports | None = None
    hasher: AddressHasher = field(default_factory=AddressHasher)
    #: How many ``X-Forwarded-For`` hops (proxies in front of us) to believe.
    trust_proxy: int = 0
    #: The names the server answers for (none: any ``Host``).
    hosts: PublicHosts = field(default_factory=PublicHosts)


class Lobby(Service):
    """The process's matchmaker, driven by the reactor's clock.

    Connections call it, never the matchmaker itself.  It forwards each call
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
        resume_grace: float = DEFAULT.resume_grace,
    ) -> None:
        self.matchmaker = matchmaker
        #: Relays an event to the partner of a client's session (pass
        #: ``client.session``): the matchmaker's own
        #: :meth:`~roulette.core.Matchmaker.relay`, called without a detour
        #: (relaying changes no queue and no timer).
        self.relay = matchmaker.relay
        self._reactor = reactor
        self.gate = gate if gate is not None else Gate(reports=Reports(reactor.seconds))
        self.shutdown_grace = shutdown_grace
        #: Seconds a session whose connection dropped waits to be resumed.
        self.resume_grace = resume_grace
        self.sessions = Sessions(reactor.seconds)
        # The sessions away, each with the timer that gives up on it.
        self._graces: dict[Session, IDelayedCall] = {}
        #: Sessions picked up again by a new connection (for the metrics).
        self.resumed = 0
        self._wakeup: IDelayedCall | None = None
        self._clients: dict[Client, None] = {}
        self._online_ticker = LoopingCall(self._broadcast_online)
        self._online_ticker.clock = reactor
        self._housekeeping = LoopingCall(self._prune)
        self._housekeeping.clock = reactor
        self._online_sent = -1
        self._drained: Deferred[None] | None = None
        #: Whether clients may come in: a node of a shared pool is not ready
        #: until it has joined the pool (see ``tap.makeService``).
        self.ready = True
        #: Whether matching is paused: a node cut off from its pool.
        self.matching_paused = False
        #: Where reports are counted when they are shared by a pool of
        #: processes (the pool's matchmaker); otherwise in ``gate.reports``.
        self.shared_reports: SharedReports | None = None
        #: Where per-address connection caps are counted over a pool of
        #: processes (the pool's matchmaker); otherwise each process alone.
        self.shared_addresses: SharedAddresses | None = None
        #: Where sessions without a connection are kept for the whole pool
        #: of processes (the pool's matchmaker); otherwise here alone.
        self.shared_sessions: SharedSessions | None = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        self._online_ticker.start(ONLINE_INTERVAL, now=False)
        self._housekeeping.start(HOUSEKEEPING_INTERVAL, now=False)

    def stopService(self) -> Deferred[None]:
        """Tell every client the server is going away (close 1001), and wait
        up to ``shutdown_grace`` seconds for them to go before dropping the
        rest."""
        super().stopService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        for ticker in (self._online_ticker, self._housekeeping):
            if ticker.running:
                ticker.stop()
        if self._wakeup is not None and self._wakeup.active():
            self._wakeup.cancel()
        self._wakeup = None
        for session in list(self._graces):
            self._give_up(session)
        if not self._clients:
            return succeed(None)
        log.info("shutting down: closing {n} connections", n=len(self._clients))
        drained: Deferred[None] = Deferred()
        self._drained = drained
        for client in list(self._clients):
            client.going_away()
        timer = self._reactor.callLater(self.shutdown_grace, self._drop_the_rest)

        def cancel_timer(result: None) -> None:
            if timer.active():
                timer.cancel()

        drained.addBoth(cancel_timer)
        return drained

    def _drop_the_rest(self) -> None:
        log.info("shutdown grace over: dropping {n} connections", n=len(self._clients))
        for client in list(self._clients):
            client.drop()
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
        self.sessions.prune()

    # -- what a connection calls ---------------------------------------------

    def find_session(self, token: str, address: str) -> Deferred[None] | None:
        """Before a connection that presents ``token`` from ``address`` (its
        hash) opens: if the pool keeps its session, bring it here, for
        :meth:`join` to take up (``None``: nothing to wait for)."""
        shared = self.shared_sessions
        if shared is None or not well_formed(token):
            return None
        local = self.sessions.find(token)
        if local is not None and (local.connection is not None or local.away):
            return None  # live here: only this process can take it up
        # Kept without a connection: by the pool, which hands it out once.
        digest = self.sessions.digest(token).hex()

        def found(kept: tuple[str, bool] | str | None, tries: int) -> Deferred[None] | None:
            if isinstance(kept, str) and tries == 1:
                # Another process has it live: away, or with a connection
                # that died unnoticed.  Asked, it hands it over.
                asked = shared.request_session(kept, digest, address)
                return asked.addCallback(handed, kept)
            if isinstance(kept, str) and tries < SESSION_TRIES:
                # Still live there (its connection closing, say): once
                # closed, it is kept for anyone.
                later: Deferred[None] = deferLater(self._reactor, SESSION_RETRY, lambda: None)
                again = later.addCallback(lambda _: shared.take_session(digest, address))
                return again.addCallback(found, tries + 1)
            mine = self.sessions.find(token)
            if not isinstance(kept, tuple):
                if mine is not None and mine.connection is None and not mine.away:
                    self.sessions.drop(mine)  # taken up elsewhere, or expired
            elif mine is None:
                self.sessions.adopt(token, address, *kept)
            return None

        def handed(state: dict[str, Any] | None, node: str) -> Deferred[None] | None:
            if state is None:
                return found(node, 2)  # not handed over (yet): ask the pool again
            if self.sessions.find(token) is None:
                self._take_over(token, address, state)
            return None

        return shared.take_session(digest, address).addCallback(found, 1)

    def _take_over(self, token: str, address: str, state: dict[str, Any]) -> None:
        """A session handed over by another process: away here (relayed
        messages are held) until the connection that asked opens."""
        shared = self.shared_sessions
        assert shared is not None
        session = self.sessions.adopt(
            token, address, str(state["sid"]), bool(state["ended"]), away=True
        )
        held = state.get("held")
        for event in held if isinstance(held, list) else ():
            session.send_event(str(event).encode("utf-8"))
        carried = state.get("carried")
        session.carried = (
            {k: bool(v) for k, v in carried.items()} if isinstance(carried, dict) else {}
        )
        shared.adopt(session, state)
        self._graces[session] = self._reactor.callLater(self.resume_grace, self._give_up, session)

    def hand_over(self, digest: str, address: str, client: str) -> None:
        """Another process asks for a session this one has live (a
        connection there presented its token): its chat goes there."""
        shared = self.shared_sessions
        session = self.sessions.find_digest(bytes.fromhex(digest))
        if (
            shared is None
            or session is None
            or session.address != address
            or (session.connection is None and not session.away)
        ):
            return  # unknown here, or kept for anyone already
        self._replace_connection(session)
        self._end_grace(session)
        last = cast("Client | None", session.last)
        passed = {
            "sid": session.sid,
            "ended": session.ended_while_away,
            "held": [event.decode("utf-8") for event in session.take_held()],
            "carried": last.carry() if last is not None else session.carried,
        }
        log.info("handing a session over to {client}", client=client)
        shared.hand_over(session, client, passed)
        session.detach(away=False)
        self.sessions.drop(session)
        self._reschedule()

    def join(
        self,
        client: Client,
        identity: Hashable | None = None,
        queue: str = "",
        interests: Sequence[str] = (),
        token: str | None = None,
    ) -> None:
        """A client finished its handshake: give it its session (the one
        ``token`` names, if valid from its address), tell it the count,
        then queue it (in ``queue``: ``"video"`` or the text one, ``""``)
        with ``interests``; or, if its session was away or its connection
        still open, let it pick up where that left off."""
        address = "" if identity is None else str(identity)
        claimed = None if token is None else self.sessions.claim(token, address)
        replaces = ""
        if claimed is None:
            session, token = self.sessions.start(address)
        else:
            replaces = self.sessions.digest(cast(str, token)).hex()
            session, token = claimed
        shared = self.shared_sessions
        if shared is not None:
            # The pool knows it is live here, under its new token.
            shared.keep_session(
                session.digest.hex(),
                address,
                session.sid,
                False,
                self.sessions.lifetime,
                live=True,
                replaces=replaces,
            )
        resuming = session.away or session.connection is not None
        previous = cast("Client | None", session.last)
        # Its connection may seem open: one that died unnoticed (a phone
        # that changed networks), or the tab's copy.  This one goes on.
        self._replace_connection(session)
        self._end_grace(session)
        self._clients[client] = None
        client.session = session
        session.attach(client)
        # The count it is told includes itself; it comes first (with the
        # limits), then the session's token, all before "waiting".
        stats = self.matchmaker.stats()
        client.send_online(stats.online + (not resuming), self._reactor.seconds())
        client.send_session(token, resuming)
        self._online_sent = -1  # the newcomer may have heard another count
        if self.matching_paused:
            client.send_notice(wire.MATCHING_PAUSED, MATCHING_PAUSED)
        client.send_welcome()
        if resuming:
            self.resumed += 1
            log.info("client {address} resumed its session", address=client.address)
            client.resume(previous)
            if interests:
                self.matchmaker.set_interests(session, interests)
            self.matchmaker.back(session)
            for event in session.take_held():
                client.send_event(event)
            if session.ended_while_away:
                session.ended_while_away = False
                client.send_ended_while_away()
        elif session.ended_while_away:
            # Back too late: its chat ended with the grace.  It starts idle,
            # and is told.
            session.ended_while_away = False
            self.matchmaker.connect(session, identity, queue, interests, join=False)
            client.send_ended_while_away()
        else:
            self.matchmaker.connect(session, identity, queue, interests)
        self._reschedule()

    def set_queue(self, client: Client, queue: str) -> None:
        """The queue the client joins from now on (see ``Matchmaker.set_queue``)."""
        self.matchmaker.set_queue(client.session, queue)

    def set_interests(self, client: Client, interests: Sequence[str]) -> None:
        """The client's interests from now on (see ``Matchmaker.set_interests``)."""
        self.matchmaker.set_interests(client.session, interests)
        self._reschedule()

    def leave(self, client: Client, away: bool = False) -> None:
        """The client's connection closed.  ``away``: without a word (it
        dropped, or said it would be back): if it was waiting or chatting,
        its session waits ``resume_grace`` seconds for it to come back;
        otherwise its session leaves the matchmaker now."""
        if client in self._clients:
            del self._clients[client]
            session = client.session
            if away and self.resume_grace > 0 and not client.idle and self.running:
                session.detach(away=True)
                self.matchmaker.away(session)
                self._graces[session] = self._reactor.callLater(
                    self.resume_grace, self._give_up, session
                )
            else:
                self._end_session(session)
            self._reschedule()
        if self._drained is not None and not self._clients:
            self._fire_drained()

    def _give_up(self, session: Session) -> None:
        """The session away did not come back in time: it leaves the
        matchmaker (its partner is told).  Should it come back later, it is
        told its chat ended, if it had one."""
        self._end_grace(session)
        last = cast("Client | None", session.last)
        chatting = last.chatting if last is not None else session.carried.get("paired", False)
        missed = session.ended_while_away or chatting
        self._end_session(session, missed)
        self._reschedule()

    def _replace_connection(self, session: Session) -> None:
        """Another connection picks the session up: the one it has, if any,
        is closed (4001) and speaks for it no more; meanwhile it is away."""
        if session.connection is None:
            return
        old = cast(Client, session.connection)
        del self._clients[old]
        old.replaced()
        session.detach(away=True)
        self.matchmaker.away(session)

    def _end_grace(self, session: Session) -> None:
        """The session is away no more (back, handed over, or given up)."""
        grace = self._graces.pop(session, None)
        if grace is not None and grace.active():
            grace.cancel()

    def _end_session(self, session: Session, missed: bool = False) -> None:
        """The session leaves the matchmaker, and is kept without a
        connection (``missed``: its chat ended while it was away)."""
        session.detach(away=False)
        session.take_held()  # not kept beyond the grace
        self.matchmaker.disconnect(session)
        session.ended_while_away = missed
        self.sessions.release(session)
        shared = self.shared_sessions
        if shared is not None:
            # No longer live here: any process may take it up.
            shared.keep_session(
                session.digest.hex(), session.address, session.sid, missed, self.sessions.lifetime
            )

    def next(self, client: Client) -> None:
        self.matchmaker.next(client.session)
        self._reschedule()

    def stop(self, client: Client) -> None:
        self.matchmaker.stop(client.session)
        self._reschedule()

    def report(self, client: Client) -> None:
        """End the client's chat for good; ban the partner's address once
        enough people reported it (see :class:`~roulette.abuse.Reports`)."""

        def reported(chat: ReportedChat | None) -> None:
            self._reschedule()
            if chat is None:
                return
            log.info("client {address} reported its partner", address=client.address)
            reports = self.gate.reports
            # A session of ours, or a client of another process of a shared
            # pool (which names its keys, if it knows them).
            keys = getattr(chat.partner, "keys", None)
            if reports is None or not isinstance(keys, AddressKeys):
                return
            if self.shared_reports is not None:
                # Counted by the pool; a ban comes back to every process
                # (this one too) through heard_ban.
                self.shared_reports.report_chat(
                    client.keys, keys, chat.seconds, chat.partner_sent, reports
                )
                return
            ban = reports.report(client.keys, keys, seconds=chat.seconds, sent=chat.partner_sent)
            if ban is not None:
                self.ban(ban.scope, ban.until)

        self.matchmaker.report(client.session, reported)

    def block(self, client: Client) -> None:
        """End the client's chat like a report, so that the two are never
        paired again, without counting toward a ban."""

        def blocked(chat: ReportedChat | None) -> None:
            self._reschedule()
            if chat is not None:
                log.info("client {address} blocked its partner", address=client.address)

        self.matchmaker.report(client.session, blocked)

    def heard_ban(self, scope: str, until: float) -> None:
        """A ban of the shared pool (made here or by another process): new
        connections from its scope are refused, those open are closed."""
        if self.gate.reports is not None:
            self.gate.reports.note_ban(scope, until)
        self.ban(scope, until)

    def ban(self, scope: str, until: float) -> None:
        """Close every connection from a banned address or network (``scope``
        is one of :attr:`Client.keys`' scopes)."""
        banned = [c for c in self._clients if scope in c.keys.scopes]
        log.warn(
            "banned {peers} until {until:.0f} after reports",
            peers=[c.address for c in banned],
            until=until,
        )
        for client in banned:
            client.ban(until)
        # Sessions away from there will not be let back in: their partners
        # need not wait for them.
        for session in [s for s in self._graces if s.keys and scope in s.keys.scopes]:
            self._give_up(session)

    def matching(self, available: bool) -> None:
        """Matching stopped (the pool's Redis cannot be reached) or started
        again: every client is told.  Chats go on meanwhile."""
        self.matching_paused = not available
        code, message = (
            (wire.MATCHING_RESUMED, MATCHING_RESUMED)
            if available
            else (wire.MATCHING_PAUSED, MATCHING_PAUSED)
        )
        for client in self._clients:
            client.send_notice(code, message)

    def banned_until(self, *scopes: str) -> float | None:
        """When the latest ban covering any of the hashed ``scopes`` ends."""
        reports = self.gate.reports
        return None if reports is None else reports.banned_until(*scopes)

    def stats(self) -> Stats:
        return self.matchmaker.stats()

    @property
    def sessions_away(self) -> int:
        """How many sessions wait out the resume grace now."""
        return len(self._graces)

    def admission(self, keys: AddressKeys) -> dict[str, object]:
        """Whether a WebSocket from the address with these ``keys`` would be
        admitted now, and if not why, as ``GET /admission`` answers
        (``docs/protocol.md``).  Nothing is taken or counted."""
        now = self._reactor.seconds()
        if not self.ready:
            return _refused("starting", "The server is starting. Try again in a moment.", 5.0)
        until = self.banned_until(*keys.scopes)
        if until is not None:
            return {
                **_refused(
                    "banned", "Your address was banned after reports.", max(0.0, until - now)
                ),
                "until": math.ceil(until),
            }
        refused = self.gate.addresses.refusal(keys.address, now)
        if refused is None:
            return {"admitted": True}
        why, retry_after = refused
        if why == "total":
            return _refused("server_full", "The server is full. Try again in a minute.", 30.0)
        if why == "concurrent":
            return _refused(
                "too_many_connections",
                "Too many connections from your network. Close a tab and try again.",
                30.0,
            )
        return _refused(
            "too_many_attempts",
            "Too many new connections from your network in the last minute.",
            retry_after,
        )

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
