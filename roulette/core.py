"""Pairing and session state, with no I/O.

This module is the heart of roulette: who is waiting, who chats with whom,
and where a message may go.  It imports nothing from Twisted or Autobahn.
Time comes from a ``clock`` callable and randomness from a ``random.Random``
passed in, so every decision can be replayed in a test.

Two small interfaces connect it to the outside world:

* :class:`Peer` is what the matchmaker calls on a connected client: three
  named pairing events (waiting, paired, partner left) and one generic
  :meth:`Peer.send_event` for whatever the partner relayed, already encoded
  as the wire carries it.  The matchmaker never looks inside a relayed event,
  so a new kind of event (a typing notice, a video offer) needs nothing here.
* :class:`Matchmaker` is what the transport calls.  :class:`MemoryMatchmaker`
  implements it for a single process, where every call completes before it
  returns.  The interface does not rely on that: its calls return nothing
  the transport must wait for (a report's outcome comes to a callback), and
  the transport keeps for itself what it must know at once, such as whether
  its client has a partner (from the pairing events it was sent).  A
  matchmaker in another process (a shared store, say) can then complete its
  calls later, and deliver the events they cause when they arrive.

Pairing rules (see ``docs/protocol.md``):

* A client is paired as soon as an eligible partner waits, chosen uniformly at
  random among the eligible ones; nobody waits while an eligible partner waits
  too.
* Never with itself, never with more than one partner, always symmetrically.
* Only within one queue: each client waits in a named queue (``""`` for text
  chat, ``"video"`` for video), and clients of two queues never meet.
* Of two clients paired, exactly one is told to make the offer (for a video
  chat's WebRTC connection): the one that was waiting.
* Interests: a client may name a few; it then meets, at once, a waiting
  client who shares one (chosen uniformly among those).  When none does, it
  waits up to ``interest_wait`` seconds for one; after that, or when it has
  no interests, it is *open*: it meets any open waiting client.  Two waiting
  clients who share an interest, or who are both open, "may meet now".
* Two clients whose chat ended less than ``cooldown`` seconds ago are not
  eligible for each other; two identities (addresses) one of which reported
  the other are never eligible for each other again.  When such a cooldown
  runs out while both still wait, or a client's interest wait runs out, the
  clients who may then meet must be paired at that moment:
  :meth:`Matchmaker.next_deadline` tells the caller when to call
  :meth:`Matchmaker.advance`.
* A relayed event goes to the sender's partner at the moment it is handled,
  and to nobody else.
* A client whose connection dropped is *away* until it is back or gone: it
  keeps its chat (its partner is told), and is never paired meanwhile.
* Cooldowns outlive a disconnection: a peer connected again within one (a
  session of the shell's, which outlives its connections) is still kept
  from the partners it just had.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar, cast

#: How many reported pairs of identities are remembered; the oldest go first.
MAX_NEVER_PAIRS = 100_000

#: Queues of more people online than this are not examined for why their
#: waiting clients wait: nobody there is alone, nor has talked with all the
#: others within a cooldown.
WAIT_REASONS_UP_TO = 64

_K = TypeVar("_K", str, tuple[str, str])


class Peer(Protocol):
    """A connected client, as the matchmaker sees it.

    Implementations deliver each call to their client and must not call back
    into the matchmaker from inside these methods.
    """

    def send_waiting(self) -> None:
        """You are in the queue."""

    def send_paired(self, offer: bool = False, common: Sequence[str] = ()) -> None:
        """You have a partner; ``offer``: you are the one of the two to make
        the offer (exactly one of them is); ``common``: the interests the two
        share, in code point order (empty after a fallback to anyone)."""

    def send_partner_left(self) -> None:
        """Your chat ended; you are idle."""

    def send_wait(self, reason: str | None, until: float | None = None) -> None:
        """Why you still wait: ``"alone"`` (nobody else online in your
        queue), ``"cooldown"`` (everyone else has just talked with you;
        ``until``: when the earliest cooldown with a waiting one ends), or
        ``None``: neither any more."""

    def send_partner_away(self) -> None:
        """Your partner's connection dropped; your chat goes on, and it may
        come back (see :meth:`Matchmaker.away`)."""

    def send_partner_back(self) -> None:
        """Your chat goes on: said to both when the one whose connection
        dropped is back (see :meth:`Matchmaker.back`)."""

    def send_event(self, event: bytes) -> None:
        """Your partner relayed ``event``, encoded as the wire carries it."""


@dataclass(frozen=True)
class Stats:
    """How many clients are connected, queued and in a chat."""

    online: int
    waiting: int
    chatting: int

    def as_dict(self) -> dict[str, int]:
        return {"online": self.online, "waiting": self.waiting, "chatting": self.chatting}


@dataclass(frozen=True)
class ReportedChat:
    """The chat a report ended, as :meth:`Matchmaker.report` describes it."""

    #: The partner that was reported.
    partner: Peer
    #: Its identity (see :meth:`Matchmaker.connect`).
    identity: Hashable
    #: How long the chat lasted, in seconds of the matchmaker's clock.
    seconds: float
    #: Whether the partner sent at least one chat message in it.
    partner_sent: bool


class Matchmaker(Protocol):
    """What a transport calls.  Every method is keyed by the :class:`Peer`."""

    def connect(
        self,
        peer: Peer,
        identity: Hashable | None = None,
        queue: str = "",
        interests: Sequence[str] = (),
        join: bool = True,
    ) -> None:
        """A new client arrived: it joins ``queue`` at once, with ``interests``
        (unless ``join`` is false: then it is idle until it calls :meth:`next`).

        ``identity`` names where it comes from (a hashed address); two
        identities one of which reported the other are never paired again.
        """

    def set_queue(self, peer: Peer, queue: str) -> None:
        """The queue the peer joins from now on, the next time it joins one
        (:meth:`next`, :meth:`report`): its chat, or its place in a queue,
        is left as it is."""

    def set_interests(self, peer: Peer, interests: Sequence[str]) -> None:
        """The peer's interests (normalised, each once) from the next time it
        joins a queue; a waiting peer joins its queue again at once with
        them, its interest wait starting again.  A chat is left as it is."""

    def next(self, peer: Peer) -> None:
        """End the peer's chat (its partner is told) or leave the queue, then queue again."""

    def stop(self, peer: Peer) -> None:
        """End the peer's chat (its partner is told) or leave the queue; the peer is idle."""

    def report(
        self, peer: Peer, reported: Callable[[ReportedChat | None], object] | None = None
    ) -> None:
        """End the chat like :meth:`next`, and never pair these two identities
        again.  ``reported`` is called, now or later, with the reported
        partner, its identity, how long the chat lasted and whether the
        partner said anything in it; or with ``None`` (and nothing is done)
        when the peer had no partner by the time the report was handled."""

    def disconnect(self, peer: Peer) -> None:
        """The client is gone; its partner, if any, is told.  Its cooldowns
        run on: a peer that connects again (a session that outlives its
        connections) is not paired with those it just talked with."""

    def away(self, peer: Peer) -> None:
        """The client's connection dropped, and it may come back
        (:meth:`back`) or go (:meth:`disconnect`).  Meanwhile it is never
        paired: a waiting client leaves its queue, and a chatting client's
        partner is told (:meth:`Peer.send_partner_away`) and keeps relaying
        to it.  Nothing is done for a client already away."""

    def back(self, peer: Peer) -> None:
        """The client away is back: a chat it still has goes on (both are
        told, :meth:`Peer.send_partner_back`; if its partner is away too, it
        is told that instead, :meth:`Peer.send_partner_away`); if it was
        waiting when it went away, it waits again (``send_waiting``); idle,
        it stays idle.  Nothing is done for a client that is not away."""

    def relay(self, peer: Peer, event: bytes, said: bool = False) -> None:
        """Deliver ``event`` to the partner the peer has when this is handled
        (:meth:`Peer.send_event`); without one it is dropped.  ``said``: the
        event is something the peer said in the chat (a message, not a
        typing notice), which a report of the peer takes into account."""

    def stats(self) -> Stats:
        """Counts for ``/healthz`` and the ``online`` event (a matchmaker
        in another process may answer with its latest snapshot)."""

    def next_deadline(self) -> float | None:
        """The clock time at which :meth:`advance` must run, or ``None``."""

    def advance(self) -> None:
        """Pair the waiting clients whose cooldown or interest wait has run
        out by now."""


def _leave_group(groups: dict[_K, dict[Peer, None]], key: _K, peer: Peer) -> None:
    """Take ``peer`` out of ``groups[key]``, and the group out once empty."""
    group = groups[key]
    del group[peer]
    if not group:
        del groups[key]


class AlreadyConnected(Exception):
    """:meth:`MemoryMatchmaker.connect` was called twice for one peer."""


class MemoryMatchmaker:
    """The :class:`Matchmaker` of a single process.

    :param rng: the source of every random choice.
    :param clock: returns the current time in seconds.
    :param cooldown: seconds after a chat ends during which its two clients
        are not paired again.
    :param interest_wait: seconds a client with interests waits for one who
        shares one before anyone open will do; 0: interests are ignored.

    Cost: the waiting clients are indexed by queue and interest, and by
    whether they are open.  Joining looks at the waiting clients who share
    one of the joiner's interests, then (if it is open) at the open ones:
    each of those groups is small, because every two clients in one of them
    may meet now unless a cooldown or a report keeps them apart, so it is
    never larger than one plus the number of recent partners of any client
    in it.  The queue as a whole (people whose interests nobody shares) may
    be long; it is never scanned.
    """

    def __init__(
        self,
        rng: random.Random,
        clock: Callable[[], float],
        cooldown: float = 60.0,
        interest_wait: float = 0.0,
    ) -> None:
        if cooldown < 0:
            raise ValueError("cooldown must not be negative")
        if interest_wait < 0:
            raise ValueError("interest_wait must not be negative")
        self._rng = rng
        self._clock = clock
        self._cooldown = cooldown
        self._interest_wait = interest_wait
        self._online: set[Peer] = set()
        # Each waiting client and the queue it waits in, in arrival order.
        self._waiting: dict[Peer, str] = {}
        # The waiting clients of each queue who are open, and those who have
        # each (queue, interest), in arrival order, which keeps every choice
        # reproducible for a given random source.
        self._open: dict[str, dict[Peer, None]] = {}
        self._by_interest: dict[tuple[str, str], dict[Peer, None]] = {}
        # Each client's interests (where it has any, and they are on).
        self._interests: dict[Peer, tuple[str, ...]] = {}
        # When the interest wait of each waiting client that is not yet open
        # runs out, and those times in a heap (stale entries are skipped).
        self._wait_ends: dict[Peer, float] = {}
        self._wait_timers: list[tuple[float, int, Peer]] = []
        # Online clients by the queue they join next, the waiting ones by
        # the queue they wait in, and the reason each waiting client was last
        # told it waits (see Peer.send_wait), where it has one.
        self._members: dict[str, int] = {}
        self._queued: dict[str, dict[Peer, None]] = {}
        self._told: dict[Peer, tuple[str, float | None]] = {}
        # The queue each client joins next, where it is not the text one ("").
        self._queue: dict[Peer, str] = {}
        self._partner: dict[Peer, Peer] = {}
        # The clients away, each with whether it was waiting when it went.
        self._away: dict[Peer, bool] = {}
        # When each chatting client's chat began, and who has sent a message in it.
        self._paired_at: dict[Peer, float] = {}
        self._sent: set[Peer] = set()
        self._identity: dict[Peer, Hashable] = {}
        # Pairs of identities that never meet again (insertion-ordered, capped).
        self._never: dict[frozenset[Hashable], None] = {}
        # recent[a][b] == recent[b][a] == the time their cooldown runs out.
        self._recent: dict[Peer, dict[Peer, float]] = {}
        # Every cooldown, to forget it once it has run out.
        self._expiries: list[tuple[float, int, Peer, Peer]] = []
        # Cooldowns that keep two waiting clients apart: when one runs out,
        # the two may have to be paired.
        self._blocked: list[tuple[float, int, Peer, Peer]] = []
        self._seq = itertools.count()

    # -- the Matchmaker interface ---------------------------------------

    def connect(
        self,
        peer: Peer,
        identity: Hashable | None = None,
        queue: str = "",
        interests: Sequence[str] = (),
        join: bool = True,
    ) -> None:
        if peer in self._online:
            raise AlreadyConnected(peer)
        self._online.add(peer)
        self._identity[peer] = identity if identity is not None else cast(Hashable, peer)
        if queue:
            self._queue[peer] = queue
        self._members[queue] = self._members.get(queue, 0) + 1
        if interests and self._interest_wait > 0:
            self._interests[peer] = tuple(interests)
        now = self._clock()
        self._advance(now)
        if join:
            self._enqueue(peer)
        self._tell_reasons(now)

    def set_queue(self, peer: Peer, queue: str) -> None:
        self._require_online(peer)
        members = self._members
        members[self._queue.get(peer, "")] -= 1
        members[queue] = members.get(queue, 0) + 1
        if queue:
            self._queue[peer] = queue
        else:
            self._queue.pop(peer, None)
        self._tell_reasons(self._clock())

    def set_interests(self, peer: Peer, interests: Sequence[str]) -> None:
        self._require_online(peer)
        now = self._clock()
        self._advance(now)
        queue = self._unwait(peer)
        if interests and self._interest_wait > 0:
            self._interests[peer] = tuple(interests)
        else:
            self._interests.pop(peer, None)
        if queue is not None:
            self._place(peer, now, self._queue.get(peer, ""), self._wait_end(peer, now))

    def next(self, peer: Peer) -> None:
        self._require_online(peer)
        now = self._clock()
        self._advance(now)
        self._leave(peer, now)
        self._enqueue(peer)
        self._tell_reasons(now)

    def stop(self, peer: Peer) -> None:
        self._require_online(peer)
        now = self._clock()
        self._advance(now)
        self._leave(peer, now)
        self._tell_reasons(now)

    def report(
        self, peer: Peer, reported: Callable[[ReportedChat | None], object] | None = None
    ) -> None:
        chat = self.report_now(peer)
        if reported is not None:
            reported(chat)

    def report_now(self, peer: Peer) -> ReportedChat | None:
        """:meth:`report`, with its outcome returned."""
        self._require_online(peer)
        partner = self._partner.get(peer)
        if partner is None:
            return None
        reported = self._identity[partner]
        chat = ReportedChat(
            partner, reported, self._clock() - self._paired_at[partner], partner in self._sent
        )
        reporter = self._identity[peer]
        # Two people behind one address (a NAT) cannot be kept apart by
        # address without keeping everyone there apart: the cooldown must do.
        if reporter != reported:
            never = self._never
            never[frozenset((reporter, reported))] = None
            if len(never) > MAX_NEVER_PAIRS:
                del never[next(iter(never))]
        self.next(peer)
        return chat

    def disconnect(self, peer: Peer) -> None:
        if peer not in self._online:
            return
        now = self._clock()
        self._advance(now)
        partner = self._partner.pop(peer, None)
        if partner is not None:
            del self._partner[partner]
            self._end_chat(peer, partner)
            self._start_cooldown(peer, partner, now)
            partner.send_partner_left()
        self._unwait(peer)
        self._away.pop(peer, None)
        self._online.discard(peer)
        del self._identity[peer]
        self._told.pop(peer, None)
        self._members[self._queue.pop(peer, "")] -= 1
        self._interests.pop(peer, None)
        # Its cooldowns run on, and are forgotten when they run out.
        self._tell_reasons(now)

    def away(self, peer: Peer) -> None:
        self._require_online(peer)
        if peer in self._away:
            return
        now = self._clock()
        self._advance(now)
        partner = self._partner.get(peer)
        self._away[peer] = self._unwait(peer) is not None
        if partner is not None:
            partner.send_partner_away()
        self._tell_reasons(now)

    def back(self, peer: Peer) -> None:
        self._require_online(peer)
        was_waiting = self._away.pop(peer, None)
        if was_waiting is None:
            return
        now = self._clock()
        self._advance(now)
        partner = self._partner.get(peer)
        if partner is not None:
            if partner in self._away:
                # Both dropped: this one is back, its partner not yet.
                peer.send_partner_away()
            else:
                partner.send_partner_back()
                peer.send_partner_back()
        elif was_waiting and peer not in self._waiting:
            self._enqueue(peer)
        self._tell_reasons(now)

    def relay(self, peer: Peer, event: bytes, said: bool = False) -> None:
        partner = self._partner.get(peer)
        if partner is not None:
            if said:
                self._sent.add(peer)
            partner.send_event(event)

    def stats(self) -> Stats:
        return Stats(len(self._online), len(self._waiting), len(self._partner))

    def next_deadline(self) -> float | None:
        blocked = self._blocked
        while blocked and not self._still_blocked(blocked[0]):
            heapq.heappop(blocked)
        timers = self._wait_timers
        while timers and not self._still_timed(timers[0]):
            heapq.heappop(timers)
        if blocked and timers:
            return min(blocked[0][0], timers[0][0])
        if blocked:
            return blocked[0][0]
        return timers[0][0] if timers else None

    def advance(self) -> None:
        now = self._clock()
        self._advance(now)
        self._tell_reasons(now)

    # -- read-only views, for tests and operators -------------------------

    def partner_of(self, peer: Peer) -> Peer | None:
        """The peer's current partner, or ``None``."""
        return self._partner.get(peer)

    def is_waiting(self, peer: Peer) -> bool:
        return peer in self._waiting

    # -- internals -------------------------------------------------------

    def _require_online(self, peer: Peer) -> None:
        if peer not in self._online:
            raise KeyError(f"{peer!r} is not connected")

    def _leave(self, peer: Peer, now: float) -> None:
        """End the peer's chat or take it out of the queue; it becomes idle."""
        partner = self._partner.pop(peer, None)
        if partner is not None:
            del self._partner[partner]
            self._end_chat(peer, partner)
            self._start_cooldown(peer, partner, now)
            partner.send_partner_left()
        else:
            self._unwait(peer)

    def _end_chat(self, a: Peer, b: Peer) -> None:
        """Forget when the chat of ``a`` and ``b`` began and who spoke in it."""
        paired_at, sent = self._paired_at, self._sent
        del paired_at[a], paired_at[b]
        sent.discard(a)
        sent.discard(b)

    def _start_cooldown(self, a: Peer, b: Peer, now: float) -> None:
        if self._cooldown <= 0:
            return
        expiry = now + self._cooldown
        self._recent.setdefault(a, {})[b] = expiry
        self._recent.setdefault(b, {})[a] = expiry
        heapq.heappush(self._expiries, (expiry, next(self._seq), a, b))

    def _enqueue(self, peer: Peer) -> None:
        # A new "waiting" starts without a reason (placed again, a waiting
        # client keeps the one it was told: no new "waiting" was sent).
        self._told.pop(peer, None)
        peer.send_waiting()
        now = self._clock()
        self._place(peer, now, self._queue.get(peer, ""), self._wait_end(peer, now))

    def _wait_end(self, peer: Peer, now: float) -> float:
        """When the interest wait of a peer joining a queue now runs out."""
        return now + self._interest_wait if peer in self._interests else now

    def _eligible(
        self, peer: Peer, recent: dict[Peer, float], now: float, group: Iterable[Peer]
    ) -> list[Peer]:
        """Those of ``group`` that no cooldown or report keeps from ``peer``."""
        eligible = [w for w in group if recent.get(w, now) <= now]
        if eligible and self._never:
            mine = self._identity[peer]
            eligible = [
                w for w in eligible if frozenset((mine, self._identity[w])) not in self._never
            ]
        return eligible

    def _place(self, peer: Peer, now: float, queue: str, wait_end: float) -> None:
        """Pair an idle peer with a random eligible waiting one of ``queue``
        (who shares an interest if any does; else, if the peer is open after
        ``wait_end``, any open one), or queue it there."""
        recent = self._recent.get(peer, {})
        interests = self._interests.get(peer, ())
        is_open = wait_end <= now
        eligible: list[Peer] = []
        if interests:
            by_interest = self._by_interest
            sharing: dict[Peer, None] = {}
            for tag in interests:
                sharing.update(by_interest.get((queue, tag), ()))
            eligible = self._eligible(peer, recent, now, sharing)
        if not eligible and is_open:
            eligible = self._eligible(peer, recent, now, self._open.get(queue, ()))
        if eligible:
            partner = eligible[0] if len(eligible) == 1 else self._rng.choice(eligible)
            self._unwait(partner)
            self._partner[peer] = partner
            self._partner[partner] = peer
            self._paired_at[peer] = self._paired_at[partner] = now
            theirs = self._interests.get(partner)
            common = sorted(set(interests).intersection(theirs)) if interests and theirs else ()
            # The one that waited makes the offer.
            partner.send_paired(True, common)
            peer.send_paired(False, common)
            return
        # Nobody it may meet now: every waiting client it could meet is in
        # cooldown with it, or never to meet it again.  Wake up when a
        # cooldown runs out, or its interest wait does.
        waiting = self._waiting
        for other, expiry in recent.items():
            if waiting.get(other) == queue:
                heapq.heappush(self._blocked, (expiry, next(self._seq), peer, other))
        waiting[peer] = queue
        self._queued.setdefault(queue, {})[peer] = None
        for tag in interests:
            self._by_interest.setdefault((queue, tag), {})[peer] = None
        if is_open:
            self._open.setdefault(queue, {})[peer] = None
        else:
            self._wait_ends[peer] = wait_end
            heapq.heappush(self._wait_timers, (wait_end, next(self._seq), peer))

    def _unwait(self, peer: Peer) -> str | None:
        """Take the peer out of the queue it waits in; which that was, if any."""
        queue = self._waiting.pop(peer, None)
        if queue is None:
            return None
        _leave_group(self._queued, queue, peer)
        for tag in self._interests.get(peer, ()):
            _leave_group(self._by_interest, (queue, tag), peer)
        if self._wait_ends.pop(peer, None) is None:
            _leave_group(self._open, queue, peer)
        return queue

    def _tell_reasons(self, now: float) -> None:
        """Tell the waiting clients of small queues why they wait, where that
        has changed (see :meth:`Peer.send_wait`)."""
        told = self._told
        for queue, members in self._members.items():
            queued = self._queued.get(queue)
            if not queued:
                continue
            if members > WAIT_REASONS_UP_TO:
                # Told while the queue was small: taken back (told is small).
                for peer in [p for p in told if p in queued]:
                    del told[peer]
                    peer.send_wait(None)
                continue
            for peer in queued:
                reason = self._reason(peer, queue, members, now)
                if reason != told.get(peer):
                    if reason is None:
                        del told[peer]
                        peer.send_wait(None)
                    else:
                        told[peer] = reason
                        peer.send_wait(*reason)

    def _reason(
        self, peer: Peer, queue: str, members: int, now: float
    ) -> tuple[str, float | None] | None:
        """Why a client waiting in ``queue`` (of ``members`` online) waits,
        if it is one a person would otherwise take for a fault."""
        others = members - (self._queue.get(peer, "") == queue)
        if others <= 0:
            return ("alone", None)
        recent = self._recent.get(peer)
        if not recent or len(recent) < others:
            return None
        apart, ends = 0, []
        online = self._online
        for other, expiry in recent.items():
            # (Cooldowns outlive a disconnection: those gone are not counted.)
            if expiry > now and other in online:
                apart += self._queue.get(other, "") == queue
                if self._waiting.get(other) == queue:
                    ends.append(expiry)
        if apart < others:
            return None
        return ("cooldown", min(ends) if ends else None)

    def _still_timed(self, entry: tuple[float, int, Peer]) -> bool:
        """Whether an interest-wait entry still describes a waiting client."""
        return self._wait_ends.get(entry[2]) == entry[0]

    def _still_blocked(self, entry: tuple[float, int, Peer, Peer]) -> bool:
        """Whether a blocked-pair entry still describes two waiting clients."""
        expiry, _, a, b = entry
        return (
            a in self._waiting
            and b in self._waiting
            and self._recent.get(a, {}).get(b, expiry) == expiry
        )

    def _advance(self, now: float) -> None:
        # Forget cooldowns that have run out.
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            expiry, _, a, b = heapq.heappop(expiries)
            mine = self._recent.get(a)
            if mine is None or mine.get(b) != expiry:
                continue  # one of them left; already forgotten
            del mine[b]
            if not mine:
                del self._recent[a]
            theirs = self._recent[b]
            del theirs[a]
            if not theirs:
                del self._recent[b]
        # Waiting clients freed from a cooldown, or whose interest wait has
        # run out, look for a partner again.
        blocked = self._blocked
        freed: dict[Peer, None] = {}
        while blocked and blocked[0][0] <= now:
            entry = heapq.heappop(blocked)
            if self._still_blocked(entry):
                freed[entry[2]] = None
                freed[entry[3]] = None
        timers = self._wait_timers
        while timers and timers[0][0] <= now:
            timer = heapq.heappop(timers)
            if self._still_timed(timer):
                freed[timer[2]] = None
        for peer in freed:
            wait_end = self._wait_ends.get(peer, now)
            queue = self._unwait(peer)
            if queue is not None:
                self._place(peer, now, queue, wait_end)
