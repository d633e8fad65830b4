"""In-memory clients for the protocol tests: a recording WebSocket client and
a harness that connects such clients to a lobby on a fake clock through
Autobahn's in-memory agent (no sockets)."""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Any

from autobahn.twisted.testing import create_memory_agent, create_pumper
from autobahn.twisted.websocket import WebSocketClientProtocol
from twisted.internet import task
from twisted.internet.testing import MemoryReactorClock

from roulette.abuse import Reports
from roulette.core import MemoryMatchmaker
from roulette.limits import Limits
from roulette.lobby import Gate, Lobby
from roulette.server import RouletteFactory


class Client(WebSocketClientProtocol):
    """A test client that records every event and how the connection closed."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict[str, Any]] = []
        self.waits: list[dict[str, Any]] = []
        self.sessions: list[dict[str, Any]] = []
        self.raw: list[tuple[bytes, bool]] = []
        self.closed: tuple[bool, int | None, str | None] | None = None

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.raw.append((payload, isBinary))
        event = json.loads(payload)
        # Why a client waits is kept apart: the tests that look at it read
        # ``waits``; the others see the events they are about.
        if isinstance(event, dict) and event.get("type") == "wait":
            self.waits.append(event)
        elif isinstance(event, dict) and event.get("type") == "session":
            # So is the session event, right after the first count.
            assert [e["type"] for e in self.events] == ["online"], "session came out of place"
            assert not self.sessions, "a second session event"
            self.sessions.append(event)
        else:
            self.events.append(event)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.closed = (wasClean, code, reason)

    def send(self, obj: Any) -> None:
        self.sendMessage(json.dumps(obj).encode("utf-8"))

    def take(self) -> list[dict[str, Any]]:
        events, self.events = self.events, []
        return events

    @property
    def token(self) -> str:
        """The session's token the server gave this connection."""
        return str(self.sessions[-1]["token"])


class Harness:
    """A lobby on a fake clock and an in-memory agent connecting clients to it."""

    def __init__(
        self,
        cooldown: float = 60.0,
        max_message_length: int | None = None,
        limits: Limits | None = None,
        gate: Gate | None = None,
        resume_grace: float | None = None,
    ) -> None:
        self.clock = task.Clock()
        self.clock.advance(1000)
        limits = limits or Limits()
        if max_message_length is not None:
            limits = dataclasses.replace(limits, max_message_length=max_message_length)
        self.matchmaker = MemoryMatchmaker(
            random.Random(0), self.clock.seconds, cooldown, limits.interest_wait
        )
        if gate is None:
            gate = Gate(reports=Reports(self.clock.seconds))
        if resume_grace is None:
            resume_grace = limits.resume_grace
        self.lobby = Lobby(self.matchmaker, self.clock, gate, resume_grace=resume_grace)
        self.lobby.startService()
        # The protocol reads the time from its factory's reactor: the same clock.
        self.factory = RouletteFactory(self.lobby, limits=limits, reactor=self.clock)
        self.pumper = create_pumper()
        self.agent = create_memory_agent(
            MemoryReactorClock(), self.pumper, lambda: self.factory.buildProtocol(None)
        )
        self.clients: list[Client] = []

    def pump(self) -> None:
        """Deliver every byte in flight, both ways."""
        for _ in range(3):
            self.pumper._flush()

    async def connect(self, headers: dict[str, str] | None = None, path: str = "/ws") -> Client:
        options = {"headers": headers} if headers else {}
        d = self.agent.open(f"ws://localhost{path}", options, protocol_class=Client)
        for _ in range(20):
            self.pump()
            if d.called:
                break
        assert d.called, "the handshake did not finish"
        client: Client = await d
        self.pump()
        self.clients.append(client)
        return client

    def connect_now(self, protocol_class: type[Client] = Client) -> Client:
        """Connect without awaiting: the in-memory handshake finishes within
        a few pumps (for tests that cannot await, such as hypothesis')."""
        d = self.agent.open("ws://localhost/ws", {}, protocol_class=protocol_class)
        for _ in range(20):
            self.pump()
        opened: list[Any] = []
        d.addBoth(opened.append)
        assert opened and isinstance(opened[0], protocol_class), opened
        self.clients.append(opened[0])
        return opened[0]

    async def pair(self) -> tuple[Client, Client]:
        a = await self.connect()
        b = await self.connect()
        assert [e["type"] for e in a.take()] == ["online", "waiting", "paired"]
        assert [e["type"] for e in b.take()] == ["online", "waiting", "paired"]
        return a, b

    def tick(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.pump()

    async def close(self) -> None:
        for client in self.clients:
            if client.closed is None:
                client.dropConnection(abort=True)
        self.pump()
        self.lobby.stopService()
        await self.pumper.stop()
