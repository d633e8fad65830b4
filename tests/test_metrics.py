"""Prometheus metrics (``--metrics``): ``twistd roulette`` over real sockets,
scraped and parsed with ``prometheus_client``'s own parser; and, in memory
on a fake clock, the chat lengths and waits, which real time cannot pin
down."""

from __future__ import annotations

import ast
import asyncio
import json
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import websockets
from memory import Client, Harness
from prometheus_client.parser import text_string_to_metric_families
from redis_server import RedisServer
from support import (
    RunningServer,
    free_port,
    read_head,
    run_async,
    upgrade_request,
    wait_until,
)
from test_e2e import closed_with
from twisted.internet import task
from twisted.python.usage import UsageError

import roulette.server
from roulette import metrics
from roulette.metrics import CHAT_ENDINGS, OTHER, REFUSALS, LagMonitor, Metrics
from roulette.tap import Options

#: Every family the contract names (docs/operations.md), as the parser names them.
CONTRACT = (
    "roulette_connections",
    "roulette_waiting",
    "roulette_chatting",
    "roulette_pairs",
    "roulette_messages_relayed",
    "roulette_chats_ended",
    "roulette_refusals",
    "roulette_wait_seconds",
    "roulette_chat_seconds",
    "roulette_event_loop_lag_seconds",
    "roulette_sessions_away",
    "roulette_sessions_resumed",
    "process_cpu_seconds",
    "process_resident_memory_bytes",
    "process_open_fds",
)
POOL_FAMILIES = (
    "roulette_pool_connections",
    "roulette_pool_waiting",
    "roulette_pool_chatting",
    "roulette_pool_nodes",
    "roulette_matching_paused",
)
#: Marks a message's text, to look for in the exposition.
SECRET_TEXT = "zebra-7f3a-never-a-label"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


# -- scraping ------------------------------------------------------------------


def scrape_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode("utf-8")


def parse(text: str) -> tuple[dict[str, Any], Samples]:
    families = {family.name: family for family in text_string_to_metric_families(text)}
    samples: Samples = {}
    for family in families.values():
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return families, samples


def scrape(port: int) -> Samples:
    return parse(scrape_text(port))[1]


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def refusals(before: Samples, after: Samples) -> dict[str, float]:
    """The reasons whose refusals moved, and by how much."""
    moves = {}
    for (name, labels), count in after.items():
        if name == "roulette_refusals_total":
            delta = count - before.get((name, labels), 0.0)
            if delta:
                moves[dict(labels)["reason"]] = delta
    return moves


# -- clients -------------------------------------------------------------------


async def recv(ws: Any, *types: str, timeout: float = 5.0) -> dict[str, Any]:
    """The next event of one of ``types``, skipping every other kind."""
    while True:
        event = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if event["type"] in types:
            return event


async def send(ws: Any, obj: Any) -> None:
    await ws.send(json.dumps(obj))


async def connect(server: RunningServer, address: str) -> Any:
    """A client whose address (behind the trusted proxy) is ``address``."""
    return await websockets.connect(
        server.ws_url, additional_headers={"X-Forwarded-For": address}, open_timeout=5
    )


def raw_status(port: int, request: bytes) -> int:
    """Send ``request`` on a connection of its own; the response's status."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        return read_head(sock)[0]


def ws_status(port: int, address: str, **headers: str) -> int:
    """The status an upgrade from ``address`` gets (its socket is closed at once)."""
    return raw_status(port, upgrade_request(port, headers={"X-Forwarded-For": address, **headers}))


# -- the server ------------------------------------------------------------------


class Metered(RunningServer):
    """``twistd roulette`` with ``--metrics`` on a port of its own."""

    def __init__(self, *args: str, port: int | None = None) -> None:
        self.metrics_port = free_port()
        super().__init__(
            port,
            "--metrics",
            f"tcp:{self.metrics_port}:interface=127.0.0.1",
            *args,
        )

    def scrape(self) -> Samples:
        return scrape(self.metrics_port)


@pytest.fixture(scope="module")
def server() -> Iterator[Metered]:
    port = free_port()
    with Metered(
        "--repair-cooldown",
        "0",
        # Each client names an address of its own (X-Forwarded-For).
        "--trust-proxy",
        "1",
        "--max-per-ip",
        "2",
        "--connects-per-minute",
        "4",
        "--max-connections",
        "6",
        "--max-sockets-per-ip",
        "40",
        "--public-host",
        f"127.0.0.1:{port}",
        "--handshake-timeout",
        "1",
        "--ban-reports",
        "1",
        "--report-min-chat",
        "0",
        "--max-message-length",
        "100",
        port=port,
    ) as running:
        yield running


def settled(server: RunningServer) -> None:
    """Until nobody is online (every client of a test has gone)."""
    wait_until(lambda: server.health()["online"] == 0)


# -- over real sockets -------------------------------------------------------------


@pytest.mark.e2e
def test_metrics_have_their_own_port_and_every_name_of_the_contract(server: Metered) -> None:
    with pytest.raises(urllib.error.HTTPError) as public:
        urllib.request.urlopen(server.http_url + "/metrics", timeout=5)
    assert public.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as elsewhere:
        urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/", timeout=5)
    assert elsewhere.value.code == 404
    families, samples = parse(scrape_text(server.metrics_port))
    for name in CONTRACT:
        assert name in families, name
    for name in POOL_FAMILIES:
        assert name not in families, name  # a process of its own: no pool
    assert families["roulette_pairs"].type == "counter"
    assert families["roulette_connections"].type == "gauge"
    assert families["roulette_wait_seconds"].type == "histogram"
    # Every reason and every way a chat ends is there from the start.
    for how in CHAT_ENDINGS:
        assert ("roulette_chats_ended_total", (("how", how),)) in samples
    for reason in REFUSALS:
        assert ("roulette_refusals_total", (("reason", reason),)) in samples
    # Without a pool, no node label.
    assert all("node" not in dict(labels) for _, labels in samples)
    assert value(samples, "process_open_fds") > 0
    assert value(samples, "process_resident_memory_bytes") > 0


@pytest.mark.e2e
def test_pairing_messages_and_each_way_a_chat_ends_move_their_metrics(server: Metered) -> None:
    settled(server)
    before = server.scrape()

    async def scenario() -> dict[str, float]:
        marks: dict[str, float] = {}
        a = await connect(server, "10.0.1.1")
        await recv(a, "waiting")
        await asyncio.sleep(0.4)
        b = await connect(server, "10.0.1.2")
        await recv(b, "paired")
        await recv(a, "paired")
        paired = server.scrape()
        marks["paired_pairs"] = moved(before, paired, "roulette_pairs_total")
        marks["paired_waits"] = moved(before, paired, "roulette_wait_seconds_count")
        marks["paired_waited"] = moved(before, paired, "roulette_wait_seconds_sum")
        gauges = [value(paired, f"roulette_{g}") for g in ("connections", "waiting", "chatting")]
        assert gauges == [2, 0, 2]
        assert server.health() == {"online": 2, "waiting": 0, "chatting": 2}
        chat_began = time.monotonic()

        # Five messages relayed (a typing notice is no message).
        for i in range(3):
            await send(a, {"type": "message", "text": f"{SECRET_TEXT} {i}", "id": i})
            await recv(a, "sent")
        await send(b, {"type": "typing", "active": True})
        for i in range(2):
            await send(b, {"type": "message", "text": SECRET_TEXT, "id": i})
            await recv(b, "sent")
        await asyncio.sleep(0.3)
        relayed = server.scrape()
        marks["relayed"] = moved(before, relayed, "roulette_messages_relayed_total")

        # next: counted once, at a (b only hears partner_left).
        await send(a, {"type": "next"})
        await recv(b, "partner_left")
        await recv(a, "waiting")
        marks["chat_lasted"] = time.monotonic() - chat_began
        after_next = server.scrape()
        marks["next"] = moved(before, after_next, "roulette_chats_ended_total", how="next")
        marks["next_chats"] = moved(before, after_next, "roulette_chat_seconds_count")
        marks["next_length"] = moved(before, after_next, "roulette_chat_seconds_sum")
        gauges = [
            value(after_next, f"roulette_{g}") for g in ("connections", "waiting", "chatting")
        ]
        assert gauges == [2, 1, 0]  # a waits, b is idle

        # stop, by c, who meets a.
        c = await connect(server, "10.0.1.3")
        await recv(c, "paired")
        await recv(a, "paired")
        await send(c, {"type": "stop"})
        await recv(a, "partner_left")
        # block, by d, who meets a.
        await send(a, {"type": "next"})
        await recv(a, "waiting")
        await c.close()
        d = await connect(server, "10.0.1.4")
        await recv(d, "paired")
        await recv(a, "paired")
        await send(d, {"type": "block"})
        await recv(a, "partner_left")
        # left: e meets a (a and d stay apart for good) and closes its tab.
        await send(a, {"type": "next"})
        await recv(a, "waiting")
        await d.close()
        e = await connect(server, "10.0.1.5")
        await recv(e, "paired")
        await recv(a, "paired")
        await e.close()
        await recv(a, "partner_left")
        await a.close()
        await b.close()
        return marks

    marks = run_async(scenario())
    settled(server)
    after = server.scrape()
    assert marks["paired_pairs"] == 1  # two clients paired: one chat
    assert marks["paired_waits"] == 2  # each waited: a 0.4 s, b not at all
    assert 0.4 <= marks["paired_waited"] < 3
    assert marks["relayed"] == 5
    assert marks["next"] == 1 and marks["next_chats"] == 1
    assert 0 < marks["next_length"] <= marks["chat_lasted"] + 0.5
    assert moved(before, after, "roulette_pairs_total") == 4
    ended = {
        how: moved(before, after, "roulette_chats_ended_total", how=how) for how in CHAT_ENDINGS
    }
    assert ended == {"next": 1, "stop": 1, "report": 0, "block": 1, "left": 1, "dropped": 0}
    assert moved(before, after, "roulette_chat_seconds_count") == 4
    # Every client that was paired waited first: a four times, b to e once.
    assert moved(before, after, "roulette_wait_seconds_count") == 8
    assert moved(before, after, "roulette_messages_relayed_total") == 5
    assert [value(after, f"roulette_{g}") for g in ("connections", "waiting", "chatting")] == [
        0,
        0,
        0,
    ]
    # Refused nothing.
    assert refusals(before, after) == {}


@pytest.mark.e2e
def test_refusals_of_handshakes_and_requests_by_reason(server: Metered) -> None:
    settled(server)
    port = server.port
    before = server.scrape()
    assert ws_status(port, "10.0.2.1", Origin="https://evil.example") == 403
    assert ws_status(port, "10.0.2.1", Host="evil.example") == 421
    assert raw_status(port, b"GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n") == 421
    no_key = upgrade_request(port).replace(b"Sec-WebSocket-Key", b"X-Not-The-Key")
    assert raw_status(port, no_key) == 400
    host = f"Host: 127.0.0.1:{port}\r\n".encode()
    assert raw_status(port, b"POST / HTTP/1.1\r\n" + host + b"Content-Length: 0\r\n\r\n") == 405
    assert raw_status(port, b"GET / HTTP/1.1\r\n" + host + b"Content-Length: 3\r\n\r\n") == 413
    assert ws_status(port, "10.0.2.1", **{"X-Filler": "x" * 20000}) == 431
    assert ws_status(port, "10.0.2.1", **{"Content-Length": "abc"}) == 400
    assert raw_status(port, b"GET /ws HTTP/1.0\r\n" + host + b"\r\n") == 426
    after = server.scrape()
    moves = refusals(before, after)
    assert moves == {
        "origin": 1,
        "misdirected_host": 2,
        "bad_handshake": 1,
        "method_not_allowed": 1,
        "request_body": 1,
        "headers_too_large": 1,
        "bad_request": 1,
        "upgrade_required": 1,
    }


@pytest.mark.e2e
def test_refusals_of_the_per_address_rate_and_total_caps_and_of_bans(server: Metered) -> None:
    settled(server)
    before = server.scrape()

    async def scenario() -> None:
        # Two connections per address, the third refused.
        held = [await connect(server, "10.0.3.1") for _ in range(2)]
        assert ws_status(server.port, "10.0.3.1") == 429
        for ws in held:
            await ws.close()
        # Four new connections a minute per address, the fifth refused.
        for _ in range(4):
            ws = await connect(server, "10.0.3.2")
            await ws.close()
        assert ws_status(server.port, "10.0.3.2") == 429
        # Six connections in all, the seventh refused.
        held = [await connect(server, f"10.0.3.{10 + i}") for i in range(6)]
        assert ws_status(server.port, "10.0.3.99") == 503
        for ws in held:
            await ws.close()
        # A report bans (one is enough here): the reported is closed, and
        # refused when it comes back.
        a = await connect(server, "10.0.4.1")
        await recv(a, "waiting")
        b = await connect(server, "10.0.5.1")
        await recv(b, "paired")
        await recv(a, "paired")
        await send(a, {"type": "report"})
        assert await closed_with(b) == 1008
        await a.close()
        assert ws_status(server.port, "10.0.5.1") == 403

    run_async(scenario())
    settled(server)
    after = server.scrape()
    assert refusals(before, after) == {
        "per_address_cap": 1,
        "connect_rate": 1,
        "total_cap": 1,
        "banned": 1,
    }
    # The connections held meet each other: one chat of the two from one
    # address, three of the six; each ends when the first of its two closes.
    assert moved(before, after, "roulette_pairs_total") == 5
    assert moved(before, after, "roulette_chats_ended_total", how="left") == 4
    # The reported side's close (the ban's) ended no chat: counted once, as a report.
    assert moved(before, after, "roulette_chats_ended_total", how="report") == 1


@pytest.mark.e2e
def test_refused_frames_and_commands_by_reason(server: Metered) -> None:
    settled(server)
    before = server.scrape()
    rate_limited = 0

    async def scenario() -> None:
        nonlocal rate_limited
        a = await connect(server, "10.0.6.1")
        await recv(a, "waiting")
        await send(a, {"type": "message", "text": "nobody hears this"})
        assert (await recv(a, "error"))["code"] == "not_paired"
        await a.send("{nope")
        assert (await recv(a, "error"))["code"] == "bad_json"
        b = await connect(server, "10.0.6.2")
        await recv(b, "paired")
        await recv(a, "paired")
        await send(a, {"type": "message", "text": "x" * 101})
        assert (await recv(a, "error"))["code"] == "too_long"
        # Past the burst of ten, messages are refused.
        for i in range(15):
            await send(b, {"type": "message", "text": "hi", "id": i})
        for _ in range(15):
            answer = await recv(b, "sent", "error")
            rate_limited += answer["type"] == "error" and answer["code"] == "rate_limited"
        await a.close()
        await b.close()
        # A frame over 64 KiB: 1009.
        c = await connect(server, "10.0.6.3")
        await c.send("x" * 70_000)
        assert await closed_with(c) == 1009
        # A binary frame: 1003.
        d = await connect(server, "10.0.6.4")
        await d.send(b"\x00\x01")
        assert await closed_with(d) == 1003
        # A message in too many fragments: 1008.
        e = await connect(server, "10.0.6.5")
        await e.send(["{"] + ["x"] * 70)
        assert await closed_with(e) == 1008
        # Pings past their burst: 1008.
        f = await connect(server, "10.0.6.6")
        for _ in range(20):
            await f.ping()
        assert await closed_with(f) == 1008
        # Fifty refused frames within ten seconds: a flood, 1008.
        g = await connect(server, "10.0.6.7")
        for _ in range(50):
            await g.send("{nope")
        assert await closed_with(g) == 1008

    run_async(scenario())
    settled(server)
    after = server.scrape()
    assert rate_limited >= 1
    assert refusals(before, after) == {
        "not_paired": 1,
        "bad_json": 51,
        "too_long": 1,
        "rate_limited": rate_limited,
        "too_large": 1,
        "binary_frame": 1,
        "too_many_fragments": 1,
        "control_flood": 1,
        "flood": 1,
    }


@pytest.mark.e2e
def test_refusals_of_deadlines_and_of_sockets_per_address(server: Metered) -> None:
    settled(server)
    before = server.scrape()
    silent = socket.create_connection(("127.0.0.1", server.port))
    stalled = socket.create_connection(("127.0.0.1", server.port))
    stalled.sendall(b"GET / HTTP/1.1\r\n")
    time.sleep(2.0)  # --handshake-timeout 1
    silent.close()
    stalled.close()
    after = server.scrape()
    assert refusals(before, after) == {"no_request": 1, "handshake_timeout": 1}

    # Forty TCP connections from one address, and five more refused.
    sockets = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(45)]
    try:
        wait_until(
            lambda: refusals(after, server.scrape()).get("sockets_per_address") == 5, timeout=5
        )
    finally:
        for sock in sockets:
            sock.close()


@pytest.mark.e2e
def test_event_loop_lag_shows_a_stalled_reactor(server: Metered) -> None:
    before = server.scrape()
    assert server.process is not None
    server.process.send_signal(signal.SIGSTOP)
    time.sleep(0.7)
    server.process.send_signal(signal.SIGCONT)
    time.sleep(1.2)  # a timer or two more
    after = server.scrape()
    assert moved(before, after, "roulette_event_loop_lag_seconds_count") >= 2
    late = moved(before, after, "roulette_event_loop_lag_seconds_count") - moved(
        before, after, "roulette_event_loop_lag_seconds_bucket", le="0.1"
    )
    assert late >= 1  # the timer due during the stall ran over 0.1 s late
    assert moved(before, after, "roulette_event_loop_lag_seconds_sum") >= 0.2


@pytest.mark.e2e
def test_no_text_address_or_token_in_any_label(server: Metered) -> None:
    async def scenario() -> str:
        a = await connect(server, "10.0.7.1")
        token = ""
        while (event := await recv(a, "session", "waiting"))["type"] != "waiting":
            token = event["token"]  # a resumable session's, where the server gives one
        b = await connect(server, "10.0.7.2")
        await recv(b, "paired")
        await send(b, {"type": "message", "text": SECRET_TEXT})
        await recv(a, "message")
        text = scrape_text(server.metrics_port)
        await a.close()
        await b.close()
        return text, token

    text, token = run_async(scenario())
    _, samples = parse(text)
    labels = {v for _, pairs in samples for _, v in pairs}
    for forbidden in (SECRET_TEXT, "10.0.7.1", "10.0.7.2", "127.0.0.1", token or SECRET_TEXT):
        assert all(forbidden not in label for label in labels)
        assert forbidden not in text
    settled(server)


@pytest.mark.e2e
def test_each_node_of_a_pool_labels_its_own_figures(redis: RedisServer) -> None:
    url = redis.url.rsplit("/", 1)[0] + "/8"  # a database of this test's own
    options = ("--redis", url, "--repair-cooldown", "0")
    with Metered(*options) as one, Metered(*options) as two:

        async def scenario() -> None:
            a = await websockets.connect(one.ws_url)
            await recv(a, "waiting")
            b = await websockets.connect(two.ws_url)
            await recv(b, "paired")
            await recv(a, "paired")
            for text in ("one", "two"):
                await send(a, {"type": "message", "text": text, "id": 1})
                await recv(a, "sent")
            await send(b, {"type": "message", "text": "three", "id": 1})
            await recv(b, "sent")
            # The pool's counts come with each renewal of the lease (1 s).
            wait_until(
                lambda: all(
                    value(node.scrape(), "roulette_pool_chatting", node=node.health()["node"]) == 2
                    for node in (one, two)
                ),
                timeout=5,
            )
            await send(a, {"type": "next"})
            await recv(b, "partner_left")
            await a.close()
            await b.close()

        before = [one.scrape(), two.scrape()]
        run_async(scenario())
        after = [one.scrape(), two.scrape()]
        nodes = [one.health()["node"], two.health()["node"]]
        assert nodes[0] != nodes[1]
        for node, samples in zip(nodes, after, strict=True):
            # Every sample, the process's own included, names its node.
            assert {dict(labels).get("node") for _, labels in samples} == {node}
            assert {name for name, _ in samples} >= set(POOL_FAMILIES)
            assert value(samples, "roulette_pool_nodes", node=node) == 2
            assert value(samples, "roulette_matching_paused", node=node) == 0
        # Each node counts its own: one chat (at one node), three messages.
        # The chat is counted once: at a's node (a waited, and makes the offer).
        pairs = [
            moved(b, a, "roulette_pairs_total", node=n)
            for n, b, a in zip(nodes, before, after, strict=True)
        ]
        assert pairs == [1, 0]
        relayed = [
            moved(b, a, "roulette_messages_relayed_total", node=n)
            for n, b, a in zip(nodes, before, after, strict=True)
        ]
        assert relayed == [2, 1]
        nexts = [
            moved(b, a, "roulette_chats_ended_total", node=n, how="next")
            for n, b, a in zip(nodes, before, after, strict=True)
        ]
        assert nexts == [1, 0]
        assert value(after[0], "roulette_wait_seconds_count", node=nodes[0]) == 1
        assert value(after[1], "roulette_wait_seconds_count", node=nodes[1]) == 1


def test_a_chat_handed_over_to_another_node_is_not_counted_as_ended(redis: RedisServer) -> None:
    """A connection whose session another node takes over (its token
    presented there) is closed, but its chat goes on: it ends once, where
    it ends."""
    from test_e2e import with_session

    url = redis.url.rsplit("/", 1)[0] + "/12"  # a database of this test's own
    options = ("--redis", url, "--repair-cooldown", "0")
    with Metered(*options) as one, Metered(*options) as two:

        async def scenario() -> None:
            a, session = await with_session(one.ws_url)
            await recv(a, "waiting")
            b = await websockets.connect(one.ws_url)
            await recv(b, "paired")
            await recv(a, "paired")
            # a's connection still seems open; its token is presented to two.
            again, resumed = await with_session(two.ws_url, session["token"])
            assert resumed["resumed"] is True
            assert await closed_with(a) == 4001
            await recv(again, "partner_back")
            await send(b, {"type": "next"})
            await recv(again, "partner_left")
            await again.close()
            await b.close()

        before = [one.scrape(), two.scrape()]
        run_async(scenario())
        after = [one.scrape(), two.scrape()]
        nodes = [one.health()["node"], two.health()["node"]]
        ended = [
            {
                how: moved(b, a, "roulette_chats_ended_total", node=n, how=how)
                for how in CHAT_ENDINGS
            }
            for n, b, a in zip(nodes, before, after, strict=True)
        ]
        assert ended == [
            {**dict.fromkeys(CHAT_ENDINGS, 0), "next": 1},
            dict.fromkeys(CHAT_ENDINGS, 0),
        ]


# -- the options ---------------------------------------------------------------------


def test_the_metrics_option_is_checked() -> None:
    options = Options()
    options.parseOptions(["--metrics", "tcp:9100:interface=127.0.0.1"])
    assert options["metrics"] == "tcp:9100:interface=127.0.0.1"
    assert Options()["metrics"] is None
    for args in (
        ["--metrics", "nonsense:1"],
        ["--metrics", "tcp:8080", "--port", "tcp:8080"],
        ["--metrics", "tcp:9100", "--workers", "2", "--redis", "redis://127.0.0.1/0"],
    ):
        with pytest.raises(UsageError) as refused:
            Options().parseOptions(args)
        assert "--metrics" in str(refused.value)


@pytest.mark.e2e
def test_a_metrics_port_that_cannot_be_had_is_one_line(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError) as failed:
            RunningServer(None, "--metrics", f"tcp:{port}:interface=127.0.0.1").start()
        assert f"cannot listen on --metrics tcp:{port}" in str(failed.value)
    finally:
        taken.close()


# -- in memory, on a fake clock --------------------------------------------------------


def test_every_refused_handshake_has_a_label_of_its_own() -> None:
    """Each reason ``_deny_handshake`` is given (server.py, read as source)
    maps to a label of its own: a new one must be named here too."""
    source = Path(roulette.server.__file__).read_text()
    reasons = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "_deny_handshake"
        ):
            reason = node.args[1]
            if isinstance(reason, ast.Constant):
                reasons.append(reason.value)
            else:  # the per-address caps: AddressLimits.admit's answers
                assert isinstance(reason, ast.JoinedStr)
                prefix = reason.values[0]
                assert isinstance(prefix, ast.Constant)
                reasons += [f"{prefix.value}{why})" for why in ("concurrent", "rate")]
    assert len(reasons) >= 8
    counted = Metrics(clock=lambda: 0.0)
    for reason in reasons:
        counted.refused_handshake(reason)
    assert OTHER not in counted.refusals
    assert sum(counted.refusals.values()) == len(reasons)


def test_the_lag_monitor_observes_how_late_its_timer_runs() -> None:
    clock = task.Clock()
    observed: list[float] = []
    monitor = LagMonitor(clock, observed.append, interval=0.5)
    monitor.startService()
    clock.advance(0.5)
    assert observed == [0.0]
    clock.advance(2.0)  # the reactor was busy: the next timer ran 1.5 s late
    assert observed == [0.0, 1.5]
    monitor.stopService()
    clock.advance(10)
    assert observed == [0.0, 1.5]
    assert not clock.getDelayedCalls()


async def _paired(harness: Harness, wait: float = 0.0) -> tuple[Client, Client]:
    a = await harness.connect()
    harness.tick(wait)
    b = await harness.connect()
    for client in (a, b):
        assert "paired" in [e["type"] for e in client.take()]
    return a, b


def _samples(m: Metrics) -> Samples:
    from prometheus_client import generate_latest

    return parse(generate_latest(m.registry).decode("utf-8"))[1]


@pytest_twisted.ensureDeferred
async def test_waits_and_chat_lengths_on_a_fake_clock(harness: Harness) -> None:
    m = harness.factory.metrics
    a, b = await _paired(harness, wait=7.0)
    samples = _samples(m)
    assert value(samples, "roulette_wait_seconds_count") == 2
    assert value(samples, "roulette_wait_seconds_sum") == 7.0  # a waited 7 s, b none
    assert value(samples, "roulette_wait_seconds_bucket", le="5.0") == 1
    assert value(samples, "roulette_pairs_total") == 1
    assert value(samples, "roulette_chatting") == 2
    harness.tick(30)
    a.send({"type": "next"})
    harness.pump()
    samples = _samples(m)
    assert value(samples, "roulette_chat_seconds_count") == 1
    assert value(samples, "roulette_chat_seconds_sum") == 30.0
    assert value(samples, "roulette_chats_ended_total", how="next") == 1
    # b stopped after its chat ended: it is no chat, and it waits no more.
    b.send({"type": "stop"})
    harness.pump()
    assert m.ended == {**dict.fromkeys(CHAT_ENDINGS, 0), "next": 1}
    assert value(_samples(m), "roulette_waiting") == 1  # a


@pytest_twisted.ensureDeferred
async def test_a_chat_whose_partner_never_comes_back_is_dropped_once(harness: Harness) -> None:
    m = harness.factory.metrics
    _, b = await _paired(harness)
    harness.tick(12)
    b.dropConnection(abort=True)  # no close: b may come back
    harness.pump()
    assert m.ended["dropped"] == 0  # not yet: the chat may go on
    harness.tick(120)  # past any resume grace
    assert m.ended == {**dict.fromkeys(CHAT_ENDINGS, 0), "dropped": 1}
    samples = _samples(m)
    assert value(samples, "roulette_chat_seconds_count") == 1
    assert value(samples, "roulette_chat_seconds_sum") > 12.0  # and the grace waited
    assert value(samples, "roulette_chatting") == 0


@pytest_twisted.ensureDeferred
async def test_sessions_away_and_resumed(harness: Harness) -> None:
    m = harness.factory.metrics
    a, _ = await _paired(harness)
    token = a.token
    a.dropConnection(abort=True)
    harness.pump()
    samples = _samples(m)
    assert value(samples, "roulette_sessions_away") == 1
    assert value(samples, "roulette_sessions_resumed_total") == 0
    back = await harness.connect(path=f"/ws?session={token}")
    assert back.sessions[0]["resumed"] is True
    samples = _samples(m)
    assert value(samples, "roulette_sessions_away") == 0
    assert value(samples, "roulette_sessions_resumed_total") == 1
    assert m.ended == dict.fromkeys(CHAT_ENDINGS, 0)  # the chat goes on


@pytest_twisted.ensureDeferred
async def test_a_clean_close_ends_the_chat_as_left(harness: Harness) -> None:
    m = harness.factory.metrics
    _, b = await _paired(harness)
    harness.tick(3)
    b.sendClose(code=1000)
    harness.pump()
    harness.tick(1)
    assert m.ended == {**dict.fromkeys(CHAT_ENDINGS, 0), "left": 1}
    assert value(_samples(m), "roulette_chat_seconds_sum") == 3.0


@pytest_twisted.ensureDeferred
async def test_frames_autobahn_fails_are_refusals(harness: Harness) -> None:
    m = harness.factory.metrics
    a = await harness.connect()
    a.sendMessage(b"x" * 70_000)  # over wire.MAX_PAYLOAD: 1009
    harness.pump()
    b = await harness.connect()
    b.sendMessage(b"\xff\xfe\xfd", isBinary=False)  # not UTF-8: 1007
    harness.pump()
    c = await harness.connect()
    c.sendFrame(opcode=1, payload=b"{}", rsv=4)  # a reserved bit: 1002
    harness.pump()
    harness.tick(1)
    assert [client.closed[1] for client in (a, b, c) if client.closed] == [1009, 1007, 1002]
    moves = {reason: count for reason, count in m.refusals.items() if count}
    assert moves == {"too_large": 1, "invalid_utf8": 1, "protocol_error": 1}


def test_a_node_of_a_pool_labels_everything_it_exposes() -> None:
    """The relabelling itself, without Redis: every family, the process's
    own included, gets the node's label, and nothing else changes."""
    m = Metrics(clock=lambda: 0.0)
    m.node = "abc123"
    m.pairs = 3
    samples = _samples(m)
    assert {dict(labels).get("node") for _, labels in samples} == {"abc123"}
    assert value(samples, "roulette_pairs_total", node="abc123") == 3
    assert ("process_open_fds", (("node", "abc123"),)) in samples


def test_the_core_knows_nothing_of_metrics() -> None:
    """The functional core stays free of prometheus_client and of the shell."""
    core = Path(metrics.__file__).with_name("core.py").read_text()
    assert "prometheus" not in core
    assert "roulette.metrics" not in core


def test_operations_md_names_every_metric_reason_and_ending() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
    exposed = {name.removesuffix("_bucket") for name, _ in _samples(Metrics(clock=lambda: 0.0))}
    ours = {
        name
        for name in exposed | set(POOL_FAMILIES)
        if name.startswith("roulette_") and not name.endswith(("_sum", "_count", "_created"))
    }
    assert len(ours) >= 10
    for name in ours:
        assert f"`{name}`" in doc, name
    for label in (*REFUSALS, *CHAT_ENDINGS):
        assert f"`{label}`" in doc, label
