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
* Two clients whose chat ended less than ``cooldown`` seconds ago are not
  eligible for each other; two identities (addresses) one of which reported
  the other are never eligible for each other again.  When such a cooldown runs out while both still
  wait, they must be paired at that moment: :meth:`Matchmaker.next_deadline`
  tells the caller when to call :meth:`Matchmaker.advance`.
* A relayed event goes to the sender's partner at the moment it is handled,
  and to nobody else.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Protocol, cast

#: How many reported pairs of identities are remembered; the oldest go first.
MAX_NEVER_PAIRS = 100_000


class Peer(Protocol):
    """A connected client, as the matchmaker sees it.

    Implementations deliver each call to their client and must not call back
    into the matchmaker from inside these methods.
    """

    def send_waiting(self) -> None:
        """You are in the queue."""

    def send_paired(self, offer: bool = False) -> None:
        """You have a partner; ``offer``: you are the one of the two to make
        the offer (exactly one of them is)."""

    def send_partner_left(self) -> None:
        """Your chat ended; you are idle."""

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

    def connect(self, peer: Peer, identity: Hashable | None = None, queue: str = "") -> None:
        """A new client arrived: it joins ``queue`` at once.

        ``identity`` names where it comes from (a hashed address); two
        identities one of which reported the other are never paired again.
        """

    def set_queue(self, peer: Peer, queue: str) -> None:
        """The queue the peer joins from now on, the next time it joins one
        (:meth:`next`, :meth:`report`): its chat, or its place in a queue,
        is left as it is."""

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
        """The client is gone; its partner, if any, is told."""

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
        """Pair the waiting clients whose cooldown has run out by now."""


class AlreadyConnected(Exception):
    """:meth:`MemoryMatchmaker.connect` was called twice for one peer."""


class MemoryMatchmaker:
    """The :class:`Matchmaker` of a single process.

    :param rng: the source of every random choice.
    :param clock: returns the current time in seconds.
    :param cooldown: seconds after a chat ends during which its two clients
        are not paired again.

    Cost: joining the queue is linear in the number of waiting clients.  That
    number stays tiny, because every two waiting clients must be in cooldown
    with each other: the queue is never longer than one plus the number of
    recent partners of any client in it.
    """

    def __init__(
        self, rng: random.Random, clock: Callable[[], float], cooldown: float = 60.0
    ) -> None:
        if cooldown < 0:
            raise ValueError("cooldown must not be negative")
        self._rng = rng
        self._clock = clock
        self._cooldown = cooldown
        self._online: set[Peer] = set()
        # Each waiting client and the queue it waits in, in arrival order,
        # which keeps every choice reproducible for a given random source.
        self._waiting: dict[Peer, str] = {}
        # The queue each client joins next, where it is not the text one ("").
        self._queue: dict[Peer, str] = {}
        self._partner: dict[Peer, Peer] = {}
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

    def connect(self, peer: Peer, identity: Hashable | None = None, queue: str = "") -> None:
        if peer in self._online:
            raise AlreadyConnected(peer)
        self._online.add(peer)
        self._identity[peer] = identity if identity is not None else cast(Hashable, peer)
        if queue:
            self._queue[peer] = queue
        self._advance(self._clock())
        self._enqueue(peer)

    def set_queue(self, peer: Peer, queue: str) -> None:
        self._require_online(peer)
        if queue:
            self._queue[peer] = queue
        else:
            self._queue.pop(peer, None)

    def next(self, peer: Peer) -> None:
        self._require_online(peer)
        now = self._clock()
        self._advance(now)
        self._leave(peer, now)
        self._enqueue(peer)

    def stop(self, peer: Peer) -> None:
        self._require_online(peer)
        now = self._clock()
        self._advance(now)
        self._leave(peer, now)

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
            partner.send_partner_left()
        self._waiting.pop(peer, None)
        self._online.discard(peer)
        del self._identity[peer]
        self._queue.pop(peer, None)
        for other in self._recent.pop(peer, {}):
            others = self._recent[other]
            del others[peer]
            if not others:
                del self._recent[other]

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
        return blocked[0][0] if blocked else None

    def advance(self) -> None:
        self._advance(self._clock())

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
            self._waiting.pop(peer, None)

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
        peer.send_waiting()
        self._place(peer, self._clock())

    def _place(self, peer: Peer, now: float, queue: str | None = None) -> None:
        """Pair an idle peer with a random eligible waiting one of ``queue``
        (by default the one it joins next), or queue it there."""
        recent = self._recent.get(peer, {})
        if queue is None:
            queue = self._queue.get(peer, "")
        eligible = [
            w
            for w, joined in self._waiting.items()
            if joined == queue and recent.get(w, now) <= now
        ]
        if eligible and self._never:
            mine = self._identity[peer]
            eligible = [
                w for w in eligible if frozenset((mine, self._identity[w])) not in self._never
            ]
        if eligible:
            partner = eligible[0] if len(eligible) == 1 else self._rng.choice(eligible)
            del self._waiting[partner]
            self._partner[peer] = partner
            self._partner[partner] = peer
            self._paired_at[peer] = self._paired_at[partner] = now
            # The one that waited makes the offer.
            partner.send_paired(offer=True)
            peer.send_paired(offer=False)
            return
        # Nobody eligible: every waiting client is in cooldown with this one,
        # or never to meet it again.  Wake up when a cooldown runs out.
        for other, joined in self._waiting.items():
            expiry = recent.get(other)
            if expiry is not None and joined == queue:
                heapq.heappush(self._blocked, (expiry, next(self._seq), peer, other))
        self._waiting[peer] = queue

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
        # Waiting clients freed from a cooldown look for a partner again.
        blocked = self._blocked
        freed: dict[Peer, None] = {}
        while blocked and blocked[0][0] <= now:
            entry = heapq.heappop(blocked)
            if self._still_blocked(entry):
                freed[entry[2]] = None
                freed[entry[3]] = None
        for peer in freed:
            if peer in self._waiting:
                self._place(peer, now, self._waiting.pop(peer))
