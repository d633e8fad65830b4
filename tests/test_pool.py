"""The pool shared through Redis: several nodes (matchmakers) over one real
``redis-server``, on one fake clock, checked through what their clients are
told."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from fakes import RecordingPeer
from redis_server import RedisServer
from twisted.internet import defer, reactor, task, threads

from roulette.abuse import AddressKeys, Ban, Reports
from roulette.core import ReportedChat, Stats
from roulette.pool import RedisMatchmaker, parse_redis_url

_prefixes = itertools.count()


class Pool:
    """Nodes of one pool (a key prefix of their own) on a fake clock."""

    def __init__(
        self,
        redis: RedisServer,
        cooldown: float = 60.0,
        lease: float = 3.0,
        url: str = "",
        interest_wait: float = 0.0,
    ) -> None:
        self.redis = redis
        self.interest_wait = interest_wait
        self.url = url or redis.url
        self.prefix = f"test{next(_prefixes)}:"
        self.cooldown = cooldown
        self.lease = lease
        self.clock = task.Clock()
        self.clock.advance(1000)
        self.nodes: list[RedisMatchmaker] = []

    async def node(
        self, seed: int = 0, before_start: Callable[[RedisMatchmaker], object] | None = None
    ) -> RedisMatchmaker:
        mm = RedisMatchmaker(
            parse_redis_url(self.url),
            random.Random(seed),
            reactor,
            cooldown=self.cooldown,
            prefix=self.prefix,
            lease=self.lease,
            clock=self.clock,
            interest_wait=self.interest_wait,
        )
        if before_start is not None:
            before_start(mm)
        mm.startService()
        await mm.ready()
        self.nodes.append(mm)
        await self.settle()
        return mm

    async def settle(self) -> None:
        """Until every call has been answered and every notice heard (twice
        over: a notice one node hears may come from another's call)."""
        for _ in range(2):
            for mm in self.nodes:
                if mm.running:
                    await mm.settle()

    async def tick(self, seconds: float, step: float = 0.5) -> None:
        """Let fake time pass in steps, as real time would: the nodes renew
        their leases and wake at their deadlines on the way."""
        left = seconds
        while left > 0:
            dt = min(step, left)
            self.clock.advance(dt)
            left -= dt
            await self.settle()

    async def kill(self, mm: RedisMatchmaker) -> None:
        """The node dies: it renews nothing more and says nothing."""
        mm.running = False
        mm._renewal.stop()
        if mm._wakeup is not None and mm._wakeup.active():
            mm._wakeup.cancel()
        await mm._command_factory.disconnect()
        await mm._subscriber_factory.disconnect()

    async def close(self) -> None:
        for mm in self.nodes:
            if mm.running:
                await mm.stopService()

    def keys(self) -> list[str]:
        return [k for k in self.redis.command("KEYS", f"{self.prefix}*").split("\n") if k]


@pytest.fixture
def pool(redis: RedisServer) -> Iterator[Pool]:
    p = Pool(redis)
    yield p
    pytest_twisted.blockon(defer.ensureDeferred(p.close()))


def peers(*names: str) -> list[RecordingPeer]:
    return [RecordingPeer(name) for name in names]


async def chat_across(
    pool: Pool, identities: tuple[str | None, str | None] = (None, None)
) -> tuple[RedisMatchmaker, RedisMatchmaker, RecordingPeer, RecordingPeer]:
    """Two nodes, and a client of each in a chat with the other."""
    n1 = await pool.node(1)
    n2 = await pool.node(2)
    a, b = peers("a", "b")
    n1.connect(a, identities[0])
    n2.connect(b, identities[1])
    await pool.settle()
    assert a.take() == [("waiting",), ("paired",)]
    assert b.take() == [("waiting",), ("paired",)]
    return n1, n2, a, b


@pytest_twisted.ensureDeferred
async def test_clients_of_two_nodes_meet_and_chat_both_ways(pool: Pool) -> None:
    n1 = await pool.node(1)
    n2 = await pool.node(2)
    a, b = peers("a", "b")
    n1.connect(a, "ip-a")
    await pool.settle()
    assert a.take() == [("waiting",)]
    n2.connect(b, "ip-b")
    await pool.settle()
    assert a.take() == [("paired",)]
    assert b.take() == [("waiting",), ("paired",)]
    n1.relay(a, b'{"type":"message","text":"hi from 1"}', said=True)
    n2.relay(b, b'{"type":"typing","active":true}')
    n2.relay(b, '{"type":"message","text":"h\u00e9llo \U0001f600"}'.encode(), said=True)
    await pool.settle()
    assert b.take() == [("event", b'{"type":"message","text":"hi from 1"}')]
    assert a.take() == [
        ("event", b'{"type":"typing","active":true}'),
        ("event", '{"type":"message","text":"h\u00e9llo \U0001f600"}'.encode()),
    ]
    assert n1.partner_id(a) == n2.client_id(b)
    # Redis keeps nothing that was said.
    for key in pool.keys():
        dump = pool.redis.command("DUMP", key)
        assert "hi from 1" not in dump and "llo" not in dump, key


async def a_burst_then_next(pool: Pool) -> None:
    """A client says many things and presses Next in one breath: its partner
    on another node hears all of them, in order, and then that it left."""
    n1, n2, a, b = await chat_across(pool)
    n2.relay(b, b"hi")
    await pool.settle()
    assert a.take() == [("event", b"hi")]
    said = [f'{{"type":"message","text":"{i}"}}'.encode() for i in range(200)]
    for event in said:
        n1.relay(a, event, said=True)
    n1.next(a)
    await pool.settle()
    assert b.take() == [*(("event", event) for event in said), ("partner_left",)]
    assert a.take() == [("waiting",)]
    # The commands after them got their own answers, not a relayed event's.
    assert n1.stats() == n2.stats()
    n3 = await pool.node(3)
    c = RecordingPeer("c")
    n3.connect(c)
    await pool.settle()
    assert c.take() == [("waiting",), ("paired",)]
    assert a.take() == [("paired",)]
    n3.relay(c, b"hello")
    await pool.settle()
    assert a.take() == [("event", b"hello")]


@pytest_twisted.ensureDeferred
async def test_a_burst_of_events_reaches_the_partner_before_the_chat_ends(pool: Pool) -> None:
    await a_burst_then_next(pool)


@pytest_twisted.ensureDeferred
async def test_a_redis_that_will_not_leave_out_replies_relays_as_well(tmp_path: Path) -> None:
    """Behind a proxy that refuses CLIENT (here, a Redis with the command
    renamed away), each relayed event is published with its reply."""
    redis = RedisServer(tmp_path, "--rename-command", "CLIENT", "")
    redis.start()
    pool = Pool(redis)
    try:
        await a_burst_then_next(pool)
    finally:
        await pool.close()
        redis.stop()


@pytest_twisted.ensureDeferred
async def test_video_and_text_queues_stay_apart_across_nodes(pool: Pool) -> None:
    n1 = await pool.node(1)
    n2 = await pool.node(2)
    text, video, video2, text2 = peers("t", "v", "v2", "t2")
    n1.connect(text)
    n1.connect(video, queue="video")
    await pool.settle()
    assert text.take() == [("waiting",)] and video.take() == [("waiting",)]
    n2.connect(video2, queue="video")
    await pool.settle()
    # Across nodes: the one that waited makes the offer.
    assert video.take() == [("paired",)] and video.offer is True
    assert video2.take() == [("waiting",), ("paired",)] and video2.offer is False
    assert text.take() == []
    # Within one node (one notice for both), likewise.
    n1.connect(text2)
    await pool.settle()
    assert text.take() == [("paired",)] and text.offer is True
    assert text2.take() == [("waiting",), ("paired",)] and text2.offer is False
    assert n1.partner_id(text2) == n1.client_id(text)
    # A queue set during a chat applies at the next "next".
    n1.set_queue(text, "video")
    n2.next(video2)
    await pool.settle()
    assert video2.take() == [("waiting",)]
    assert text.take() == [] and n1.partner_id(text) == n1.client_id(text2)
    n1.next(text)
    await pool.settle()
    assert text.take() == [("waiting",), ("paired",)] and text.offer is False
    assert n1.partner_id(text) == n2.client_id(video2)
    assert video2.take() == [("paired",)] and video2.offer is True


@pytest_twisted.ensureDeferred
async def test_the_nodes_of_a_pool_share_one_secret(pool: Pool) -> None:
    n1 = await pool.node(1)
    n2 = await pool.node(2)
    assert n1.secret is not None and len(n1.secret) == 32
    assert n2.secret == n1.secret
    other = Pool(pool.redis)
    try:
        n3 = await other.node(3)
        assert n3.secret != n1.secret  # another pool, another secret
    finally:
        await other.close()


@pytest_twisted.ensureDeferred
async def test_partners_on_one_node_are_relayed_in_memory(pool: Pool) -> None:
    n1 = await pool.node(1)
    a, b = peers("a", "b")
    n1.connect(a)
    n1.connect(b)
    await pool.settle()
    a.take(), b.take()
    # Relayed at once, without waiting on Redis.
    n1.relay(a, b"one")
    assert b.take() == [("event", b"one")]


@pytest_twisted.ensureDeferred
async def test_next_tells_the_partner_and_the_cooldown_wakes_them_on_time(pool: Pool) -> None:
    n1, n2, a, b = await chat_across(pool)
    n1.next(a)
    # From the moment a pressed next, nothing more reaches b from a, nor a from b.
    n1.relay(a, b"late")
    n2.relay(b, b"late too")
    await pool.settle()
    assert a.take() == [("waiting",)]
    assert b.take() == [("partner_left",)]
    n2.next(b)
    await pool.settle()
    assert b.take() == [("waiting",)]
    # Both wait, kept apart by their cooldown until it ends, and no longer.
    await pool.tick(59.5)
    assert a.take() == [] and b.take() == []
    await pool.tick(0.5)
    assert a.take() == [("paired",)] and b.take() == [("paired",)]


@pytest_twisted.ensureDeferred
async def test_a_session_connecting_again_through_another_node_keeps_its_cooldowns(
    pool: Pool,
) -> None:
    """A session's cooldowns go by its id, not its connection's: skipped,
    then reloaded through another process, it does not meet the stranger it
    skipped; nor after a chat its disconnection ended."""
    n1, n2, a, b = await chat_across(pool)
    n1.next(a)  # a skips b
    n2.next(b)
    await pool.settle()
    n1.disconnect(a)  # a reloads its page...
    await pool.settle()
    n2.connect(a)  # ...and its connection lands on the other node
    await pool.settle()
    assert a.status == b.status == "waiting"
    await pool.tick(59.5)
    assert a.status == b.status == "waiting"
    await pool.tick(0.5)
    assert a.status == b.status == "paired"
    n2.disconnect(a)  # closes its tab mid-chat, and comes back at once
    await pool.settle()
    n1.connect(a)
    n2.next(b)
    await pool.settle()
    assert a.status == b.status == "waiting"


@pytest_twisted.ensureDeferred
async def test_a_report_without_a_partner_leaves_an_idle_client_idle(pool: Pool) -> None:
    """The node's idea of its client (what it tells it when it is away and
    back) is not changed by a report that found no partner."""
    n1 = await pool.node(1)
    (a,) = peers("a")
    n1.connect(a)
    n1.stop(a)
    await pool.settle()
    outcomes: list[object] = []
    n1.report(a, outcomes.append)
    await pool.settle()
    assert outcomes == [None]
    a.take()
    n1.away(a)
    n1.back(a)
    await pool.settle()
    assert a.take() == []  # idle before, idle after: not queued


@pytest_twisted.ensureDeferred
async def test_stop_makes_both_idle_and_stats_count_the_pool(pool: Pool) -> None:
    n1 = await pool.node(1)
    n2 = await pool.node(2)
    a, b, c = peers("a", "b", "c")
    n1.connect(a)
    n2.connect(b)
    n2.connect(c)
    # Each node renews its lease every second and then knows the pool's
    # counts as of that moment: after two renewals, both know them all.
    await pool.tick(2.0)
    assert n1.stats() == n2.stats() == Stats(online=3, waiting=1, chatting=2)
    assert n1.nodes == 2
    waiting = c if c.status == "waiting" else b if b.status == "waiting" else a
    chatting = [p for p in (a, b, c) if p is not waiting]
    first = chatting[0]
    (n1 if first is a else n2).stop(first)
    await pool.tick(2.0)
    assert n1.stats() == n2.stats() == Stats(online=3, waiting=1, chatting=0)


@pytest_twisted.ensureDeferred
async def test_a_report_ends_the_chat_for_good_and_describes_it(pool: Pool) -> None:
    n1, n2, a, b = await chat_across(pool, ("ip-a", "ip-b"))
    n2.relay(b, b"spam", said=True)
    await pool.tick(2.5)
    outcomes: list[ReportedChat | None] = []
    n1.report(a, outcomes.append)
    await pool.settle()
    [chat] = outcomes
    assert chat is not None
    assert (chat.identity, chat.seconds, chat.partner_sent) == ("ip-b", 2.5, True)
    assert a.take()[-1] == ("waiting",)
    assert b.take()[-1] == ("partner_left",)
    # Never again, even after the cooldown: a newcomer from ip-b waits too.
    n2.next(b)
    await pool.tick(120)
    assert b.take() == [("waiting",)]
    assert a.take() == []
    c = RecordingPeer("c")
    n2.connect(c, "ip-b")
    await pool.settle()
    assert c.take() == [("waiting",), ("paired",)]  # with b: same address, not reported
    assert a.take() == []
    # A report without a partner does nothing.
    n1.report(a, outcomes.append)
    await pool.settle()
    assert outcomes[-1] is None


@pytest_twisted.ensureDeferred
async def test_reports_counted_on_two_nodes_ban_on_every_node(pool: Pool) -> None:
    heard: dict[str, list[tuple[str, float]]] = {"n1": [], "n2": [], "n3": []}

    def hearing(name: str) -> Callable[[RedisMatchmaker], None]:
        def hook(mm: RedisMatchmaker) -> None:
            mm.on_ban = lambda scope, until: heard[name].append((scope, until))

        return hook

    n1 = await pool.node(1, hearing("n1"))
    n2 = await pool.node(2, hearing("n2"))
    rules = Reports(pool.clock.seconds, threshold=3, min_chat_seconds=5.0)
    spammer = AddressKeys("x", "x-net", ("x",))

    def reporter(n: int) -> AddressKeys:
        return AddressKeys(f"r{n}", f"net{n}", (f"r{n}",))

    # Too short a chat in which the reported side said nothing: not counted.
    assert await n1.report_chat(reporter(0), spammer, 1.0, False, rules) is None
    assert await n1.report_chat(reporter(1), spammer, 1.0, True, rules) is None
    assert await n2.report_chat(reporter(2), spammer, 30.0, False, rules) is None
    # Two reports from one network count once.
    assert await n2.report_chat(reporter(2), spammer, 30.0, False, rules) is None
    ban = await n1.report_chat(reporter(3), spammer, 30.0, False, rules)
    assert ban == Ban("x", pool.clock.seconds() + 600)
    await pool.settle()
    assert heard["n1"] == heard["n2"] == [("x", ban.until)]
    # A node that joins later hears the bans in force.
    await pool.node(3, hearing("n3"))
    assert heard["n3"] == [("x", ban.until)]
    # Banned already: further reports count for nothing.
    assert await n2.report_chat(reporter(4), spammer, 30.0, False, rules) is None


@pytest_twisted.ensureDeferred
async def test_a_disconnect_is_noticed_on_the_other_node(pool: Pool) -> None:
    n1, n2, a, b = await chat_across(pool)
    c = RecordingPeer("c")
    n2.disconnect(b)
    await pool.settle()
    assert a.take()[-1] == ("partner_left",)
    # No cooldown with someone who is gone; a newcomer is met at once.
    n1.next(a)
    n2.connect(c)
    await pool.settle()
    assert a.take() == [("waiting",), ("paired",)]
    assert c.take() == [("waiting",), ("paired",)]


@pytest_twisted.ensureDeferred
async def test_the_clients_of_a_dead_node_leave_the_pool_within_its_lease(pool: Pool) -> None:
    n1, n2, a, b = await chat_across(pool)
    w = RecordingPeer("w")
    n2.connect(w)  # waits
    await pool.settle()
    for p in (a, b, w):
        p.take()
    await pool.kill(n2)
    await pool.tick(3.0)
    assert a.take() == []  # its lease has not run out
    await pool.tick(1.5)
    assert a.take() == [("partner_left",)]
    await pool.tick(1.0)  # the counts, as of the renewal after that
    assert n1.stats() == Stats(online=1, waiting=0, chatting=0)
    # The dead node's waiting client was taken out of the queue too.
    c = RecordingPeer("c")
    n1.next(a)
    n1.connect(c)
    await pool.settle()
    assert c.take() == [("waiting",), ("paired",)]
    assert n1.partner_id(c) == n1.client_id(a)


@pytest_twisted.ensureDeferred
async def test_what_a_node_missed_while_cut_off_is_told_when_it_is_back(pool: Pool) -> None:
    n1 = await pool.node(1)
    n2 = await pool.node(2)
    paused: list[bool] = []
    n1.on_matching = paused.append
    a, b = peers("a", "b")
    n1.connect(a)
    await pool.settle()
    assert a.take() == [("waiting",)]
    # n1 loses its subscription; while it is away b arrives and meets a:
    # the notice for a is published to nobody.
    [subscription] = n1._subscriber_factory.pool
    subscription.transport.loseConnection()
    await task.deferLater(reactor, 0.05, lambda: None)
    assert paused == [False] and n1.paused
    n2.connect(b)
    for _ in range(2):
        await n2.settle()  # (n1 hears nothing now, not even its own markers)
    assert b.take() == [("waiting",), ("paired",)]
    assert a.take() == []
    # Back (the subscription is made again within a second): a is told.
    await task.deferLater(reactor, 1.5, lambda: None)
    await pool.settle()
    assert a.take() == [("paired",)]
    assert paused == [False, True] and not n1.paused
    assert n1.partner_id(a) == n2.client_id(b)
    n2.relay(b, b"welcome back")
    await pool.settle()
    assert a.take() == [("event", b"welcome back")]


@pytest_twisted.ensureDeferred
async def test_interests_meet_across_nodes_and_a_resync_brings_changed_ones(
    redis: RedisServer,
) -> None:
    pool = Pool(redis, interest_wait=10)
    try:
        n1 = await pool.node(1)
        n2 = await pool.node(2)
        a, b, c, d = peers("a", "b", "c", "d")
        n1.connect(a, "a", interests=("cats", "c++ [lua] %s"))
        n2.connect(b, "b", interests=("dogs",))
        await pool.settle()
        n2.connect(c, "c", interests=("c++ [lua] %s", "zoë"))
        await pool.settle()
        assert a.take() == [("waiting",), ("paired",)] and a.common == ["c++ [lua] %s"]
        assert c.take() == [("waiting",), ("paired",)] and c.common == ["c++ [lua] %s"]
        # b waits for dogs.  Say its node missed telling Redis that b now
        # likes cats instead (cut off): the resync brings the change.
        b.take()
        client = n2.client_id(b)
        assert client is not None
        n2._interests[client] = "cats\n"
        n2._resync()
        await pool.settle()
        n1.connect(d, "d", interests=("cats",))
        await pool.settle()
        assert d.take() == [("waiting",), ("paired",)] and d.common == ["cats"]
        assert b.take() == [("paired",)] and b.common == ["cats"]
        # No index entry is left behind by the old interests.
        prefix = pool.prefix
        assert redis.command("ZCARD", f"{prefix}itag") == "0"
        assert redis.command("ZCARD", f"{prefix}iwait") == "0"
    finally:
        await pool.close()


@pytest_twisted.ensureDeferred
async def test_a_notice_about_a_chat_already_left_is_dropped(pool: Pool) -> None:
    n1 = await pool.node(1)
    a = RecordingPeer("a")
    n1.connect(a)
    await pool.settle()
    a.take()
    client = n1.client_id(a)
    assert client is not None
    n1.stop(a)
    await pool.settle()
    # A pairing decided before the stop, heard after it: stale.
    n1._notice(f"P {client} 0 elsewhere:1 1")
    assert a.take() == [] and n1.partner_id(a) is None
    n1._notice(f"P {client} 1 elsewhere:1 0")
    assert a.take() == [("paired",)]


@pytest_twisted.ensureDeferred
async def test_a_unix_socket_url(redis: RedisServer) -> None:
    pool = Pool(redis, url=redis.unix_url)
    try:
        n1 = await pool.node(1)
        a, b = peers("a", "b")
        n1.connect(a)
        n1.connect(b)
        await pool.settle()
        assert a.take() == [("waiting",), ("paired",)]
    finally:
        await pool.close()


@pytest_twisted.ensureDeferred
async def test_nothing_stays_in_redis_once_the_nodes_are_gone(redis: RedisServer) -> None:
    pool = Pool(redis, lease=0.3, interest_wait=10)
    n1 = await pool.node(1)
    n2 = await pool.node(2)
    a, b, c, d = peers("a", "b", "c", "d")
    n1.connect(a)
    n2.connect(b)
    n2.connect(c)
    n1.connect(d, interests=("cats",))  # waits, in the interest indexes
    await pool.settle()
    n2.next(b)
    await pool.settle()
    assert pool.keys()
    await n1.stopService()  # leaves on purpose
    await pool.kill(n2)  # dies without a word
    await task.deferLater(reactor, 0.8, lambda: None)  # two leases of Redis's own time
    assert pool.keys() == []


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://localhost", "must start with redis://"),
        ("redis://localhost:99999", "port"),
        ("redis://localhost/zero", "database must be a number"),
        ("unix://", "needs a path"),
        ("unix:///run/redis.sock?db=x", "database must be a number"),
    ],
)
def test_bad_redis_urls_say_what_is_wrong(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_redis_url(url)


def test_a_password_is_not_repeated_in_the_display_url(tmp_path: Path) -> None:
    address = parse_redis_url("redis://user:s3cret@db.example:6380/2")
    assert (address.db, address.username, address.password) == (2, "user", "s3cret")
    assert "s3cret" not in address.display


# -- the pairing rules, by the model of the in-memory matchmaker ------------------


def _in_reactor(call: Callable[[], object]) -> Any:
    """Run ``call`` in the reactor's thread and wait for its result (and for
    the Deferred it may return): the state machine runs in a thread of its
    own, as a program using the pool from outside would."""
    return threads.blockingCallFromThread(reactor, call)


class _SharedClock:
    """The state machine's clock, driving the nodes' fake clock: setting
    ``now`` runs every timer due on the way (renewals, wake-ups)."""

    def __init__(self, clock: task.Clock) -> None:
        self.clock = clock

    @property
    def now(self) -> float:
        return self.clock.seconds()

    @now.setter
    def now(self, value: float) -> None:
        _in_reactor(lambda: self.clock.advance(value - self.clock.seconds()))

    def __call__(self) -> float:
        return self.clock.seconds()


class _PoolAsOne:
    """Several nodes of one pool, seen as one synchronous matchmaker: each
    call goes to the node of the client (clients are spread over the nodes
    in turn) and returns once the pool has settled.  What the in-memory
    matchmaker answers from memory is read from Redis or from the nodes."""

    def __init__(self, pool: Pool, nodes: list[RedisMatchmaker]) -> None:
        self.pool = pool
        self.nodes = nodes
        self.node_of: dict[RecordingPeer, RedisMatchmaker] = {}
        self.peer_of: dict[str, RecordingPeer] = {}
        self._waiting: set[str] | None = None

    def _do(self, call: Callable[[], object]) -> None:
        """``call`` in the reactor's thread, then until the pool has settled."""
        self._waiting = None

        def then_settle() -> object:
            call()
            return defer.ensureDeferred(self.pool.settle())

        _in_reactor(then_settle)

    def connect(
        self, peer: RecordingPeer, identity: str, queue: str = "", interests: Sequence[str] = ()
    ) -> None:
        node = self.nodes[len(self.node_of) % len(self.nodes)]
        self.node_of[peer] = node
        self._do(lambda: node.connect(peer, identity, queue, interests))
        client = node.client_id(peer)
        assert client is not None
        self.peer_of[client] = peer

    def next(self, peer: RecordingPeer) -> None:
        self._do(lambda: self.node_of[peer].next(peer))

    def stop(self, peer: RecordingPeer) -> None:
        self._do(lambda: self.node_of[peer].stop(peer))

    def set_queue(self, peer: RecordingPeer, queue: str) -> None:
        self._do(lambda: self.node_of[peer].set_queue(peer, queue))

    def set_interests(self, peer: RecordingPeer, interests: Sequence[str]) -> None:
        self._do(lambda: self.node_of[peer].set_interests(peer, interests))

    def disconnect(self, peer: RecordingPeer) -> None:
        self._do(lambda: self.node_of[peer].disconnect(peer))

    def away(self, peer: RecordingPeer) -> None:
        self._do(lambda: self.node_of[peer].away(peer))

    def back(self, peer: RecordingPeer) -> None:
        self._do(lambda: self.node_of[peer].back(peer))

    def relay(self, peer: RecordingPeer, event: bytes, said: bool = False) -> None:
        self._do(lambda: self.node_of[peer].relay(peer, event, said))

    def report_now(self, peer: RecordingPeer) -> ReportedChat | None:
        outcomes: list[ReportedChat | None] = []
        self._do(lambda: self.node_of[peer].report(peer, outcomes.append))
        [chat] = outcomes
        if chat is None:
            return None
        partner = chat.partner
        if not isinstance(partner, RecordingPeer):
            partner = self.peer_of[partner.client]  # type: ignore[attr-defined]
        return ReportedChat(partner, chat.identity, chat.seconds, chat.partner_sent)

    def advance(self) -> None:
        self._do(self.nodes[0].advance)

    def partner_of(self, peer: RecordingPeer) -> RecordingPeer | None:
        partner = self.node_of[peer].partner_id(peer)
        return None if partner is None else self.peer_of[partner]

    def _query(self, *args: str) -> list[str]:
        reply = _in_reactor(lambda: self.nodes[0]._redis.execute_command(*args))
        return [] if reply is None else [reply] if isinstance(reply, str) else list(reply)

    def is_waiting(self, peer: RecordingPeer) -> bool:
        if self._waiting is None:
            self._waiting = set(self._query("ZRANGE", f"{self.pool.prefix}waiting", "0", "-1"))
        return self.node_of[peer].client_id(peer) in self._waiting

    def stats(self) -> Stats:
        # As of two renewals of every node's lease (each hears the others').
        for _ in range(2):
            self._do(lambda: [node._renew() for node in self.nodes])
        return self.nodes[0].stats()

    def next_deadline(self) -> float | None:
        """The earliest moment waiting clients must be paired (two kept apart
        by a cooldown, or one whose interest wait runs out), as the in-memory
        matchmaker computes it (stale entries passed over)."""
        prefix = self.pool.prefix
        timer = self._query("ZRANGE", f"{prefix}iwait", "0", "0", "WITHSCORES")
        first = float(timer[1]) if timer else None
        flat = self._query("ZRANGE", f"{prefix}blocked", "0", "-1", "WITHSCORES")
        waiting = set(self._query("ZRANGE", f"{prefix}waiting", "0", "-1"))
        for key, score in zip(flat[::2], flat[1::2], strict=True):
            a, b = key.split("|")
            # Cooldowns go by the clients' cooldown keys (their sessions').
            ka, kb = (self.peer_of[x].sid for x in (a, b))
            cool = self._query("ZSCORE", f"{prefix}cool", min(ka, kb) + "|" + max(ka, kb))
            if a in waiting and b in waiting and cool and float(cool[0]) == float(score):
                return float(score) if first is None else min(first, float(score))
        return first


@pytest_twisted.ensureDeferred
async def test_the_pairing_rules_hold_across_nodes(redis: RedisServer) -> None:
    """The in-memory matchmaker's state machine, run against three nodes of
    one pool: random steps spread over them, the same invariants."""
    from hypothesis import settings
    from hypothesis.stateful import run_state_machine_as_test
    from test_core import MatchmakerMachine

    class PoolMachine(MatchmakerMachine):
        def __init__(self) -> None:
            super().__init__()
            # Leases longer than any run: nodes are not reaped here.
            self.pool = pool = Pool(
                redis, cooldown=self.COOLDOWN, lease=1e6, interest_wait=self.INTEREST_WAIT
            )
            start = self.clock.now
            _in_reactor(lambda: pool.clock.advance(start - pool.clock.seconds()))
            nodes = [
                _in_reactor(lambda s=seed: defer.ensureDeferred(pool.node(s))) for seed in range(3)
            ]
            self.clock = _SharedClock(pool.clock)  # type: ignore[assignment]
            self.mm = _PoolAsOne(pool, nodes)  # type: ignore[assignment]

        def teardown(self) -> None:
            _in_reactor(lambda: defer.ensureDeferred(self.pool.close()))

    await threads.deferToThread(
        run_state_machine_as_test,
        PoolMachine,
        settings=settings(max_examples=25, stateful_step_count=30, deadline=None, database=None),
    )


# -- twistd roulette --redis: processes as nodes ------------------------------------


def test_clients_of_two_processes_meet_chat_and_notice_a_killed_one(redis: RedisServer) -> None:
    import asyncio
    import json
    import signal
    import time

    import websockets
    from support import RunningServer, run_async, wait_until
    from test_e2e import recv, send

    url = redis.url.rsplit("/", 1)[0] + "/1"  # a database of this test's own
    with (
        RunningServer(None, "--redis", url, "--repair-cooldown", "0") as one,
        RunningServer(None, "--redis", url, "--repair-cooldown", "0") as two,
    ):

        async def scenario() -> float:
            a = await websockets.connect(one.ws_url)
            assert json.loads(await a.recv())["type"] == "online"
            assert await recv(a) == {"type": "waiting"}
            b = await websockets.connect(two.ws_url)
            assert await recv(b) == {"type": "waiting"}
            assert await recv(b) == {"type": "paired", "common": []}
            assert await recv(a) == {"type": "paired", "common": []}
            await send(a, {"type": "message", "text": "from one", "id": 1})
            assert await recv(a) == {"type": "sent", "id": 1}
            assert await recv(b) == {"type": "message", "text": "from one"}
            await send(b, {"type": "typing", "active": True})
            await send(b, {"type": "message", "text": "and from two"})
            assert await recv(a) == {"type": "typing", "active": True}
            assert await recv(a) == {"type": "message", "text": "and from two"}
            # Next on one process: the partner on the other hears it.
            await send(b, {"type": "next"})
            assert await recv(b) == {"type": "waiting"}
            assert await recv(a) == {"type": "partner_left"}
            await send(a, {"type": "next"})
            assert await recv(a) == {"type": "waiting"}
            assert await recv(a) == {"type": "paired", "common": []}
            assert await recv(b) == {"type": "paired", "common": []}
            # Both processes count the whole pool, and say which answered.
            await asyncio.sleep(2.5)
            health = [one.health(), two.health()]
            assert [(h["online"], h["chatting"]) for h in health] == [(2, 2), (2, 2)]
            assert health[0]["node"] != health[1]["node"]
            # The second process dies without a word.
            assert two.process is not None
            two.process.send_signal(signal.SIGKILL)
            started = time.monotonic()
            assert await recv(a, timeout=10) == {"type": "partner_left"}
            took = time.monotonic() - started
            await a.close()
            return took

        took = run_async(scenario())
        assert took < 5.0, f"the partner of a killed process heard of it after {took:.1f} s"
        wait_until(lambda: one.health()["online"] == 0)


def test_a_dropped_client_of_one_process_resumes_its_chat_with_one_of_another(
    redis: RedisServer,
) -> None:
    """Over real sockets: partners on two processes; one's TCP connection
    is cut, the other hears ``partner_away`` across Redis, and the first
    comes back to its process with its token: the chat goes on."""

    import websockets
    from support import RunningServer, run_async
    from test_e2e import recv, send, with_session

    url = redis.url.rsplit("/", 1)[0] + "/9"  # a database of this test's own
    with (
        RunningServer(None, "--redis", url, "--repair-cooldown", "0") as one,
        RunningServer(None, "--redis", url, "--repair-cooldown", "0") as two,
    ):

        async def scenario() -> None:
            a, session = await with_session(one.ws_url)
            assert await recv(a) == {"type": "waiting"}
            b = await websockets.connect(two.ws_url)
            assert await recv(b) == {"type": "waiting"}
            assert await recv(b) == {"type": "paired", "common": []}
            assert await recv(a) == {"type": "paired", "common": []}
            a.transport.abort()
            assert await recv(b) == {"type": "partner_away"}
            await send(b, {"type": "message", "text": "kept for you", "id": 1})
            assert await recv(b) == {"type": "sent", "id": 1}
            back, again = await with_session(one.ws_url, session["token"])
            assert again["resumed"] is True
            assert await recv(back) == {"type": "partner_back"}
            assert await recv(back) == {"type": "message", "text": "kept for you"}
            assert await recv(b) == {"type": "partner_back"}
            await send(back, {"type": "message", "text": "thanks"})
            assert await recv(b) == {"type": "message", "text": "thanks"}
            await send(b, {"type": "next"})
            assert await recv(back) == {"type": "partner_left"}
            await back.close()
            await b.close()

        run_async(scenario())


def test_a_session_is_taken_up_by_another_process_of_the_pool(redis: RedisServer) -> None:
    """Over real sockets: a page reloaded through another process keeps its
    session (the stranger it skipped does not come back), and one that comes
    back after the grace through another process hears its chat ended."""

    from support import RunningServer, run_async
    from test_e2e import recv, send, with_session

    url = redis.url.rsplit("/", 1)[0] + "/10"  # a database of this test's own
    options = ("--redis", url, "--repair-cooldown", "60", "--resume-grace", "1")
    with RunningServer(None, *options) as one, RunningServer(None, *options) as two:
        connect = with_session

        async def paired_within(ws: Any, seconds: float) -> bool:
            try:
                while (await recv(ws, timeout=seconds))["type"] != "paired":
                    pass
            except TimeoutError:
                return False
            return True

        async def scenario() -> None:
            a, first = await connect(one.ws_url)
            b, _ = await connect(one.ws_url)
            assert await recv(a) == {"type": "waiting"}
            assert await recv(a) == {"type": "paired", "common": []}
            await send(a, {"type": "next"})  # a skips b
            assert await recv(a) == {"type": "waiting"}
            assert [(await recv(b))["type"] for _ in range(3)] == [
                "waiting",
                "paired",
                "partner_left",
            ]
            await send(b, {"type": "next"})
            assert await recv(b) == {"type": "waiting"}
            await a.close(code=1001)  # a reload
            again, second = await connect(two.ws_url, first["token"])
            assert second["resumed"] is False and second["token"] != first["token"]
            assert await recv(again) == {"type": "waiting"}
            c, _ = await connect(two.ws_url)
            assert await recv(c) == {"type": "waiting"}
            assert await recv(c) == {"type": "paired", "common": []}
            # c met one of them; the other still waits: a and b never met.
            met = [ws for ws in (again, b) if await paired_within(ws, 1.0)]
            assert len(met) == 1
            # The same token is spent: presented again, it starts afresh.
            spent, third = await connect(one.ws_url, first["token"])
            assert third["resumed"] is False
            await spent.close()
            # A chat whose connection dropped, not back within the grace (1 s):
            # back through the other process, it is told, and starts idle.
            for ws in (again, b, c):
                await ws.close()
            d, fourth = await connect(one.ws_url)
            e, _ = await connect(one.ws_url)
            for ws in (d, e):
                while (await recv(ws))["type"] != "paired":
                    pass
            d.transport.abort()
            assert await recv(e) == {"type": "partner_away"}
            assert await recv(e, timeout=3) == {"type": "partner_left"}
            late, fifth = await connect(two.ws_url, fourth["token"])
            assert fifth["resumed"] is False
            assert await recv(late) == {"type": "partner_left", "while_away": True}
            await late.close()
            await e.close()

        run_async(scenario())


def test_a_dropped_chat_is_picked_up_through_another_process(redis: RedisServer) -> None:
    """Over real sockets: a client's connection to one process drops, and
    it comes back through the other (as workers sharing a port send it):
    that process asks the first for the session, which hands it over with
    what was kept for it; its partner, on the first, chats on."""

    import websockets
    from support import RunningServer, run_async
    from test_e2e import recv, send, with_session

    url = redis.url.rsplit("/", 1)[0] + "/11"  # a database of this test's own
    with (
        RunningServer(None, "--redis", url, "--repair-cooldown", "0") as one,
        RunningServer(None, "--redis", url, "--repair-cooldown", "0") as two,
    ):

        async def scenario() -> None:
            a, session = await with_session(one.ws_url)
            b = await websockets.connect(one.ws_url)
            assert await recv(b) == {"type": "waiting"}
            assert await recv(b) == {"type": "paired", "common": []}
            a.transport.abort()
            assert await recv(b) == {"type": "partner_away"}
            await send(b, {"type": "message", "text": "first"})
            await send(b, {"type": "message", "text": "second"})
            back, again = await with_session(two.ws_url, session["token"])
            assert again["resumed"] is True
            assert await recv(back) == {"type": "partner_back"}
            assert await recv(back) == {"type": "message", "text": "first"}
            assert await recv(back) == {"type": "message", "text": "second"}
            assert await recv(b) == {"type": "partner_back"}
            for i in range(3):  # both ways, across the two processes now
                await send(b, {"type": "message", "text": f"b{i}"})
                await send(back, {"type": "message", "text": f"a{i}"})
            assert [(await recv(back))["text"] for _ in range(3)] == ["b0", "b1", "b2"]
            assert [(await recv(b))["text"] for _ in range(3)] == ["a0", "a1", "a2"]
            # Its connection to the second process is taken over by a third
            # connection, through the first: the chat moves back.
            third, last = await with_session(one.ws_url, again["token"])
            assert last["resumed"] is True
            assert await recv(third) == {"type": "partner_back"}
            assert [await recv(b), await recv(b)] == [
                {"type": "partner_away"},
                {"type": "partner_back"},
            ]
            await send(third, {"type": "message", "text": "home again"})
            assert await recv(b) == {"type": "message", "text": "home again"}
            await send(b, {"type": "next"})
            assert await recv(third) == {"type": "partner_left"}
            for ws in (back, third, b):
                await ws.close()

        run_async(scenario())


def test_video_clients_of_two_processes_meet_and_signal(redis: RedisServer) -> None:
    """Over real sockets: a video client of one process meets a video client
    of the other (a text client waiting beside them meets nobody); exactly
    one of them offers, and their signals cross Redis both ways."""
    import asyncio

    import websockets
    from support import RunningServer, run_async
    from test_e2e import recv, send

    url = redis.url.rsplit("/", 1)[0] + "/7"  # a database of this test's own
    with (
        RunningServer(None, "--redis", url, "--repair-cooldown", "0") as one,
        RunningServer(
            None, "--redis", url, "--repair-cooldown", "0", "--ice-server", "stun:127.0.0.1:3478"
        ) as two,
    ):

        async def scenario() -> None:
            text = await websockets.connect(one.ws_url)
            assert await recv(text) == {"type": "waiting"}
            a = await websockets.connect(one.ws_url + "?video=1")
            assert await recv(a) == {"type": "waiting"}
            b = await websockets.connect(two.ws_url + "?video=1")
            assert await recv(b) == {"type": "waiting"}
            got_b, got_a = await recv(b), await recv(a)
            assert got_a == {
                "type": "paired",
                "common": [],
                "video": True,
                "offer": True,
                "ice_servers": [],
            }
            assert got_b == {
                "type": "paired",
                "common": [],
                "video": True,
                "offer": False,
                "ice_servers": [{"urls": ["stun:127.0.0.1:3478"]}],
            }
            offer = {"description": {"type": "offer", "sdp": "v=0\r\n" + "a=x\r\n" * 2000}}
            await send(a, {"type": "signal", "data": offer})
            assert await recv(b) == {"type": "signal", "data": offer}
            answer = {"description": {"type": "answer", "sdp": "v=0\r\n"}}
            await send(b, {"type": "signal", "data": answer})
            assert await recv(a) == {"type": "signal", "data": answer}
            # The text client is still waiting, and was told nothing more.
            with pytest.raises(asyncio.TimeoutError):
                await recv(text, timeout=0.5)  # online counts aside
            await send(text, {"type": "signal", "data": offer})
            assert (await recv(text))["code"] == "not_paired"
            for ws in (text, a, b):
                await ws.close()

        run_async(scenario())


def test_a_report_on_one_process_keeps_the_address_apart_on_the_others(
    redis: RedisServer,
) -> None:
    import asyncio
    import json

    import websockets
    from support import RunningServer, run_async
    from test_e2e import recv, send

    url = redis.url.rsplit("/", 1)[0] + "/4"
    options = ("--redis", url, "--repair-cooldown", "0", "--trust-proxy", "1")
    with RunningServer(None, *options) as one, RunningServer(None, *options) as two:

        async def connect(server: RunningServer, address: str) -> object:
            ws = await websockets.connect(
                server.ws_url, additional_headers={"X-Forwarded-For": address}
            )
            assert json.loads(await ws.recv())["type"] == "online"
            assert await recv(ws) == {"type": "waiting"}
            return ws

        async def scenario() -> None:
            a = await connect(one, "198.51.100.1")
            b = await connect(two, "203.0.113.2")
            assert await recv(a) == {"type": "paired", "common": []}
            assert await recv(b) == {"type": "paired", "common": []}
            await send(a, {"type": "report"})
            assert await recv(a) == {"type": "waiting"}
            assert await recv(b) == {"type": "partner_left"}
            # b's address, on the other process, is never a's partner again:
            # both wait, side by side...
            c = await connect(one, "203.0.113.2")
            await asyncio.sleep(2.5)  # both processes have renewed their counts
            assert [(h["waiting"], h["chatting"]) for h in (one.health(), two.health())] == [
                (2, 0),
                (2, 0),
            ]
            # ...while a newcomer from an address nobody reported meets one of them.
            d = await connect(two, "192.0.2.4")
            assert await recv(d) == {"type": "paired", "common": []}
            for ws in (a, b, c, d):
                await ws.close()  # type: ignore[attr-defined]

        run_async(scenario())


def test_a_process_that_cannot_reach_its_redis_refuses_websockets_until_it_can(
    redis: RedisServer, tmp_path: Path
) -> None:
    from support import RunningServer, free_port, wait_until
    from test_security import status_of

    # A Redis that is not there yet: the page and /healthz answer, the
    # WebSocket says 503 (the page tries again) rather than pairing nobody.
    later = RedisServer(tmp_path)
    later.port = free_port()
    with RunningServer(None, "--redis", later.url) as server:
        assert server.health()["online"] == 0
        assert status_of(server.port) == 503
        later.start()
        try:
            # Within five seconds of Redis coming up.
            wait_until(lambda: status_of(server.port) == 101, timeout=5)
        finally:
            later.stop()


def test_while_redis_is_away_chats_go_on_and_matching_resumes_when_it_is_back(
    tmp_path: Path,
) -> None:
    import asyncio
    import json
    import time

    import websockets
    from support import RunningServer, run_async
    from test_e2e import recv, send

    own = RedisServer(tmp_path)  # this test stops it: a server of its own
    own.start()
    options = ("--redis", own.url, "--repair-cooldown", "0")
    try:
        with RunningServer(None, *options) as one, RunningServer(None, *options) as two:

            async def connect(server: RunningServer) -> Any:
                ws = await websockets.connect(server.ws_url)
                assert json.loads(await ws.recv())["type"] == "online"
                assert await recv(ws) == {"type": "waiting"}
                return ws

            async def scenario() -> None:
                # a and b chat on one process; c and d across the two.
                a = await connect(one)
                b = await connect(one)
                assert await recv(b) == {"type": "paired", "common": []}
                assert await recv(a) == {"type": "paired", "common": []}
                c = await connect(two)
                d = await connect(one)
                assert await recv(d) == {"type": "paired", "common": []}
                assert await recv(c) == {"type": "paired", "common": []}

                own.stop()  # Redis goes away, and comes back empty
                for ws in (a, b, c, d):
                    notice = await recv(ws)
                    assert (notice["type"], notice["code"]) == ("notice", "matching_paused")
                await send(a, {"type": "message", "text": "still here?", "id": 7})
                assert await recv(a) == {"type": "sent", "id": 7}
                assert await recv(b) == {"type": "message", "text": "still here?"}

                own.start()
                started = time.monotonic()
                for ws in (a, b, c, d):
                    events = [await recv(ws, timeout=10)]
                    if events[0]["type"] == "partner_left":
                        events.append(await recv(ws, timeout=10))
                    assert events[-1]["code"] == "matching_resumed", events
                    if ws in (c, d):  # the chat across processes is over
                        assert events[0] == {"type": "partner_left"}, events
                    else:  # the chat within one process goes on
                        assert len(events) == 1, events
                assert time.monotonic() - started < 5.0
                await send(b, {"type": "message", "text": "yes"})
                assert await recv(a) == {"type": "message", "text": "yes"}
                # Pairing works again, across processes too.
                await send(c, {"type": "next"})
                assert await recv(c) == {"type": "waiting"}
                await send(d, {"type": "next"})
                assert await recv(d) == {"type": "waiting"}
                assert await recv(d) == {"type": "paired", "common": []}
                assert await recv(c) == {"type": "paired", "common": []}
                await send(c, {"type": "message", "text": "hello again"})
                assert await recv(d) == {"type": "message", "text": "hello again"}
                await asyncio.gather(*(ws.close() for ws in (a, b, c, d)))

            run_async(scenario())
    finally:
        own.stop()


def test_the_per_address_cap_holds_across_processes(redis: RedisServer) -> None:
    import websockets
    from support import RunningServer, run_async, wait_until
    from test_security import status_of

    url = redis.url.rsplit("/", 1)[0] + "/5"
    options = ("--redis", url, "--trust-proxy", "1", "--max-per-ip", "2")
    here = {"X-Forwarded-For": "203.0.113.9"}
    with RunningServer(None, *options) as one, RunningServer(None, *options) as two:

        async def scenario() -> None:
            first = await websockets.connect(one.ws_url, additional_headers=here)
            second = await websockets.connect(two.ws_url, additional_headers=here)
            # The address holds two connections in the pool: a third is
            # refused by either process.
            assert status_of(one.port, here) == 429
            assert status_of(two.port, here) == 429
            # Another address is not affected.
            assert status_of(two.port, {"X-Forwarded-For": "198.51.100.9"}) == 101
            await first.close()
            # Given back: the address may connect again, on the other process.
            wait_until(lambda: status_of(two.port, here) == 101, timeout=5)
            await second.close()

        run_async(scenario())


def test_a_pool_connection_outlives_the_handshake_deadline(redis: RedisServer) -> None:
    # The upgrade is answered once Redis has counted the address: the
    # handshake's deadline must end then, not cut the chat off later.
    import asyncio

    import websockets
    from support import RunningServer, run_async
    from test_e2e import recv, send

    url = redis.url.rsplit("/", 1)[0] + "/6"
    with RunningServer(None, "--redis", url, "--handshake-timeout", "1") as server:

        async def scenario() -> None:
            a = await websockets.connect(server.ws_url)
            b = await websockets.connect(server.ws_url)
            assert await recv(b) == {"type": "waiting"}
            assert await recv(b) == {"type": "paired", "common": []}
            await asyncio.sleep(2.5)
            await send(a, {"type": "message", "text": "still here"})
            assert await recv(b) == {"type": "message", "text": "still here"}
            await a.close()
            await b.close()

        run_async(scenario())


def test_workers_share_one_port_and_one_pool(redis: RedisServer) -> None:
    import asyncio
    import json
    import signal

    import websockets
    from support import RunningServer, run_async, wait_until
    from test_e2e import closed_with, recv

    url = redis.url.rsplit("/", 1)[0] + "/2"
    server = RunningServer(None, "--redis", url, "--workers", "2", "--repair-cooldown", "0")
    with server:
        # Each worker answers for itself: new connections reach both.
        def nodes() -> set[str]:
            return {server.health()["node"] for _ in range(20)}

        wait_until(lambda: len(nodes()) == 2, timeout=20)

        async def scenario() -> list[int | None]:
            clients = [await websockets.connect(server.ws_url) for _ in range(8)]
            for ws in clients:
                assert json.loads(await ws.recv())["type"] == "online"
            # Everyone is paired, across workers as within them.
            for ws in clients:
                events = [await recv(ws), await recv(ws)]
                assert events == [{"type": "waiting"}, {"type": "paired", "common": []}], events
            await asyncio.sleep(2.5)
            assert server.health()["online"] == 8
            # SIGTERM to the supervisor: every worker tells its clients 1001.
            assert server.process is not None
            server.process.send_signal(signal.SIGTERM)
            return [await closed_with(ws, timeout=15) for ws in clients]

        codes = run_async(scenario())
        assert codes == [1001] * 8
        assert server.process is not None
        # twistd shuts down cleanly, then re-raises the signal it received.
        assert server.process.wait(timeout=20) in (0, -signal.SIGTERM)
        log = server.log()
        assert "worker 1: " in log and "worker 2: " in log
        assert "Server Shut Down" in log
        assert "exited" not in log  # no worker died and was started again


def test_a_killed_worker_is_started_again_and_workers_end_with_their_supervisor(
    redis: RedisServer,
) -> None:
    import os
    import re
    import signal

    from support import RunningServer, wait_until

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        # A zombie (dead, not yet reaped) counts as gone.
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"

    def pids() -> list[int]:
        return [int(p) for p in re.findall(r"worker \d started \(pid (\d+)\)", server.log())]

    url = redis.url.rsplit("/", 1)[0] + "/3"
    server = RunningServer(None, "--redis", url, "--workers", "2")
    with server:
        wait_until(lambda: len(pids()) == 2)
        first, second = pids()
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: len(pids()) == 3, timeout=15)
        assert "worker 1 exited" in server.log()
        third = pids()[2]
        wait_until(lambda: len({server.health()["node"] for _ in range(20)}) == 2, timeout=20)
        # The supervisor dies without a word: its workers stop by themselves.
        assert server.process is not None
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=10)
        wait_until(lambda: not alive(second) and not alive(third), timeout=15)
