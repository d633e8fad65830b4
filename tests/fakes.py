"""Test doubles for the pure core: a peer that records what it is told."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class RecordingPeer:
    """A :class:`roulette.core.Peer` that keeps every event it receives."""

    def __init__(self, name: str) -> None:
        self.name = name
        #: As a session's: what a pool keys the peer's cooldowns by.
        self.sid = f"s-{name}"
        self.events: list[tuple[Any, ...]] = []
        #: What the last status event said: waiting, paired or partner_left.
        self.status: str | None = None
        self.offer: bool | None = None
        self.common: list[str] = []
        self.wait: tuple[str | None, float | None] | None = None

    def __repr__(self) -> str:
        return f"<peer {self.name}>"

    def send_waiting(self) -> None:
        self.events.append(("waiting",))
        self.status = "waiting"

    def send_paired(self, offer: bool = False, common: Sequence[str] = ()) -> None:
        self.events.append(("paired",))
        self.status = "paired"
        #: Whether the last ``paired`` told this peer to make the offer.
        self.offer = offer
        #: The interests the last ``paired`` said the two share.
        self.common = list(common)

    def send_partner_left(self) -> None:
        self.events.append(("partner_left",))
        self.status = "partner_left"

    def send_partner_away(self) -> None:
        self.events.append(("partner_away",))

    def send_partner_back(self) -> None:
        self.events.append(("partner_back",))

    def send_wait(self, reason: str | None, until: float | None = None) -> None:
        #: The last reason it was told it waits, as (reason, until).
        self.wait = (reason, until)

    def send_event(self, event: bytes) -> None:
        self.events.append(("event", event))

    def take(self) -> list[tuple[Any, ...]]:
        """The events received since the last call."""
        events, self.events = self.events, []
        return events


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
