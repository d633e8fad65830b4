"""The pure matchmaker: pairing rules, relay, cooldowns, and an invariant
checker driven by hypothesis through random sequences of client actions."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from fakes import FakeClock, RecordingPeer
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
)

from roulette.core import AlreadyConnected, MemoryMatchmaker, ReportedChat, Stats


def make(cooldown: float = 60.0, seed: int = 1) -> tuple[MemoryMatchmaker, FakeClock]:
    clock = FakeClock()
    return MemoryMatchmaker(random.Random(seed), clock, cooldown=cooldown), clock


def peers(*names: str) -> list[RecordingPeer]:
    return [RecordingPeer(n) for n in names]


def test_first_client_waits_second_pairs_with_it() -> None:
    mm, _ = make()
    a, b = peers("a", "b")
    mm.connect(a)
    assert a.take() == [("waiting",)]
    mm.connect(b)
    assert a.take() == [("paired",)]
    assert b.take() == [("waiting",), ("paired",)]
    assert mm.partner_of(a) is b and mm.partner_of(b) is a
    assert mm.stats() == Stats(online=2, waiting=0, chatting=2)


def test_connect_twice_is_refused() -> None:
    mm, _ = make()
    (a,) = peers("a")
    mm.connect(a)
    with pytest.raises(AlreadyConnected):
        mm.connect(a)


def test_an_event_goes_to_the_partner_only_and_verbatim() -> None:
    mm, _ = make()
    a, b, c = peers("a", "b", "c")
    for p in (a, b, c):
        mm.connect(p)
    for p in (a, b, c):
        p.take()
    event = '{"type":"message","text":"  <b>hi</b> \u00e9\U0001f600  "}'.encode()
    mm.relay(a, event, said=True)
    assert b.take() == [("event", event)]
    assert a.take() == [] and c.take() == []
    mm.relay(c, b"anyone?", said=True)  # c waits: nobody gets it
    assert a.take() == [] and b.take() == [] and c.take() == []


def test_any_event_is_relayed_to_the_partner_and_dropped_without_one() -> None:
    # The core never looks inside an event: a kind it has never heard of
    # goes the same way.
    mm, _ = make()
    a, b, c = peers("a", "b", "c")
    for p in (a, b, c):
        mm.connect(p)
    for p in (a, b, c):
        p.take()
    mm.relay(b, b'{"type":"offer","sdp":"v=0"}')
    assert a.take() == [("event", b'{"type":"offer","sdp":"v=0"}')]
    mm.relay(c, b'{"type":"typing","active":true}')
    assert [p.take() for p in (a, b, c)] == [[], [], []]


def test_a_report_comes_to_its_callback() -> None:
    mm, _ = make()
    a, b = peers("a", "b")
    mm.connect(a, "ip-a")
    mm.connect(b, "ip-b")
    outcomes: list[ReportedChat | None] = []
    mm.report(a, outcomes.append)
    mm.report(a, outcomes.append)  # a waits: nothing to report
    mm.report(b)  # b is idle; without a callback the outcome is not needed
    assert outcomes == [ReportedChat(b, "ip-b", 0.0, False), None]


def test_next_tells_partner_and_requeues_the_one_who_pressed_it() -> None:
    mm, _ = make()
    a, b = peers("a", "b")
    mm.connect(a)
    mm.connect(b)
    a.take(), b.take()
    mm.next(a)
    assert b.take() == [("partner_left",)]
    assert a.take() == [("waiting",)]
    # b stays idle until it asks for someone new.
    assert mm.stats() == Stats(online=2, waiting=1, chatting=0)
    assert not mm.is_waiting(b)
    # Messages no longer reach the old partner.
    mm.relay(a, b"still there?", said=True)
    assert b.take() == [] and a.take() == []


def test_stop_makes_both_idle() -> None:
    mm, _ = make()
    a, b = peers("a", "b")
    mm.connect(a)
    mm.connect(b)
    a.take(), b.take()
    mm.stop(b)
    assert a.take() == [("partner_left",)]
    assert b.take() == []
    assert mm.stats() == Stats(online=2, waiting=0, chatting=0)
    # Stop while waiting leaves the queue; stop while idle does nothing.
    mm.next(a)
    mm.stop(a)
    mm.stop(a)
    assert mm.stats() == Stats(online=2, waiting=0, chatting=0)


def test_next_while_waiting_requeues() -> None:
    mm, _ = make()
    (a,) = peers("a")
    mm.connect(a)
    mm.next(a)
    assert a.take() == [("waiting",), ("waiting",)]
    assert mm.stats() == Stats(online=1, waiting=1, chatting=0)


def test_disconnect_tells_partner_and_clears_everything() -> None:
    mm, _ = make()
    a, b, c = peers("a", "b", "c")
    mm.connect(a)
    mm.connect(b)
    mm.connect(c)
    a.take(), b.take()
    mm.disconnect(a)
    assert b.take() == [("partner_left",)]
    mm.disconnect(c)  # a waiting client
    mm.disconnect(c)  # twice is harmless
    assert mm.stats() == Stats(online=1, waiting=0, chatting=0)
    with pytest.raises(KeyError):
        mm.next(a)


def test_cooldown_keeps_former_partners_apart_then_pairs_them() -> None:
    mm, clock = make(cooldown=60)
    a, b = peers("a", "b")
    mm.connect(a)
    mm.connect(b)
    mm.next(a)  # a waits; b is idle
    clock.now += 10
    mm.next(b)  # b may not meet a again yet
    assert mm.is_waiting(a) and mm.is_waiting(b)
    assert mm.next_deadline() == pytest.approx(1000 + 60)
    clock.now = 1059.999
    mm.advance()
    assert mm.is_waiting(a) and mm.is_waiting(b)
    clock.now = 1060
    mm.advance()
    assert mm.partner_of(a) is b
    assert a.events[-1] == ("paired",) and b.events[-1] == ("paired",)
    assert mm.next_deadline() is None


def test_newcomer_is_not_blocked_by_others_cooldown() -> None:
    mm, _ = make(cooldown=60)
    a, b, c = peers("a", "b", "c")
    mm.connect(a)
    mm.connect(b)
    mm.next(a)
    mm.next(b)  # a and b both wait, apart
    mm.connect(c)
    assert mm.partner_of(c) in (a, b)
    assert mm.stats().waiting == 1


def test_zero_cooldown_allows_immediate_rematch() -> None:
    mm, _ = make(cooldown=0)
    a, b = peers("a", "b")
    mm.connect(a)
    mm.connect(b)
    mm.next(a)
    mm.next(b)
    assert mm.partner_of(a) is b
    assert mm.next_deadline() is None


def test_cooldowns_outlive_a_disconnection_until_they_run_out() -> None:
    """A peer that connects again (a session whose connection closed) is
    still kept from the partner it just left; then everything is forgotten."""
    mm, clock = make(cooldown=60)
    a, b, c = peers("a", "b", "c")
    mm.connect(a)
    mm.connect(b)
    mm.next(a)  # a skipped b
    mm.next(b)  # both wait, apart
    mm.disconnect(a)  # a reloads the page
    mm.connect(a)
    assert mm.partner_of(a) is None and mm.is_waiting(a) and mm.is_waiting(b)
    mm.connect(c)
    assert mm.partner_of(c) in (a, b)
    clock.now += 60
    mm.advance()
    assert mm._recent == {}
    mm.disconnect(a)
    mm.disconnect(b)
    mm.disconnect(c)
    assert mm.next_deadline() is None
    clock.now += 60  # the cooldown of c's chat runs out: nothing is left
    mm.advance()
    assert mm._recent == {} and mm._expiries == []


def test_a_chat_ended_by_a_disconnection_starts_a_cooldown() -> None:
    mm, clock = make(cooldown=60)
    a, b = peers("a", "b")
    mm.connect(a)
    mm.connect(b)
    mm.disconnect(a)  # a closes its tab mid-chat, and comes back at once
    assert b.status == "partner_left"
    mm.connect(a)
    mm.next(b)
    assert mm.partner_of(a) is None
    clock.now += 60
    mm.advance()
    assert mm.partner_of(a) is b


def test_a_partner_is_told_when_its_stranger_is_away_and_back() -> None:
    mm, _ = make()
    a, b, c = peers("a", "b", "c")
    mm.connect(a)
    mm.connect(b)
    a.take(), b.take()
    mm.away(a)
    assert b.take() == [("partner_away",)]
    assert a.take() == []
    mm.relay(b, b"hi")  # relayed on: the shell holds it for a
    assert a.take() == [("event", b"hi")]
    mm.connect(c)  # never paired with a, nor with b (still in its chat)
    assert mm.is_waiting(c)
    mm.away(a)  # twice: nothing more
    assert b.take() == []
    mm.back(a)
    assert b.take() == [("partner_back",)]
    assert a.take() == [("partner_back",)]
    mm.back(a)  # not away: nothing
    assert a.take() == b.take() == []
    assert mm.partner_of(a) is b


def test_when_both_dropped_the_first_back_is_told_its_partner_is_away() -> None:
    mm, _ = make()
    a, b = peers("a", "b")
    mm.connect(a)
    mm.connect(b)
    mm.away(a)
    mm.away(b)
    a.take(), b.take()
    mm.back(a)
    assert a.take() == [("partner_away",)]
    assert b.take() == []
    mm.back(b)
    assert a.take() == [("partner_back",)] and b.take() == [("partner_back",)]


def test_an_away_client_whose_partner_left_comes_back_idle() -> None:
    mm, _ = make(cooldown=0)
    a, b = peers("a", "b")
    mm.connect(a)
    mm.connect(b)
    mm.away(a)
    mm.next(b)
    assert a.status == "partner_left"
    assert mm.is_waiting(b)  # and never paired with a, away
    a.take()
    mm.back(a)
    assert a.take() == []
    assert mm.partner_of(a) is None and not mm.is_waiting(a)
    mm.next(a)
    assert mm.partner_of(a) is b


def test_a_waiting_client_away_is_never_paired_and_waits_again_when_back() -> None:
    mm, _ = make()
    a, b, c = peers("a", "b", "c")
    mm.connect(a)
    mm.away(a)
    assert not mm.is_waiting(a)
    mm.connect(b)
    assert mm.partner_of(b) is None and mm.is_waiting(b)
    assert mm.stats() == Stats(online=2, waiting=1, chatting=0)
    a.take()
    mm.back(a)
    assert a.take() == [("waiting",), ("paired",)]
    assert mm.partner_of(a) is b
    mm.connect(c)
    mm.away(c)
    mm.disconnect(c)  # the grace ran out
    assert mm.stats() == Stats(online=2, waiting=0, chatting=2)
    assert mm._away == {}


def test_an_operation_after_a_missed_deadline_still_pairs_the_freed() -> None:
    """Even if the caller wakes late, nobody stays waiting beside an eligible partner."""
    mm, clock = make(cooldown=60)
    a, b, c, d = peers("a", "b", "c", "d")
    mm.connect(a)
    mm.connect(b)
    mm.next(a)
    mm.next(b)
    clock.now += 120  # advance() was never called
    mm.connect(c)
    mm.connect(d)
    assert mm.stats() == Stats(online=4, waiting=0, chatting=4)


def test_choice_among_eligible_partners_is_uniform() -> None:
    """Three waiting clients, all in cooldown with each other; a newcomer
    picks each of them about a third of the time."""
    counts: Counter[str] = Counter()
    trials = 3000
    rng = random.Random(12345)
    for _ in range(trials):
        clock = FakeClock()
        mm = MemoryMatchmaker(rng, clock, cooldown=60)
        a, b, c, d = peers("a", "b", "c", "d")
        mm.connect(a)
        mm.connect(b)
        mm.stop(a)  # a-b in cooldown, both idle
        mm.connect(c)
        mm.next(a)  # a meets c
        mm.stop(c)  # a-c in cooldown
        mm.next(b)
        mm.next(c)  # b meets c
        mm.stop(b)  # b-c in cooldown
        mm.next(a)
        mm.next(b)
        mm.next(c)
        assert mm.stats().waiting == 3
        mm.connect(d)
        counts[mm.partner_of(d).name] += 1  # type: ignore[union-attr]
    assert set(counts) == {"a", "b", "c"}
    # Expected 1000 each; 4.5 standard deviations is about +-117.
    for name in "abc":
        assert abs(counts[name] - trials / 3) < 117, counts


#: A client's interests, from a small vocabulary so that they meet (with
#: characters that Lua patterns, Redis ranges or byte order could trip on).
INTERESTS = st.lists(
    st.sampled_from(["cats", "chess", "ñandú", "c++ [lua] %s", "zoë"]), max_size=2, unique=True
)


class MatchmakerMachine(RuleBasedStateMachine):
    """Random connects, nexts, stops, messages, typing, interests,
    disconnects, clients away and back, sessions connecting again, and the
    passing of time, checking the pairing rules after every step."""

    COOLDOWN = 30.0
    INTEREST_WAIT = 10.0

    clients = Bundle("clients")

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.mm = MemoryMatchmaker(
            random.Random(0), self.clock, cooldown=self.COOLDOWN, interest_wait=self.INTEREST_WAIT
        )
        self.online: list[RecordingPeer] = []
        self.gone: list[RecordingPeer] = []
        self.count = 0
        # The model's own memory of who chatted with whom, and when it ended.
        self.partner: dict[RecordingPeer, RecordingPeer] = {}
        self.ended: dict[frozenset[RecordingPeer], float] = {}
        # Clients come from a few addresses; a report keeps two apart for good.
        self.identity: dict[RecordingPeer, str] = {}
        self.never: set[frozenset[str]] = set()
        # When each current chat began, and who has sent a message in it.
        self.paired_at: dict[RecordingPeer, float] = {}
        self.sent: set[RecordingPeer] = set()
        # The queue each client joins next, and the one it last joined.
        self.queue: dict[RecordingPeer, str] = {}
        self.joined: dict[RecordingPeer, str] = {}
        # Each client's interests, and those it last joined a queue with, when.
        self.interests: dict[RecordingPeer, tuple[str, ...]] = {}
        self.joined_with: dict[RecordingPeer, tuple[str, ...]] = {}
        self.since: dict[RecordingPeer, float] = {}
        # The clients away, each with whether it was waiting when it went.
        self.away: dict[RecordingPeer, bool] = {}

    # -- helpers ---------------------------------------------------------------

    def _join(self, p: RecordingPeer) -> None:
        """The model of a client joining its queue now."""
        self.joined[p] = self.queue[p]
        self.joined_with[p] = self.interests[p]
        self.since[p] = self.clock.now

    def _open(self, p: RecordingPeer) -> bool:
        """Whether a waiting client meets anyone open: it has no interests,
        or its interest wait has run out."""
        return not self.joined_with[p] or self.clock.now >= self.since[p] + self.INTEREST_WAIT

    def _may_meet(self, p: RecordingPeer, q: RecordingPeer) -> bool:
        """By the interest rule alone."""
        shared = set(self.joined_with[p]) & set(self.joined_with[q])
        return bool(shared) or (self._open(p) and self._open(q))

    def _observe_pairings(self) -> None:
        """Learn new pairs from the matchmaker, checking each is allowed."""
        for p in self.online:
            q = self.mm.partner_of(p)
            if q is not None and self.partner.get(p) is not q:
                assert p not in self.away and q not in self.away, f"{p} or {q} paired while away"
                assert p not in self.partner, f"{p} got a second partner"
                assert q not in self.partner, f"{q} got a second partner"
                ended = self.ended.get(frozenset((p, q)))
                # As the matchmaker computes it: the cooldown ends at ended + COOLDOWN
                # (a difference could round below COOLDOWN at that very moment).
                assert ended is None or self.clock.now >= ended + self.COOLDOWN, (
                    f"{p} and {q} re-paired during their cooldown"
                )
                ids = frozenset((self.identity[p], self.identity[q]))
                assert ids not in self.never, f"{p} and {q} paired after a report"
                assert self.joined[p] == self.joined[q], f"{p} and {q} met across queues"
                assert p.offer != q.offer, f"{p} and {q} were not told one offer"
                assert self._may_meet(p, q), f"{p} and {q} met against the interest rule"
                common = sorted(set(self.joined_with[p]) & set(self.joined_with[q]))
                assert p.common == q.common == common, (p.common, q.common, common)
                self.partner[p] = q
                self.partner[q] = p
                self.paired_at[p] = self.paired_at[q] = self.clock.now
                self.sent -= {p, q}
                assert p.events[-1] == ("paired",) and q.events[-1] == ("paired",)

    def _end(self, p: RecordingPeer, record_cooldown: bool) -> RecordingPeer | None:
        q = self.partner.pop(p, None)
        if q is not None:
            del self.partner[q]
            if record_cooldown:
                self.ended[frozenset((p, q))] = self.clock.now
        return q

    def _silence(self) -> None:
        for p in self.online:
            p.take()

    # -- rules -------------------------------------------------------------------

    @rule(
        target=clients,
        address=st.sampled_from(["ip1", "ip2", "ip3", "ip4", "ip5", "ip6"]),
        video=st.booleans(),
        interests=INTERESTS,
    )
    def connect(self, address: str, video: bool, interests: list[str]) -> RecordingPeer:
        self.count += 1
        p = RecordingPeer(f"c{self.count}")
        self.online.append(p)
        self.identity[p] = address
        self.queue[p] = "video" if video else ""
        self.interests[p] = tuple(interests)
        self._join(p)
        self.mm.connect(p, address, self.queue[p], self.interests[p])
        assert p.events[0] == ("waiting",)
        self._observe_pairings()
        return p

    @rule(p=clients)
    def next(self, p: RecordingPeer) -> None:
        if p not in self.online or p in self.away:  # away: no connection
            return
        self._silence()
        q = self._end(p, record_cooldown=True)
        self._join(p)
        self.mm.next(p)
        if q is not None:
            assert q.events == [("partner_left",)]
        assert p.events[0] == ("waiting",)
        self._observe_pairings()

    @rule(p=clients)
    def report(self, p: RecordingPeer) -> None:
        if p not in self.online or p in self.away:  # away: no connection
            return
        self._silence()
        q = self.partner.get(p)
        if q is not None:
            self._join(p)
        reported = self.mm.report_now(p)
        if q is None:
            assert reported is None
            assert p.events == []
            return
        assert reported == ReportedChat(
            q, self.identity[q], self.clock.now - self.paired_at[q], q in self.sent
        )
        if self.identity[p] != self.identity[q]:
            self.never.add(frozenset((self.identity[p], self.identity[q])))
        self._end(p, record_cooldown=True)
        assert q.events == [("partner_left",)]
        assert p.events[0] == ("waiting",)
        self._observe_pairings()

    @rule(p=clients, video=st.booleans())
    def set_queue(self, p: RecordingPeer, video: bool) -> None:
        """The queue changes for the next time the client joins one: its
        chat, or its place in a queue, stays as it is."""
        if p not in self.online or p in self.away:  # away: no connection
            return
        self._silence()
        self.queue[p] = "video" if video else ""
        self.mm.set_queue(p, self.queue[p])
        assert p.events == []
        self._observe_pairings()

    @rule(p=clients, interests=INTERESTS)
    def set_interests(self, p: RecordingPeer, interests: list[str]) -> None:
        """Interests change for the next time the client joins a queue; a
        waiting client joins again at once (and may be paired at once)."""
        if p not in self.online or p in self.away:  # away: no connection
            return
        self._silence()
        self.interests[p] = tuple(interests)
        waiting = self.mm.is_waiting(p)
        if waiting:
            self._join(p)
        self.mm.set_interests(p, self.interests[p])
        assert p.events in ([], [("paired",)]) if waiting else p.events == []
        self._observe_pairings()

    @rule(p=clients)
    def stop(self, p: RecordingPeer) -> None:
        if p not in self.online or p in self.away:  # away: no connection
            return
        self._silence()
        q = self._end(p, record_cooldown=True)
        self.mm.stop(p)
        if q is not None:
            assert q.events == [("partner_left",)]
        assert p.events == []
        assert not self.mm.is_waiting(p) and self.mm.partner_of(p) is None
        self._observe_pairings()

    @rule(p=consumes(clients))
    def disconnect(self, p: RecordingPeer) -> None:
        if p not in self.online:
            return
        self._silence()
        q = self._end(p, record_cooldown=True)
        self.mm.disconnect(p)
        self.online.remove(p)
        self.away.pop(p, None)
        self.gone.append(p)
        assert p.events == []
        if q is not None:
            assert q.events == [("partner_left",)]
        self._observe_pairings()

    @rule(target=clients, data=st.data())
    def connect_again(self, data: st.DataObject) -> RecordingPeer:
        """A session whose connection closed connects again: the same peer,
        still in cooldown with the partners it just had."""
        if not self.gone:
            return self.connect(data.draw(st.sampled_from(["ip1", "ip2"])), False, [])
        p = data.draw(st.sampled_from(self.gone))
        self.gone.remove(p)
        self.online.append(p)
        self._join(p)
        self.mm.connect(p, self.identity[p], self.queue[p], self.interests[p])
        assert p.events[0] == ("waiting",)
        self._observe_pairings()
        return p

    @rule(p=clients)
    def away(self, p: RecordingPeer) -> None:
        if p not in self.online:
            return
        self._silence()
        was_away = p in self.away
        self.away.setdefault(p, self.mm.is_waiting(p))
        self.mm.away(p)
        q = self.partner.get(p)
        assert p.events == []
        if q is not None:
            assert q.events == ([] if was_away else [("partner_away",)])
        assert not self.mm.is_waiting(p)
        self._observe_pairings()

    @rule(p=clients)
    def back(self, p: RecordingPeer) -> None:
        if p not in self.online:
            return
        self._silence()
        was_waiting = self.away.pop(p, None)
        q = self.partner.get(p)
        if was_waiting and q is None:
            self._join(p)
        self.mm.back(p)
        if was_waiting is None:
            assert p.events == []
        elif q is not None and q in self.away:
            # (A pool node that does not know its partner is away says
            # partner_back first, then hears otherwise.)
            assert p.events[-1] == ("partner_away",)
        elif q is not None:
            assert p.events == [("partner_back",)] and q.events == [("partner_back",)]
        elif was_waiting:
            assert p.events[0] == ("waiting",)
        else:
            assert p.events == [] and not self.mm.is_waiting(p)
        self._observe_pairings()

    @rule(p=clients, text=st.text(min_size=1, max_size=5))
    def message(self, p: RecordingPeer, text: str) -> None:
        if p not in self.online or p in self.away:  # away: no connection
            return
        self._silence()
        event = text.encode()
        self.mm.relay(p, event, said=True)
        q = self.partner.get(p)
        if q is not None:
            self.sent.add(p)
        for other in self.online + self.gone:
            expected = [("event", event)] if other is q else []
            assert other.events == expected, f"{other} got {other.events}"

    @rule(p=clients, active=st.booleans())
    def typing(self, p: RecordingPeer, active: bool) -> None:
        if p not in self.online or p in self.away:  # away: no connection
            return
        self._silence()
        event = b"typing on" if active else b"typing off"
        self.mm.relay(p, event)
        q = self.partner.get(p)
        for other in self.online + self.gone:
            expected = [("event", event)] if other is q else []
            assert other.events == expected

    @rule(dt=st.floats(min_value=0.0, max_value=2 * COOLDOWN))
    def time_passes(self, dt: float) -> None:
        """The shell's timer: wake the matchmaker at each deadline on the way."""
        target = self.clock.now + dt
        while (deadline := self.mm.next_deadline()) is not None and deadline <= target:
            self.clock.now = max(self.clock.now, deadline)
            self.mm.advance()
            self._observe_pairings()
        self.clock.now = target

    # -- invariants -------------------------------------------------------------

    @invariant()
    def pairs_are_symmetric_and_never_self(self) -> None:
        for p in self.online:
            q = self.mm.partner_of(p)
            assert q is not p
            if q is not None:
                assert self.mm.partner_of(q) is p
                assert q in self.online
                assert self.partner.get(p) is q
            else:
                assert p not in self.partner

    @invariant()
    def each_client_in_exactly_one_state(self) -> None:
        waiting = [p for p in self.online if self.mm.is_waiting(p)]
        chatting = [p for p in self.online if self.mm.partner_of(p) is not None]
        assert not set(waiting) & set(chatting)
        assert self.mm.stats() == Stats(len(self.online), len(waiting), len(chatting))

    @invariant()
    def what_clients_were_told_matches_their_state(self) -> None:
        for p in self.online:
            if self.mm.is_waiting(p):
                assert p.status == "waiting", (p, p.status)
            elif self.mm.partner_of(p) is not None:
                assert p.status == "paired", (p, p.status)
            else:
                assert p.status in (None, "partner_left", "paired", "waiting")

    @invariant()
    def nobody_waits_beside_an_eligible_partner(self) -> None:
        waiting = [p for p in self.online if self.mm.is_waiting(p)]
        for i, p in enumerate(waiting):
            for q in waiting[i + 1 :]:
                ended = self.ended.get(frozenset((p, q)))
                cooling = ended is not None and self.clock.now < ended + self.COOLDOWN
                reported = frozenset((self.identity[p], self.identity[q])) in self.never
                apart = self.joined[p] != self.joined[q]
                assert cooling or reported or apart or not self._may_meet(p, q), (
                    f"{p} and {q} both wait but are eligible for each other"
                )

    @invariant()
    def the_shell_is_woken_while_a_cooldown_keeps_waiters_apart(self) -> None:
        waiting = [p for p in self.online if self.mm.is_waiting(p)]
        cooling = [
            (p, q)
            for i, p in enumerate(waiting)
            for q in waiting[i + 1 :]
            if frozenset((self.identity[p], self.identity[q])) not in self.never
            and self.joined[p] == self.joined[q]
        ]
        if cooling:
            deadline = self.mm.next_deadline()
            assert deadline is not None and deadline > self.clock.now
        for p in waiting:
            if not self._open(p):
                deadline = self.mm.next_deadline()
                ends = self.since[p] + self.INTEREST_WAIT
                assert deadline is not None and self.clock.now < deadline <= ends

    @invariant()
    def gone_clients_hear_nothing(self) -> None:
        for p in self.gone:
            assert p.events == []


MatchmakerMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=50, deadline=None
)
TestMatchmakerMachine = MatchmakerMachine.TestCase


def test_report_ends_chat_and_keeps_the_two_addresses_apart_for_good() -> None:
    mm, clock = make(cooldown=60)
    a, b, b2, c = peers("a", "b", "b2", "c")
    mm.connect(a, "ip-a")
    mm.connect(b, "ip-b")
    a.take(), b.take()
    assert mm.report_now(a) == ReportedChat(b, "ip-b", 0.0, False)
    assert b.take() == [("partner_left",)]
    assert a.take() == [("waiting",)]
    clock.now += 10_000  # long after any cooldown
    mm.next(b)
    assert mm.is_waiting(a) and mm.is_waiting(b)
    assert mm.next_deadline() is None
    # Another connection from b's address does not meet a either...
    mm.disconnect(b)
    mm.connect(b2, "ip-b")
    assert mm.is_waiting(a) and mm.is_waiting(b2)
    # ...but someone else does.
    mm.connect(c, "ip-c")
    assert mm.partner_of(c) in (a, b2)


def test_report_between_people_on_one_address_keeps_that_address_pairing() -> None:
    mm, clock = make(cooldown=60)
    a, b = peers("a", "b")
    mm.connect(a, "nat")
    mm.connect(b, "nat")
    assert mm.report_now(a) == ReportedChat(b, "nat", 0.0, False)
    clock.now += 61
    mm.next(b)
    assert mm.partner_of(a) is b  # after the cooldown, as for any chat


def test_report_without_partner_does_nothing() -> None:
    mm, _ = make()
    (a,) = peers("a")
    mm.connect(a, "ip-a")
    a.take()
    assert mm.report_now(a) is None
    assert a.take() == [] and mm.is_waiting(a)


def test_report_tells_how_long_the_chat_lasted_and_whether_the_partner_spoke() -> None:
    mm, clock = make(cooldown=0)
    a, b, c = peers("a", "b", "c")
    mm.connect(a, "ip-a")
    clock.now += 100  # waiting is not chatting
    mm.connect(b, "ip-b")
    clock.now += 7.5
    mm.relay(a, b"hi", said=True)  # the reporter spoke; the reported did not
    mm.relay(b, b"typing")  # typing is not saying anything
    chat = mm.report_now(a)
    assert chat == ReportedChat(partner=b, identity="ip-b", seconds=7.5, partner_sent=False)
    mm.stop(a)
    # A new chat starts from nothing: b meets c and says something at once.
    mm.connect(c, "ip-c")
    mm.next(b)
    assert mm.partner_of(b) is c
    clock.now += 0.25
    mm.relay(b, b"buy my stuff", said=True)
    assert mm.report_now(c) == ReportedChat(b, "ip-b", 0.25, True)
    mm.stop(c)
    # What b said in that chat is not held against it in the next one.
    mm.next(b)
    mm.connect(d := RecordingPeer("d"), "ip-d")
    assert mm.partner_of(d) is b
    assert mm.report_now(d) == ReportedChat(b, "ip-b", 0.0, False)


def test_a_chat_that_began_when_a_cooldown_ran_out_is_timed_from_then() -> None:
    mm, clock = make(cooldown=60)
    a, b = peers("a", "b")
    mm.connect(a, "ip-a")
    mm.connect(b, "ip-b")
    mm.next(a)
    mm.next(b)  # both wait, apart, until 1060
    clock.now = 1090  # the shell woke late; the pair forms now
    mm.advance()
    assert mm.partner_of(a) is b
    clock.now = 1092
    chat = mm.report_now(b)
    assert chat is not None and chat.seconds == 2.0 and chat.partner is a


def test_chat_bookkeeping_is_forgotten_when_chats_end() -> None:
    mm, _ = make(cooldown=0)
    a, b, c = peers("a", "b", "c")
    for p in (a, b, c):
        mm.connect(p)
    mm.relay(a, b"hi", said=True)
    mm.relay(b, b"hello", said=True)
    mm.stop(a)
    mm.next(b)  # b meets c
    mm.relay(c, b"hey", said=True)
    mm.disconnect(c)
    assert mm._paired_at == {} and mm._sent == set()


# -- interests -----------------------------------------------------------------


def make_with_interests(
    wait: float = 10.0, cooldown: float = 60.0, seed: int = 1
) -> tuple[MemoryMatchmaker, FakeClock]:
    clock = FakeClock()
    return MemoryMatchmaker(random.Random(seed), clock, cooldown, interest_wait=wait), clock


def test_a_client_meets_the_one_waiting_stranger_who_shares_an_interest() -> None:
    mm, _ = make_with_interests()
    others = peers("dogs", "chess", "films")
    for p in others:
        mm.connect(p, p.name, interests=(p.name, "x" + p.name))
    cat = RecordingPeer("cat")
    mm.connect(cat, "cat", interests=("cats", "yarn"))
    assert mm.stats().waiting == 4
    me = RecordingPeer("me")
    mm.connect(me, "me", interests=("cats",))
    assert mm.partner_of(me) is cat
    assert me.common == cat.common == ["cats"]
    assert all(mm.is_waiting(p) for p in others)


def test_the_common_interests_are_all_those_shared_in_code_point_order() -> None:
    mm, _ = make_with_interests()
    a, b = peers("a", "b")
    mm.connect(a, "a", interests=("zebras", "chess", "cats"))
    mm.connect(b, "b", interests=("cats", "dogs", "zebras"))
    assert a.common == b.common == ["cats", "zebras"]


def test_without_a_shared_interest_the_fallback_comes_at_the_wait_and_not_before() -> None:
    mm, clock = make_with_interests(wait=10.0)
    a, b = peers("a", "b")
    mm.connect(a, "a", interests=("cats",))
    clock.now += 4
    mm.connect(b, "b", interests=("dogs",))
    assert mm.stats().waiting == 2
    # a's wait ends first, but b, still in its own wait, will not do yet.
    assert mm.next_deadline() == 1010.0
    clock.now = 1010.0
    mm.advance()
    assert mm.partner_of(a) is None
    assert mm.next_deadline() == 1014.0
    clock.now = 1013.999
    mm.advance()
    assert mm.partner_of(a) is None
    clock.now = 1014.0
    mm.advance()
    assert mm.partner_of(a) is b
    assert a.common == b.common == []
    assert a.offer is not b.offer
    assert mm.next_deadline() is None


def test_a_client_without_interests_meets_one_whose_wait_is_over_not_before() -> None:
    mm, clock = make_with_interests(wait=10.0)
    a, b, c = peers("a", "b", "c")
    mm.connect(a, "a", interests=("cats",))
    mm.connect(b, "b")  # no interests: open at once, but a still waits for a cat person
    assert mm.partner_of(b) is None and mm.stats().waiting == 2
    clock.now += 10
    mm.advance()
    assert mm.partner_of(a) is b and a.common == []
    # A client without interests meets another at once.
    mm.connect(c, "c")
    d = RecordingPeer("d")
    mm.connect(d, "d")
    assert mm.partner_of(c) is d


def test_a_shared_interest_comes_before_a_stranger_open_to_anyone() -> None:
    mm, clock = make_with_interests(wait=10.0, cooldown=60)
    a, b, c, d = peers("a", "b", "c", "d")
    # b and c, kept apart by a cooldown, wait: c open (no interests), b a cat lover.
    mm.connect(b, "b")
    mm.connect(c, "c")
    mm.stop(b)
    mm.stop(c)
    mm.set_interests(b, ("cats",))
    mm.next(b)
    mm.next(c)
    clock.now += 10
    mm.advance()
    assert mm.stats().waiting == 2  # b is open now, but c is its former partner
    # Both b and c would do for anyone open; a newcomer with cats meets b,
    # one without interests then meets c.
    mm.connect(a, "a", interests=("cats", "dogs"))
    assert mm.partner_of(a) is b and a.common == ["cats"]
    mm.connect(d, "d")
    assert mm.partner_of(d) is c


def test_the_choice_among_those_sharing_an_interest_is_uniform() -> None:
    counts: Counter[str] = Counter()
    rng = random.Random(7)
    trials = 1500
    for _ in range(trials):
        clock = FakeClock()
        mm = MemoryMatchmaker(rng, clock, cooldown=60, interest_wait=10)
        # Three cat lovers kept apart by cooldowns, and a dog lover.
        x, y, z, w = peers("x", "y", "z", "w")
        for p in (x, y, z):
            mm.connect(p, p.name, interests=("cats",))
        mm.connect(w, "w", interests=("dogs",))
        # x met y; stop both, then z meets x... keep all three apart:
        mm.stop(x)  # ends x-y
        mm.connect(RecordingPeer("tmp"), "tmp")
        mm.next(x)  # x meets z
        mm.stop(x)  # ends x-z
        mm.next(y)
        mm.next(z)  # y meets z
        mm.stop(y)
        mm.next(x)
        mm.next(y)
        mm.next(z)
        assert [mm.is_waiting(p) for p in (x, y, z)] == [True] * 3
        me = RecordingPeer("me")
        mm.connect(me, "me", interests=("cats", "dogs"))
        partner = mm.partner_of(me)
        assert partner is not None
        counts[partner.name] += 1
    # w shares "dogs" too: four equally likely partners (375 each; 4.5 sd ~ 75).
    assert set(counts) == {"x", "y", "z", "w"}, counts
    for name in "xyzw":
        assert abs(counts[name] - trials / 4) < 75, counts


def test_new_interests_replace_a_waiting_client_at_once_and_leave_a_chat_alone() -> None:
    mm, _ = make_with_interests()
    a, b, c = peers("a", "b", "c")
    mm.connect(a, "a", interests=("cats",))
    mm.connect(b, "b", interests=("dogs",))
    assert mm.stats().waiting == 2
    mm.set_interests(b, ("dogs", "cats"))
    assert mm.partner_of(a) is b and b.common == ["cats"]
    # In a chat: nothing changes until b joins a queue again.
    b.take()
    mm.set_interests(b, ("chess",))
    assert b.take() == [] and mm.partner_of(b) is a
    mm.connect(c, "c", interests=("chess",))
    assert mm.partner_of(c) is None
    mm.next(b)
    assert mm.partner_of(b) is c and c.common == ["chess"]
    # Clearing them makes a waiting client open at once.
    d, e = peers("d", "e")
    mm.connect(d, "d")
    mm.connect(e, "e", interests=("golf",))
    assert mm.partner_of(d) is None
    mm.set_interests(e, ())
    assert mm.partner_of(d) is e


def test_a_changed_interest_starts_the_wait_again() -> None:
    mm, clock = make_with_interests(wait=10)
    a, b = peers("a", "b")
    mm.connect(a, "a")
    mm.connect(b, "b", interests=("cats",))
    clock.now += 6
    mm.set_interests(b, ("cats", "dogs"))
    assert mm.next_deadline() == 1016
    clock.now = 1010
    mm.advance()
    assert mm.partner_of(b) is None
    clock.now = 1016
    mm.advance()
    assert mm.partner_of(b) is a


def test_an_interest_wait_of_zero_ignores_interests() -> None:
    mm, _ = make_with_interests(wait=0)
    a, b, c = peers("a", "b", "c")
    mm.connect(a, "a", interests=("cats",))
    mm.connect(b, "b", interests=("dogs",))
    assert mm.partner_of(a) is b and a.common == b.common == []
    mm.connect(c, "c", interests=("cats",))
    mm.set_interests(c, ("dogs",))
    assert mm.is_waiting(c) and mm.next_deadline() is None


def test_interests_are_per_queue() -> None:
    mm, _ = make_with_interests()
    a, b = peers("a", "b")
    mm.connect(a, "a", "video", interests=("cats",))
    mm.connect(b, "b", "", interests=("cats",))
    assert mm.stats().waiting == 2
    mm.set_queue(b, "video")
    mm.next(b)
    assert mm.partner_of(a) is b and a.common == ["cats"]


def test_waiting_clients_with_interests_leave_no_trace_when_they_go() -> None:
    mm, _ = make_with_interests()
    clients = [RecordingPeer(f"p{i}") for i in range(50)]
    for i, p in enumerate(clients):
        mm.connect(p, p.name, interests=(f"tag{i}", f"tag{i + 1}" if i % 2 else "solo"))
    for p in clients:
        mm.disconnect(p)
    assert mm.stats() == Stats(0, 0, 0)
    assert mm.next_deadline() is None
    internals = vars(mm)
    for name in ("_waiting", "_open", "_by_interest", "_interests", "_wait_ends"):
        assert not internals[name], name


# -- why a client waits ----------------------------------------------------------


def test_a_client_alone_is_told_so_and_a_newcomer_ends_it() -> None:
    mm, _ = make(cooldown=60)
    a, b = peers("a", "b")
    mm.connect(a, "a")
    assert a.wait == ("alone", None)
    mm.connect(b, "b")
    assert mm.partner_of(a) is b
    assert b.wait is None  # paired at once: nothing to explain


def test_clients_kept_apart_by_their_cooldown_are_told_until_when() -> None:
    mm, clock = make(cooldown=60)
    a, b = peers("a", "b")
    mm.connect(a, "a")
    mm.connect(b, "b")
    clock.now += 5
    mm.next(a)  # b is idle: a waits, everyone else has just talked with it
    assert a.wait == ("cooldown", None)
    mm.next(b)  # now both wait: they meet when the cooldown ends
    assert a.wait == b.wait == ("cooldown", 1065.0)
    clock.now = 1065.0
    mm.advance()
    assert mm.partner_of(a) is b


def test_the_reason_changes_as_people_come_and_go() -> None:
    mm, _ = make(cooldown=60)
    a, b, c = peers("a", "b", "c")
    mm.connect(a, "a")
    mm.connect(b, "b")
    mm.stop(b)  # a-b in cooldown, both idle
    mm.next(a)
    assert a.wait == ("cooldown", None)
    mm.disconnect(b)
    assert a.wait == ("alone", None)
    # Someone in the other queue does not count; one in this queue does.
    mm.connect(c, "c", "video")
    assert a.wait == ("alone", None) and c.wait == ("alone", None)
    d = RecordingPeer("d")
    mm.connect(d, "d")
    assert mm.partner_of(a) is d


def test_someone_chatting_whom_one_may_meet_is_no_reason() -> None:
    mm, _ = make(cooldown=60)
    a, b, c = peers("a", "b", "c")
    mm.connect(b, "b")
    mm.connect(c, "c")  # b and c chat
    mm.connect(a, "a")
    assert a.wait is None  # waits for b or c to be free, as anyone would


def test_a_reason_told_is_taken_back_when_it_no_longer_holds() -> None:
    mm, _ = make(cooldown=60)
    a, b, c = peers("a", "b", "c")
    mm.connect(a, "a")
    mm.connect(b, "b")
    mm.stop(a)
    mm.connect(c, "c", "video")
    mm.next(b)  # b waits; a (idle) has just talked with it
    assert b.wait == ("cooldown", None)
    mm.set_queue(c, "")  # c will join b's queue: b is no longer apart from everyone
    assert b.wait == (None, None)


def test_big_queues_are_not_examined() -> None:
    mm, _ = make(cooldown=60)
    crowd = [RecordingPeer(f"p{i}") for i in range(66)]
    for i, p in enumerate(crowd):
        mm.connect(p, f"id{i}", "video" if i % 2 else "")
    loner = RecordingPeer("loner")
    mm.connect(loner, "loner", "other")
    assert loner.wait == ("alone", None)
    for p in crowd:
        mm.set_queue(p, "other")
    assert loner.wait == (None, None)  # 67 people online in its queue: not told any more


def test_a_reason_told_outlives_being_placed_again_and_is_not_repeated() -> None:
    mm, _ = make_with_interests()
    a, b = peers("a", "b")
    mm.connect(a, "a")
    assert a.wait == ("alone", None)
    a.wait = None
    mm.set_interests(a, ("cats",))  # placed again: no new "waiting", the reason stands
    assert mm.is_waiting(a)
    mm.connect(b, "b", "video")
    assert a.wait is None  # still alone: not told again
    mm.set_queue(b, "")  # b will join a's queue: a is not alone any more
    assert a.wait == (None, None)
