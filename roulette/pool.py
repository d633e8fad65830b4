"""A pool of strangers shared by many processes through Redis.

:class:`RedisMatchmaker` implements :class:`roulette.core.Matchmaker` for a
process (a *node*) that shares its waiting room with other nodes: every
decision about who meets whom is a Lua script run atomically in Redis
(:mod:`roulette.pool_scripts`), with the same rules as the in-memory
matchmaker.  What the scripts decide reaches the nodes as notices published
on each node's channel; a node tells its own clients.

Events from one partner to the other never wait on a script: partners on one
node are relayed in memory, partners on two nodes through a ``PUBLISH`` to
the other node's channel, which Redis passes on without storing.

Each node keeps, for each of its clients, the *generation* of the last
command that changed its chat (next, stop, report).  A notice carries the
generation the script saw; one older than the client's current generation
describes a chat the client has already left, and is dropped.  That keeps
what a client is told in the order in which Redis decided it, and never
about a chat behind it.

A node renews a lease in Redis every third of ``lease``; on renewal it also
takes the clients of nodes whose lease has run out out of the pool, so the
partners of a node that died are told within a lease and a third.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis
import txredisapi
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from roulette import pool_scripts as scripts
from roulette.abuse import AddressKeys, Ban, Reports
from roulette.core import MAX_NEVER_PAIRS, Peer, ReportedChat, Stats

log = Logger()

#: Seconds a node's lease lasts; it is renewed every third of it.
LEASE = 3.0

#: Seconds a node waits for another to hand a session over, and for which
#: it passes on what reaches a client it handed over.
HANDOVER_TIMEOUT = 2.0
MOVED_FOR = 10.0


@dataclass(frozen=True)
class RedisAddress:
    """Where the pool's Redis is, as ``--redis`` names it."""

    endpoint: Callable[[Any], IStreamClientEndpoint]
    db: int
    username: str | None
    password: str | None
    #: For log lines: the URL without its password.
    display: str


def parse_redis_url(url: str) -> RedisAddress:
    """Read ``redis://[user:password@]host[:port][/db]``, ``rediss://``
    (TLS) or ``unix:///path[?db=N]``; ``ValueError`` names what is wrong."""
    parts = urlsplit(url)
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    display = url if password is None else url.replace(f":{parts.password}@", ":***@", 1)
    if parts.scheme in ("redis", "rediss"):
        host = parts.hostname or "localhost"
        try:
            port = parts.port or 6379
        except ValueError:
            raise ValueError(f"{display}: the port is not a number from 0 to 65535") from None
        db_text = parts.path.strip("/") or "0"
        if not db_text.isdigit():
            raise ValueError(f"{display}: the database must be a number, as in redis://host/0")
        tls = parts.scheme == "rediss"

        def tcp(reactor: Any) -> IStreamClientEndpoint:
            endpoint: IStreamClientEndpoint = HostnameEndpoint(reactor, host, port, timeout=5)
            if tls:
                endpoint = wrapClientTLS(optionsForClientTLS(host), endpoint)
            return endpoint

        return RedisAddress(tcp, int(db_text), username, password, display)
    if parts.scheme == "unix":
        path = parts.path
        if not path:
            raise ValueError(f"{display}: a unix socket needs a path, as in unix:///run/redis.sock")
        db_values = parse_qs(parts.query).get("db", ["0"])
        if not db_values[0].isdigit():
            raise ValueError(f"{display}: the database must be a number, as in ?db=0")

        def unix(reactor: Any) -> IStreamClientEndpoint:
            return UNIXClientEndpoint(reactor, path, timeout=5)

        return RedisAddress(unix, int(db_values[0]), username, password, display)
    raise ValueError(f"{display}: the URL must start with redis://, rediss:// or unix://")


#: Seconds the events for other nodes are gathered before they are written
#: to Redis together (see ``_Commands``): the most a relayed event waits,
#: so that Redis and the receiving node wake once for several (measured in
#: docs/performance.md: 2 ms takes a fifth of the CPU a message costs).
RELAY_DELAY = 0.002

#: Seconds a node leaving the pool waits for Redis to take note.
RETIRE_TIMEOUT = 2.0

#: Seconds between tries to reach Redis: at first, and at most (with jitter).
RETRY_FIRST = 0.5
RETRY_MOST = 2.0


def _retry_soon(factory: Any) -> None:
    """Try to reach Redis again every two seconds at most, so that pairing
    resumes within a few seconds of Redis coming back."""
    factory.initialDelay = RETRY_FIRST
    factory.maxDelay = RETRY_MOST


def _keys_text(keys: AddressKeys) -> str:
    return " ".join((keys.address, keys.network, *keys.scopes))


def _keys_from_text(text: str) -> AddressKeys | None:
    parts = text.split()
    if len(parts) < 3:
        return None
    return AddressKeys(parts[0], parts[1], tuple(parts[2:]))


def _command(*args: str) -> bytes:
    """A command as Redis reads it, encoded by hiredis."""
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]  # its stub types a 1-tuple
    return packed


#: Redis sends no reply to the command after this one (Redis 3.2 and later).
_SKIP_REPLY = _command("CLIENT", "REPLY", "SKIP")


def _relay_failed(failure: Failure) -> None:
    log.failure("relaying an event to another node failed", failure)


class _Elsewhere:
    """A client of another node, as a report names it: this node can tell
    it nothing (its own node does); its address keys, for the ban rules."""

    def __init__(self, client: str, keys: AddressKeys | None = None) -> None:
        self.client = client
        self.keys = keys

    def __repr__(self) -> str:
        return f"<client {self.client} of another node>"

    def send_waiting(self) -> None:
        pass

    def send_paired(self, offer: bool = False, common: Sequence[str] = ()) -> None:
        pass

    def send_partner_left(self) -> None:
        pass

    def send_wait(self, reason: str | None, until: float | None = None) -> None:
        pass

    def send_partner_away(self) -> None:
        pass

    def send_partner_back(self) -> None:
        pass

    def send_event(self, event: bytes) -> None:
        pass


def _tell(peer: Peer, kind: str) -> None:
    if kind == "A":
        peer.send_partner_away()
    else:
        peer.send_partner_back()


def _no_delay(transport: Any) -> None:
    """Send small writes at once (``TCP_NODELAY``).  With Nagle's algorithm a
    relayed event, to which Redis sends no reply, could wait for the ACK of
    the one before it, which the kernel delays by up to 40 ms."""
    set_no_delay = getattr(transport, "setTcpNoDelay", None)  # through TLS too
    if set_no_delay is not None:
        try:
            set_no_delay(True)
        except OSError:
            pass  # not TCP: a UNIX socket has no such delay


class _Commands(txredisapi.RedisProtocol):  # type: ignore[misc]  # untyped library
    """The node's connection for commands and scripts.

    Events for other nodes are published on it without a reply, gathered
    for up to :data:`RELAY_DELAY` and written together: Redis then reads
    them at once and passes them on to each node in one write, so that a
    node wakes once for several events.  Every other command first writes
    out what is gathered before it, so Redis runs all of them in the order
    the node sent them (a message before the "next" that follows it).
    """

    def connectionMade(self) -> Deferred[None]:
        _no_delay(self.transport)
        self._gathered: list[bytes] = []
        self._writing: IDelayedCall | None = None
        d: Deferred[None] = super().connectionMade()
        return d

    def publish_unanswered(self, channel: str, message: str) -> None:
        """``PUBLISH`` with no reply, written within :data:`RELAY_DELAY`."""
        self._gathered += (_SKIP_REPLY, _command("PUBLISH", channel, message))
        if self._writing is None:
            self._writing = self.factory.clock.callLater(RELAY_DELAY, self._write_gathered)

    def _write_gathered(self) -> None:
        self._writing = None
        gathered, self._gathered = self._gathered, []
        if gathered and self.connected:
            self.transport.write(b"".join(gathered))

    def execute_command(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        if self._writing is not None:
            self._writing.cancel()
            self._write_gathered()
        d: Deferred[Any] = super().execute_command(*args, **kwargs)
        return d

    def connectionLost(self, why: Failure) -> None:
        if self._writing is not None:
            self._writing.cancel()
            self._writing = None
        self._gathered = []  # lost with the connection, as a write would be
        super().connectionLost(why)


class _Subscriber(txredisapi.SubscriberProtocol):  # type: ignore[misc]  # untyped library
    """The node's subscription to its channel, made again on every connection."""

    def connectionMade(self) -> Deferred[None]:
        _no_delay(self.transport)
        d: Deferred[None] = super().connectionMade()
        matchmaker: RedisMatchmaker = self.factory.matchmaker
        d.addCallback(lambda _: self.subscribe([matchmaker.channel, matchmaker.bans_channel]))
        d.addCallback(lambda _: matchmaker._subscribed())
        d.addErrback(lambda failure: log.failure("subscribing failed", failure))
        return d

    def messageReceived(self, pattern: object, channel: str, message: str) -> None:
        matchmaker: RedisMatchmaker = self.factory.matchmaker
        if channel == matchmaker.bans_channel:
            scope, _, until = message.partition(" ")
            matchmaker._ban_heard(scope, float(until))
        else:
            matchmaker._notice(message)

    def connectionLost(self, why: Failure) -> None:
        super().connectionLost(why)
        self.factory.matchmaker._unsubscribed()


class RedisMatchmaker(Service):
    """The :class:`~roulette.core.Matchmaker` of one node of a shared pool.

    :param address: where Redis is (:func:`parse_redis_url`).
    :param rng: the source of every random choice (and of the node id).
    :param reactor: the clock (timers and ``seconds()``) and the network.
    :param clock: the clock the pool's rules run on (default: the
        reactor's); every node of a pool must agree on it.
    """

    def __init__(
        self,
        address: RedisAddress,
        rng: random.Random,
        reactor: Any,
        cooldown: float = 60.0,
        prefix: str = "roulette:",
        lease: float = LEASE,
        clock: IReactorTime | None = None,
        node: str | None = None,
        max_never: int = MAX_NEVER_PAIRS,
        interest_wait: float = 0.0,
    ) -> None:
        self._address = address
        self._rng = rng
        self._reactor = reactor
        self._clock: IReactorTime = clock if clock is not None else reactor
        self._cooldown = cooldown
        self._prefix = prefix
        self._lease = lease
        self._max_never = max_never
        self._interest_wait = interest_wait
        #: This node's id in the pool.
        self.node = node if node is not None else format(rng.getrandbits(48), "012x")
        self.channel = f"{prefix}n:{self.node}"
        #: Where bans are announced to every node.
        self.bans_channel = f"{prefix}bans"
        self._ids: dict[Peer, str] = {}
        self._peers: dict[str, Peer] = {}
        self._gen: dict[str, int] = {}
        self._identity: dict[str, str] = {}
        self._keys: dict[str, str] = {}
        #: Connections per address key this node holds in the pool's count.
        self._held: dict[str, int] = {}
        #: What each client was last told: "w" waiting, "p" paired, "i" idle.
        self._status: dict[str, str] = {}
        self._partner: dict[str, str] = {}
        #: Clients told to make the offer in their chat.
        self._offers: set[str] = set()
        #: The queue each client joins next, where not the text one ("").
        self._queue: dict[str, str] = {}
        #: Each client's interests, as the scripts take them (each followed
        #: by a newline), where it has any and interests are on.
        self._interests: dict[str, str] = {}
        self._said: set[str] = set()
        #: The key each client's cooldowns go by, where it has a session's.
        self._ck: dict[str, str] = {}
        #: The clients away (see Matchmaker.away), each with whether it was
        #: waiting when it went.
        self._away: dict[str, bool] = {}
        #: Sessions asked of other nodes (see request_session), by the id
        #: their client gets here; and clients handed over to other nodes,
        #: by their old id, for a few seconds (relays on their way follow).
        self._incoming: dict[str, Deferred[dict[str, Any] | None]] = {}
        self._moved: dict[str, str] = {}
        #: Called when another node asks for a session this one has live
        #: (its token's hash in hex, the address hash, the client id it
        #: gets there): see hand_over.
        self.on_handover: Callable[[str, str, str], object] | None = None
        self._seq = itertools.count(1)
        self._stats = Stats(0, 0, 0)
        self.nodes = 0
        self._pending: set[Deferred[Any]] = set()
        self._markers: dict[str, Deferred[None]] = {}
        self._wakeup: IDelayedCall | None = None
        self._renewal = LoopingCall(self._renew)
        self._renewal.clock = self._clock
        self._redis: Any = None
        self._command_factory: Any = None
        self._subscriber_factory: Any = None
        self._ready: Deferred[None] = Deferred()
        #: Whether Redis takes ``CLIENT REPLY SKIP`` (see :meth:`relay`).
        self._skip_replies = False
        self._listening = False
        self._joined_once = False
        #: Called with ``False`` when the node is cut off from Redis (no
        #: pairing can happen), and with ``True`` once it is back in the pool.
        self.on_matching: Callable[[bool], object] | None = None
        #: Whether the node is cut off from the pool.
        self.paused = False
        #: Called with a ban's scope and end, for every ban of the pool (at
        #: joining, those in force).
        self.on_ban: Callable[[str, float], object] | None = None
        #: The key with which every node of the pool hashes client addresses
        #: (from Redis: the first node's), once known.
        self.secret: bytes | None = None

    # -- the service -----------------------------------------------------------

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        address = self._address
        endpoint = address.endpoint(self._reactor)
        factory = txredisapi.RedisFactory(
            address.display,
            address.db,
            1,
            isLazy=True,
            password=address.password,
            username=address.username,
            convertNumbers=False,
        )
        factory.protocol = _Commands
        factory.clock = self._reactor
        _retry_soon(factory)
        factory.startConnecting(endpoint)
        self._command_factory = factory
        self._redis = factory.handler
        subscriber = txredisapi.SubscriberFactory(isLazy=True)
        subscriber.protocol = _Subscriber
        subscriber.password = address.password
        subscriber.username = address.username
        subscriber.matchmaker = self
        _retry_soon(subscriber)
        subscriber.startConnecting(address.endpoint(self._reactor))
        self._subscriber_factory = subscriber
        self._renewal.start(self._lease / 3, now=True)
        proposal = self._rng.getrandbits(256).to_bytes(32, "big").hex()
        self._call(scripts.SECRET, proposal, deadline=False).addCallback(self._have_secret)
        # Only a Redis that answers CLIENT REPLY (a proxy in front may not)
        # is asked to leave out the replies to relayed events.
        self._redis.execute_command("CLIENT", "REPLY", "ON").addCallbacks(
            self._replies_can_be_skipped, lambda _: None
        )

    def _replies_can_be_skipped(self, answer: object) -> None:
        self._skip_replies = answer == "OK"

    def ready(self) -> Deferred[None]:
        """Fires once the node has joined the pool, knows its secret and
        hears its channel."""
        d: Deferred[None] = Deferred()
        self._ready.addCallback(lambda _: d.callback(None))
        return d

    def _have_secret(self, secret: str | None) -> None:
        if secret:
            self.secret = bytes.fromhex(secret)
            self._joined()

    def _subscribed(self) -> None:
        self._listening = True
        if self._joined_once:
            self._resync()
        self._load_bans()
        self._joined()

    def _load_bans(self) -> None:
        """Hear the bans in force (those made while the node was away too)."""

        def heard(flat: list[str] | None) -> None:
            for scope, until in zip(flat[::2], flat[1::2], strict=True) if flat else ():
                self._ban_heard(scope, float(until))

        self._call(scripts.BANS, deadline=False).addCallback(heard)

    def _ban_heard(self, scope: str, until: float) -> None:
        if self.on_ban is not None:
            self.on_ban(scope, until)

    def admit_address(self, key: str, most: int) -> Deferred[bool]:
        """Take one of the ``most`` WebSocket connections the address
        ``key`` may hold in the whole pool; ``False`` when it holds them all.
        While the node is cut off from the pool, its own count must do."""
        if self.paused or not self._listening:
            return defer.succeed(True)
        self._held[key] = self._held.get(key, 0) + 1
        d = self._call(scripts.ADMIT, self.node, key, str(most), deadline=False)

        def taken(result: Any) -> bool:
            if result is None:  # Redis failed: the node's own count decides
                return True
            if int(result) == 0:
                self._give_back_locally(key)
                return False
            return True

        return d.addCallback(taken)

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
        """Keep a session in the pool for ``lifetime`` seconds, under its
        token's ``digest`` (in place of ``replaces``, its last token's), so
        that any process may take it up once it is not ``live`` here."""
        self._call(
            scripts.KEEP_SESSION,
            digest,
            address,
            sid,
            "1" if ended else "0",
            str(math.ceil(lifetime * 1000)),
            self.node if live else "",
            replaces,
            deadline=False,
        )

    def take_session(self, digest: str, address: str) -> Deferred[tuple[str, bool] | str | None]:
        """The id of the session kept under ``digest`` for ``address``, and
        whether its chat ended while it was away; it is kept no more.
        The id of the node that has it live, while one does; ``None`` when
        there is none (or Redis cannot say)."""
        if self.paused or not self._listening:
            return defer.succeed(None)
        d = self._call(scripts.TAKE_SESSION, digest, address, deadline=False)

        def taken(result: Any) -> tuple[str, bool] | str | None:
            if not result:
                return None
            if len(result) == 1:
                return str(result[0])
            sid, ended = result
            return str(sid), ended == "1"

        return d.addCallback(taken)

    def request_session(
        self, node: str, digest: str, address: str
    ) -> Deferred[dict[str, Any] | None]:
        """Ask ``node``, which has the session of the token hashed to
        ``digest`` live, to hand it over (see :meth:`hand_over`): what it
        passes on, with the client's state (its id here under ``client``),
        or ``None`` if it does not within ``HANDOVER_TIMEOUT`` seconds."""
        if self.paused or not self._listening:
            return defer.succeed(None)
        client = f"{self.node}:{next(self._seq)}"
        d: Deferred[dict[str, Any] | None] = Deferred()
        self._incoming[client] = d

        def too_late() -> None:
            if self._incoming.pop(client, None) is d:
                d.callback(None)

        timer = self._clock.callLater(HANDOVER_TIMEOUT, too_late)

        def answered(state: dict[str, Any] | None) -> dict[str, Any] | None:
            if timer.active():
                timer.cancel()
            return state

        d.addCallback(answered)
        self._notify(node, f"H {digest} {address} {client}")
        return d

    def hand_over(self, peer: Peer, client: str, passed: dict[str, Any]) -> None:
        """Hand ``peer`` over to the node whose client it is now (``client``,
        that node's id for it), with ``passed`` (JSON): its chat and
        cooldowns go with it; this node forgets it without a word."""
        mine = self._ids[peer]
        passed = {
            **passed,
            "status": self._status[mine],
            "was_waiting": self._away.get(mine, False),
        }
        old = self._forget_locally(peer)
        self._moved[old] = client
        self._clock.callLater(MOVED_FOR, self._moved.pop, old, None)
        self._call(scripts.MOVE, old, client, json.dumps(passed), deadline=False)

    def adopt(self, peer: Peer, state: dict[str, Any]) -> None:
        """Take up a client another node handed over (``state``: what
        :meth:`request_session` answered), away, as ``peer``."""
        client = str(state["client"])
        self._ids[peer] = client
        self._peers[client] = peer
        self._gen[client] = int(state["gen"])
        self._status[client] = str(state["status"])
        self._identity[client] = str(state["id"])
        self._keys[client] = str(state["keys"])
        for table, field in ((self._partner, "partner"), (self._queue, "q")):
            if state[field]:
                table[client] = str(state[field])
        if state["tags"]:
            self._interests[client] = str(state["tags"])
        if state["ck"]:
            self._ck[client] = str(state["ck"])
        if state["offer"] == "1":
            self._offers.add(client)
        self._away[client] = bool(state["was_waiting"])
        partner = self._partner.get(client)
        if partner is not None and self._partner.get(partner) == state["old"]:
            # A partner of this node knows the new id now, not when the
            # notice ("N") that tells it comes, after this one.
            self._partner[partner] = client

    def release_address(self, key: str) -> None:
        """Give back a connection :meth:`admit_address` took."""
        if self._give_back_locally(key):
            self._call(scripts.RELEASE, self.node, key, deadline=False)

    def _give_back_locally(self, key: str) -> bool:
        held = self._held.get(key, 0)
        if held <= 0:
            return False
        if held == 1:
            del self._held[key]
        else:
            self._held[key] = held - 1
        return True

    def report_chat(
        self,
        reporter: AddressKeys,
        reported: AddressKeys,
        seconds: float,
        sent: bool,
        rules: Reports,
    ) -> Deferred[Ban | None]:
        """Count a report toward a ban with the pool's reports (``rules``
        as :class:`~roulette.abuse.Reports` has them).  A ban it brings
        about reaches every node through :attr:`on_ban`, this one too."""
        d = self._call(
            scripts.REPORT,
            reporter.address,
            reporter.network,
            _keys_text(reported),
            repr(float(seconds)),
            "1" if sent else "0",
            str(rules.threshold),
            repr(float(rules.window)),
            repr(float(rules.ban_seconds)),
            repr(float(rules.memory)),
            repr(float(rules.min_chat_seconds)),
            str(rules.bans_per_reporter),
            deadline=False,
        )

        def ban(result: list[str] | None) -> Ban | None:
            return Ban(result[0], float(result[1])) if result else None

        return d.addCallback(ban)

    def _joined(self) -> None:
        if self.secret is not None and self._listening and not self._ready.called:
            self._joined_once = True
            self._ready.callback(None)

    def _unsubscribed(self) -> None:
        """The node's line to Redis is down: notices are lost until it is
        back, and nobody can be paired."""
        self._listening = False
        if not self.running or not self._joined_once or self.paused:
            return
        log.warn("cut off from the pool's Redis: matching is paused")
        self.paused = True
        if self.on_matching is not None:
            self.on_matching(False)

    def _resync(self) -> None:
        """Back in touch with Redis: set right what was missed meanwhile
        (see ``pool_scripts.SYNC``), then matching resumes."""
        values: list[str] = []
        for client in self._peers:
            values += [
                client,
                self._identity[client],
                str(self._gen[client]),
                self._status[client],
                self._partner.get(client, ""),
                self._keys[client],
                self._queue.get(client, ""),
                "1" if client in self._offers else "0",
                self._interests.get(client, ""),
                self._ck.get(client, ""),
            ]
        self._call(scripts.SYNC, self.node, self._wait_text, *values)
        counts: list[str] = []
        for key, held in self._held.items():
            counts += [key, str(held)]
        self._call(scripts.RECOUNT, self.node, *counts, deadline=False)

    def _resumed(self) -> None:
        """The notices of a resync have all been heard: matching resumes."""
        if not self.paused:
            return
        log.info("back in the pool: matching resumes")
        self.paused = False
        if self.on_matching is not None:
            self.on_matching(True)

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        if self._renewal.running:
            self._renewal.stop()
        if self._wakeup is not None and self._wakeup.active():
            self._wakeup.cancel()
        self._wakeup = None
        # Leave the pool, unless Redis cannot be reached: then the lease runs out.
        retired = self._call(scripts.RETIRE, self.node, deadline=False)
        retired.addTimeout(RETIRE_TIMEOUT, self._reactor)
        try:
            yield retired
        except Exception:
            log.info("left the pool without a word: its lease runs out")
        yield self._command_factory.disconnect()
        yield self._subscriber_factory.disconnect()

    # -- the Matchmaker interface ---------------------------------------------

    def connect(
        self,
        peer: Peer,
        identity: Hashable | None = None,
        queue: str = "",
        interests: Sequence[str] = (),
        join: bool = True,
    ) -> None:
        client = f"{self.node}:{next(self._seq)}"
        self._ids[peer] = client
        self._peers[client] = peer
        self._gen[client] = 0
        self._status[client] = "w" if join else "i"
        self._identity[client] = str(identity) if identity is not None else client
        keys = getattr(peer, "keys", None)  # a connection's, for reports and bans
        self._keys[client] = _keys_text(keys) if isinstance(keys, AddressKeys) else ""
        if queue:
            self._queue[client] = queue
        tags = self._tags(interests)
        if tags:
            self._interests[client] = tags
        # A session's cooldowns outlive its connections: they go by its id.
        ck = getattr(peer, "sid", "")
        if not isinstance(ck, str):
            ck = ""
        if ck:
            self._ck[client] = ck
        self._call(
            scripts.CONNECT,
            client,
            self._identity[client],
            self._keys[client],
            queue,
            tags,
            self._wait_text,
            "1" if join else "0",
            ck,
        )

    def set_queue(self, peer: Peer, queue: str) -> None:
        client = self._ids[peer]
        if queue == self._queue.get(client, ""):
            return
        if queue:
            self._queue[client] = queue
        else:
            del self._queue[client]
        self._call(scripts.QUEUE, client, queue, deadline=False)

    def set_interests(self, peer: Peer, interests: Sequence[str]) -> None:
        client = self._ids[peer]
        tags = self._tags(interests)
        if tags:
            self._interests[client] = tags
        else:
            self._interests.pop(client, None)
        self._call(scripts.INTERESTS, client, tags, self._wait_text)

    def next(self, peer: Peer) -> None:
        client = self._leave_locally(peer, "w")
        self._call(scripts.LEAVE, client, str(self._gen[client]), "next", *self._leave_args())

    def stop(self, peer: Peer) -> None:
        client = self._leave_locally(peer, "i")
        self._call(scripts.LEAVE, client, str(self._gen[client]), "stop", *self._leave_args())

    def report(
        self, peer: Peer, reported: Callable[[ReportedChat | None], object] | None = None
    ) -> None:
        before = self._status[self._ids[peer]]
        client = self._leave_locally(peer, "w")
        gen = self._gen[client]
        now = self._clock.seconds()
        d = self._call(scripts.LEAVE, client, str(gen), "report", *self._leave_args(), now=now)

        def done(result: list[str] | None) -> None:
            if result is None or len(result) < 5:
                # No partner by then (or Redis failed): nothing was done, and
                # the client is as it was, unless something happened since.
                if self._gen.get(client) == gen and self._status[client] == "w":
                    self._status[client] = before
                if reported is not None:
                    reported(None)
                return
            if reported is None:
                return
            partner, identity, began, sent = result[1:5]
            keys = _keys_from_text(result[5]) if len(result) > 5 else None
            peer = self._peers.get(partner) or _Elsewhere(partner, keys)
            reported(ReportedChat(peer, identity, now - float(began), sent == "1"))

        d.addCallback(done)

    def disconnect(self, peer: Peer) -> None:
        if peer in self._ids:
            client = self._forget_locally(peer)
            self._call(scripts.DISCONNECT, client, repr(float(self._cooldown)))

    def _forget_locally(self, peer: Peer) -> str:
        """Forget all this node keeps of ``peer``'s client; its id."""
        client = self._ids.pop(peer)
        del self._peers[client]
        for table in (self._gen, self._status, self._identity, self._keys):
            del table[client]
        for other in (self._partner, self._queue, self._interests, self._ck, self._away):
            other.pop(client, None)
        self._offers.discard(client)
        self._said.discard(client)
        return client

    def away(self, peer: Peer) -> None:
        client = self._ids[peer]
        if client in self._away:
            return
        waiting = self._status[client] == "w"
        self._away[client] = waiting
        if waiting:
            # Out of the queue, as a stop takes it; back, it joins again.
            self.stop(peer)
        else:
            self._tell_partner(client, "A")

    def back(self, peer: Peer) -> None:
        client = self._ids[peer]
        was_waiting = self._away.pop(client, None)
        if was_waiting is None:
            return
        partner = self._partner.get(client)
        if partner is not None:
            if partner in self._away:
                # Both dropped: this one is back, its partner not yet.  (One
                # of another node that is away answers "B" with an "A".)
                peer.send_partner_away()
            else:
                self._tell_partner(client, "B")
                peer.send_partner_back()
        elif was_waiting and self._status[client] != "w":
            self.next(peer)

    def _forward(self, kind: str, client: str, rest: str) -> None:
        """A notice for a client handed over to another node meanwhile: on
        to its new id there."""
        new = self._moved[client]
        self._notify(new.rpartition(":")[0], f"{kind} {new} {rest}")

    def _tell_partner(self, client: str, kind: str) -> None:
        """Tell the client's partner that it is away (``kind`` "A") or back
        ("B"), wherever the partner is."""
        other = self._partner.get(client)
        if other is None:
            return
        target = self._peers.get(other)
        if target is not None:
            if self._partner.get(other) == client:
                _tell(target, kind)
            return
        if not self.paused:
            self._notify(other.rpartition(":")[0], f"{kind} {other} {client}")

    def _notify(self, node: str, message: str) -> None:
        """Publish ``message`` on ``node``'s channel (Redis keeps none of it)."""
        self._redis.publish(f"{self._prefix}n:{node}", message).addErrback(_relay_failed)

    def relay(self, peer: Peer, event: bytes, said: bool = False) -> None:
        client = self._ids.get(peer)
        if client is None:
            return
        other = self._partner.get(client)
        if other is None:
            return
        if said and client not in self._said:
            self._said.add(client)
            self._call(scripts.SAID, client, other, deadline=False)
        target = self._peers.get(other)
        if target is not None:
            # Both on this node: only while each is the other's partner.
            if self._partner.get(other) == client:
                target.send_event(event)
            return
        if self.paused:
            # Cut off from Redis, the other node cannot be reached: nothing
            # is queued up meanwhile (the clients have been told).
            return
        node = other.rpartition(":")[0]
        channel = f"{self._prefix}n:{node}"
        message = f"E {other} {client} {event.decode('utf-8')}"
        live = self._live()
        if self._skip_replies and live is not None:
            live.publish_unanswered(channel, message)
        else:
            self._redis.publish(channel, message).addErrback(_relay_failed)

    def stats(self) -> Stats:
        """The pool's counts as of the last renewal (a third of a lease ago
        at most)."""
        return self._stats

    def local_stats(self) -> Stats:
        """This node's own clients: online, waiting and chatting (metrics)."""
        told = list(self._status.values())
        return Stats(len(told), told.count("w"), told.count("p"))

    def next_deadline(self) -> float | None:
        return None  # the node keeps its own timer

    def advance(self) -> None:
        self._call(scripts.ADVANCE)

    # -- views, for tests and operators -----------------------------------------

    def client_id(self, peer: Peer) -> str | None:
        return self._ids.get(peer)

    def partner_id(self, peer: Peer) -> str | None:
        """The id of the peer's partner as this node last heard, or ``None``."""
        client = self._ids.get(peer)
        return None if client is None else self._partner.get(client)

    def settle(self) -> Deferred[None]:
        """Fires once every call made so far has been answered and every
        notice published to this node before that has been heard."""
        pending = list(self._pending)
        d = defer.DeferredList(pending, consumeErrors=True)
        marker = f"M {self.node}.{next(self._seq)}"
        heard: Deferred[None] = Deferred()
        self._markers[marker] = heard

        def publish(_: object) -> Deferred[Any]:
            return cast(Deferred[Any], self._redis.publish(self.channel, marker))

        d.addCallback(publish)
        d.addCallback(lambda _: heard)
        return cast(Deferred[None], d)

    # -- internals ---------------------------------------------------------------

    def _leave_args(self) -> tuple[str, str, str]:
        return (repr(float(self._cooldown)), str(self._max_never), self._wait_text)

    @property
    def _wait_text(self) -> str:
        return repr(float(self._interest_wait))

    def _tags(self, interests: Sequence[str]) -> str:
        """Interests as the scripts take them: each followed by a newline
        (none when interests are off)."""
        if self._interest_wait <= 0:
            return ""
        return "".join(f"{tag}\n" for tag in interests)

    def _leave_locally(self, peer: Peer, status: str) -> str:
        """The client's chat is over from now on, whatever Redis says next."""
        client = self._ids[peer]
        self._gen[client] += 1
        self._status[client] = status
        self._partner.pop(client, None)
        self._offers.discard(client)
        self._said.discard(client)
        return client

    def _call(
        self, script: str, *args: str, now: float | None = None, deadline: bool = True
    ) -> Deferred[Any]:
        """Run ``script``; ``deadline``: it returns when advance must run next
        (alone or first of a list), for which the node's timer is set."""
        if now is None:
            now = self._clock.seconds()
        seed = self._rng.getrandbits(31)
        ttl = str(math.ceil(2 * self._lease * 1000))
        redis = self._live() or self._redis
        d = redis.eval(script, [], [self._prefix, repr(float(now)), str(seed), ttl, *args])
        self._track(d)
        if deadline:
            d.addCallback(self._schedule)
        return cast(Deferred[Any], d)

    def _live(self) -> _Commands | None:
        """The connection to Redis when it is up: commands go straight to
        it, not through txredisapi's handler, which waits on a Deferred for
        a connection each time (a tenth of a node's CPU in a storm)."""
        live = self._command_factory.pool
        if live and live[0].connected:
            return cast(_Commands, live[0])
        return None

    def _track(self, d: Deferred[Any]) -> None:
        pending = self._pending
        pending.add(d)

        def untrack(result: object) -> object:
            pending.discard(d)
            if isinstance(result, Failure):
                log.failure("a call to the pool's Redis failed", result)
                return None
            return result

        d.addBoth(untrack)

    def _schedule(self, result: Any) -> Any:
        """Arm the timer for the deadline a script returned."""
        deadline = result[0] if isinstance(result, list) else result
        if deadline:
            when = float(deadline)
            wakeup = self._wakeup
            if wakeup is not None and wakeup.active():
                if wakeup.getTime() <= when:
                    return result
                wakeup.cancel()
            self._wakeup = self._clock.callLater(max(0.0, when - self._clock.seconds()), self._wake)
        return result

    def _wake(self) -> None:
        self._wakeup = None
        self.advance()

    def _renew(self) -> Deferred[Any]:
        online = len(self._peers)
        chatting = len(self._partner)
        d = self._call(
            scripts.RENEW, self.node, repr(float(self._lease)), str(online), str(chatting)
        )

        def counts(result: Any) -> None:
            if isinstance(result, list) and len(result) >= 4:
                online, waiting, chatting, nodes = (int(x) for x in result[:4])
                self._stats = Stats(online, waiting, chatting)
                self.nodes = nodes

        d.addCallback(counts)
        return d

    def _notice(self, message: str) -> None:
        kind, _, rest = message.partition(" ")
        if kind == "E":
            client, sender, payload = rest.split(" ", 2)
            peer = self._peers.get(client)
            if peer is not None and self._partner.get(client) == sender:
                peer.send_event(payload.encode("utf-8"))
            elif client in self._moved:
                self._forward(kind, client, f"{sender} {payload}")
            return
        if kind in ("A", "B"):
            client, sender = rest.split(" ")
            if client in self._moved:
                self._forward(kind, client, sender)
                return
            peer = self._peers.get(client)
            if peer is not None and self._partner.get(client) == sender:
                _tell(peer, kind)
                if kind == "B" and client in self._away:
                    # The partner back is told this one is away itself.
                    self._tell_partner(client, "A")
            return
        if kind == "H":
            # Another node asks for a session this one has live.
            digest, address, client = rest.split(" ")
            if self.on_handover is not None:
                self.on_handover(digest, address, client)
            return
        if kind == "V":
            state = json.loads(rest)
            asked = self._incoming.pop(str(state["client"]), None)
            if asked is not None:
                asked.callback(state)
            else:
                # Asked for, but given up on: nobody here takes it.
                self._call(scripts.DISCONNECT, str(state["client"]), "0")
            return
        if kind == "N":
            # A partner was handed over to another node: its new id.
            client, old, new = rest.split(" ")
            if self._partner.get(client) == old:
                self._partner[client] = new
            return
        if kind == "M":
            heard = self._markers.pop(message, None)
            if heard is not None:
                heard.callback(None)
            return
        if kind == "R":
            self._resumed()
            return
        if kind in ("P", "Q"):
            # After the pairing, on lines of their own: the interests shared.
            rest, *common = rest.split("\n")
        if kind == "Q":
            # Two clients of this node paired with each other: both know
            # their partner before either is told, so that what one says at
            # once is not taken for a word to a stranger it has not met.
            first, first_gen, second, second_gen = rest.split(" ")
            told = []
            for client, gen, partner, offer in (
                (first, first_gen, second, True),
                (second, second_gen, first, False),
            ):
                peer = self._peers.get(client)
                if peer is not None and int(gen) >= self._gen[client]:
                    self._note_paired(client, partner, offer)
                    told.append((peer, offer))
            for peer, offer in told:
                peer.send_paired(offer, common)
            return
        fields = rest.split(" ")
        client = fields[0]
        peer = self._peers.get(client)
        if peer is None or int(fields[1]) < self._gen[client]:
            return  # gone, or about a chat the client has already left
        if kind == "W":
            self._partner.pop(client, None)
            self._offers.discard(client)
            self._status[client] = "w"
            peer.send_waiting()
        elif kind == "P":
            self._paired(client, peer, fields[2], fields[3] == "1", common)
        elif kind == "L":
            if self._partner.pop(client, None) is not None:
                self._left(client, peer)
        elif kind == "S":
            self._sync(client, peer, fields[2], fields[3] == "1", fields[4] == "1")

    def _note_paired(self, client: str, partner: str, offer: bool) -> None:
        self._partner[client] = partner
        self._status[client] = "p"
        self._said.discard(client)
        if offer:
            self._offers.add(client)
        else:
            self._offers.discard(client)

    def _paired(
        self, client: str, peer: Peer, partner: str, offer: bool, common: Sequence[str] = ()
    ) -> None:
        self._note_paired(client, partner, offer)
        peer.send_paired(offer, common)
        if self._away.get(client):
            # Paired by Redis just before it heard the client was away.
            self._away[client] = False
            self._tell_partner(client, "A")

    def _left(self, client: str, peer: Peer) -> None:
        self._status[client] = "i"
        self._offers.discard(client)
        self._said.discard(client)
        peer.send_partner_left()

    def _sync(self, client: str, peer: Peer, partner: str, waiting: bool, offer: bool) -> None:
        """A client's whole state, after the node was cut off: tell it what
        it missed, as the notice it missed would have."""
        if partner != "-":
            if self._partner.get(client) != partner:
                self._paired(client, peer, partner, offer)
            return
        if self._partner.pop(client, None) is not None:
            self._left(client, peer)  # its chat ended meanwhile
        elif waiting and self._status[client] != "w":
            self._status[client] = "w"
            peer.send_waiting()
