"""Bans over real sockets against ``twistd roulette``: what a few attacker
addresses reporting everyone can and cannot do, and what honest reports do.

Clients get their addresses from ``X-Forwarded-For`` (the server trusts one
proxy).  Each reporter meets the reported client alone in the queue: everyone
else is idle or gone when it connects.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from support import RunningServer, wait_until
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

pytestmark = pytest.mark.e2e

#: Three networks, one address each: what an attacker can cheaply have.
THREE_NETWORKS = ["203.0.113.7", "198.51.100.7", "100.64.0.7"]


class Client:
    """A WebSocket client from a forwarded address that keeps every event it read."""

    def __init__(self, server: RunningServer, host: str) -> None:
        self.host = host
        self._stack = ExitStack()
        self.ws: ClientConnection = self._stack.enter_context(
            connect(server.ws_url, additional_headers={"X-Forwarded-For": host}, open_timeout=5)
        )
        self.status = self.ws.response.status_code
        self.seen: list[dict[str, Any]] = []
        self.close_code: int | None = None

    def send(self, kind: str, **fields: str) -> None:
        self.ws.send(json.dumps({"type": kind, **fields}))

    def expect(self, kind: str, timeout: float = 5.0) -> dict[str, Any]:
        """Read events until one of type ``kind`` arrives."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = json.loads(self.ws.recv(max(0.0, deadline - time.monotonic())))
            except ConnectionClosed as closed:
                self.close_code = closed.rcvd.code if closed.rcvd else None
                message = f"{self.host} closed ({self.close_code}) before {kind}"
                raise AssertionError(message) from None
            self.seen.append(event)
            if event["type"] == kind:
                return event

    def closed_with(self, timeout: float = 5.0) -> int | None:
        """Read until the server closes the connection; the close code."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self.seen.append(json.loads(self.ws.recv(max(0.0, deadline - time.monotonic()))))
        except ConnectionClosed as closed:
            self.close_code = closed.rcvd.code if closed.rcvd else None
        return self.close_code

    def banned(self) -> bool:
        return any(e["type"] == "banned" for e in self.seen)

    def close(self) -> None:
        self._stack.close()


def status(server: RunningServer, host: str) -> int:
    """The HTTP status of a WebSocket handshake from ``host`` (101: open)."""
    try:
        client = Client(server, host)
    except InvalidStatus as refused:
        return refused.response.status_code
    client.close()
    return client.status


def meets_and_reports(
    server: RunningServer,
    target: Client,
    reporter: str,
    say: str | None = None,
    wait: float = 0.0,
    look_again: bool = True,
) -> None:
    """``target`` waits alone in the queue; a client from ``reporter`` meets
    it, hears ``say`` from it (if anything), waits ``wait`` seconds, reports
    it and leaves; then ``target`` looks again, if asked to."""
    client = Client(server, reporter)
    client.expect("paired")
    if say is not None:
        target.send("message", text=say)
        assert client.expect("message")["text"] == say
    time.sleep(wait)
    client.send("report", reason="rude")
    client.expect("waiting")
    client.send("stop")
    client.close()  # the server has read the stop: nobody but the target is queued
    target.expect("partner_left")
    if look_again:
        target.send("next")
        target.expect("waiting")


def idle(server: RunningServer, client: Client) -> Client:
    """Take a waiting client out of the queue (it keeps its connection)."""
    client.send("stop")
    wait_until(lambda: server.health()["waiting"] == 0)
    return client


def fresh(server: RunningServer, host: str) -> Client:
    """A new client from ``host``, idle."""
    client = Client(server, host)
    client.expect("waiting")
    return idle(server, client)


def chat(server: RunningServer, a: Client, b: Client) -> None:
    """Two idle clients meet and talk."""
    a.send("next")
    a.expect("waiting")
    b.send("next")
    b.expect("paired")
    a.expect("paired")
    a.send("message", text="hello")
    assert b.expect("message")["text"] == "hello"
    b.send("message", text="hi")
    assert a.expect("message")["text"] == "hi"


@pytest.fixture
def args() -> list[str]:
    return []


@pytest.fixture
def server(args: list[str]) -> Iterator[RunningServer]:
    with RunningServer(None, "--trust-proxy", "1", "--repair-cooldown", "0", *args) as running:
        yield running


def test_three_networks_reporting_everyone_at_once_ban_nobody(server: RunningServer) -> None:
    innocents = []
    for n in range(6):
        innocent = Client(server, f"10.0.{n}.1")
        innocents.append(innocent)
        innocent.expect("waiting")
        for attacker in THREE_NETWORKS:
            meets_and_reports(server, innocent, attacker)
        idle(server, innocent)
    assert not any(i.banned() for i in innocents)
    # They keep chatting, and come back as they please.
    for a, b in zip(innocents[::2], innocents[1::2], strict=True):
        chat(server, a, b)
    assert [status(server, i.host) for i in innocents] == [101] * 6
    assert not any(i.banned() for i in innocents)
    for innocent in innocents:
        innocent.close()


@pytest.mark.parametrize("args", [["--report-min-chat", "1"]])
def test_one_network_that_waits_past_the_chat_length_bans_nobody(server: RunningServer) -> None:
    innocent = Client(server, "192.0.2.1")
    innocent.expect("waiting")
    for attacker in ("203.0.113.1", "203.0.113.2", "203.0.113.3"):
        meets_and_reports(server, innocent, attacker, wait=1.2)
    idle(server, innocent)
    assert not innocent.banned()
    assert status(server, "192.0.2.1") == 101
    chat(server, innocent, fresh(server, "192.0.2.2"))
    assert not innocent.banned()
    # Three networks reporting chats as long and as silent do ban.
    silent = Client(server, "192.0.2.3")
    silent.expect("waiting")
    for n, reporter in enumerate(THREE_NETWORKS):
        meets_and_reports(server, silent, reporter, wait=1.2, look_again=n < 2)
    silent.expect("banned")
    assert silent.closed_with() == 1008
    assert status(server, "192.0.2.3") == 403


def test_three_networks_ban_a_partner_who_spoke_and_repeat_bans_widen(
    server: RunningServer,
) -> None:
    # Bystanders in the same /48: one in the /56 the second ban covers, one not.
    near = fresh(server, "2001:db8:1:5::1")
    far = fresh(server, "2001:db8:1:100::1")
    bad = Client(server, "2001:db8:1:1::1")
    bad.expect("waiting")
    for n, reporter in enumerate(THREE_NETWORKS):
        meets_and_reports(server, bad, reporter, say="buy my stuff", look_again=n < 2)
    first = bad.expect("banned")
    assert 590 < first["until"] - time.time() <= 601  # ten minutes
    assert bad.closed_with() == 1008
    assert status(server, "2001:db8:1:1::2") == 403  # the /64
    assert status(server, "2001:db8:1:2::1") == 101  # only the /64
    assert not near.banned()
    # Back from another /64 of the same /56, and reported again.
    back = Client(server, "2001:db8:1:2::1")
    back.expect("waiting")
    for n, reporter in enumerate(("203.0.113.8", "198.51.100.8", "100.64.0.8")):
        meets_and_reports(server, back, reporter, say="buy my stuff", look_again=n < 2)
    second = back.expect("banned")
    assert 1190 < second["until"] - time.time() <= 1201  # twice as long
    assert back.closed_with() == 1008
    # Now the whole /56 is banned, whoever is connected from it.
    assert near.expect("banned") == second
    assert near.closed_with() == 1008
    assert status(server, "2001:db8:1:3::1") == 403
    assert status(server, "2001:db8:1:ff::1") == 403
    assert status(server, "2001:db8:1:100::2") == 101  # another /56
    assert not far.banned()
    chat(server, far, fresh(server, "192.0.2.9"))
    # The log names the banned clients, not the proxy they came through.
    bans = [line for line in server.log().splitlines() if "after reports" in line]
    assert any("2001:db8:1:1::1" in line for line in bans), bans
    assert not any("127.0.0.1" in line for line in bans), bans
