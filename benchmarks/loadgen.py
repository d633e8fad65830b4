"""A lean WebSocket load generator speaking roulette's wire protocol v1.

It must cost the load generator far less CPU per message than the server it
measures, so it skips what a general client does:

* frames are masked with the all-zero key, which RFC 6455 allows, so the
  payload needs no XOR pass;
* each connection is a bare ``asyncio.Protocol`` that parses frames in place;
* writes of one loop turn are left to the transport to coalesce.

Every chat message carries its send time (``time.perf_counter_ns``), so the
receiver measures one-way latency on the same clock.  Against an echo server
the "partner" is the sender itself.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

PAD = "x" * 40  # with the prefix and timestamp, frames are about 110 bytes


def frame(payload: bytes) -> bytes:
    """A masked text frame with the zero mask key (payload unchanged)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x81, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
    return head + b"\x00\x00\x00\x00" + payload


def pong(payload: bytes) -> bytes:
    return struct.pack("!BB", 0x8A, 0x80 | len(payload)) + b"\x00\x00\x00\x00" + payload


@dataclass
class Totals:
    """What all connections of one run saw."""

    received: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    opened: int = 0
    paired: int = 0
    record: bool = False
    errors: int = 0  # connections refused, dropped or never upgraded
    #: For each connection paired: from its TCP connection (before the
    #: upgrade request) to its ``paired`` event, as a visitor waits.
    pairing_ns: list[int] = field(default_factory=list)


class Client(asyncio.Protocol):
    """One connection: handshake, wait for ``paired``, then send as told."""

    def __init__(
        self,
        host: str,
        totals: Totals,
        on_message: Callable[[Client], None],
        path: str = "/ws",
    ) -> None:
        self.host = host
        self.path = path
        self.totals = totals
        self.on_message = on_message
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded = False
        self.connected_at = time.perf_counter_ns()
        # Each resolves True when it happens, False when the connection is lost first.
        self.opened: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.is_paired: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write(
            (
                f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for future in (self.opened, self.is_paired):
            if not future.done():
                future.set_result(False)

    def send_chat(self) -> None:
        text = f"{time.perf_counter_ns()} {PAD}"
        payload = b'{"type":"message","text":"' + text.encode() + b'"}'
        assert self.transport is not None
        self.transport.write(frame(payload))

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.totals.errors += 1
                assert self.transport is not None
                self.transport.close()
                return
            del buf[: end + 4]
            self.upgraded = True
            self.opened.set_result(True)
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            b0 = buf[pos]
            n = buf[pos + 1] & 0x7F
            start = pos + 2
            if n == 126:
                if size - pos < 4:
                    break
                n = (buf[pos + 2] << 8) | buf[pos + 3]
                start = pos + 4
            elif n == 127:
                if size - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start = pos + 10
            end = start + n
            if end > size:
                break
            opcode = b0 & 0x0F
            if opcode == 1:
                self.text(bytes(buf[start:end]))
            elif opcode == 9:  # ping
                assert self.transport is not None
                self.transport.write(pong(bytes(buf[start:end])))
            pos = end
        if pos:
            del buf[:pos]

    def text(self, payload: bytes) -> None:
        # Chat messages are by far the most frequent: recognise them cheaply.
        if payload.startswith(b'{"type":"message"'):
            totals = self.totals
            if totals.record:
                totals.received += 1
                start = payload.index(b'"text":"') + 8
                stamp = int(payload[start : payload.index(b" ", start)])
                totals.latencies_ns.append(time.perf_counter_ns() - stamp)
            self.on_message(self)
            return
        event = json.loads(payload)
        if event["type"] == "paired" and not self.is_paired.done():
            self.totals.paired += 1
            self.totals.pairing_ns.append(time.perf_counter_ns() - self.connected_at)
            self.is_paired.set_result(True)


async def connect(
    host: str,
    port: int | list[int],
    count: int,
    totals: Totals,
    on_message: Callable[[Client], None],
    echo: bool,
    concurrency: int = 200,
    timeout: float = 60,
    across: bool = True,
    paths: Callable[[int], str] | None = None,
) -> list[Client]:
    """Open ``count`` connections, ``concurrency`` handshakes at a time, and
    wait until they are paired (against an echo each is its own partner).
    A connection that fails is counted in ``totals.errors``, not raised.

    With two ports (two processes of one pool), connections go to each in
    turn; ``across``, one pair at a time, so that every chat is across the
    two (otherwise all at once, and chats fall where they may).  ``paths``
    gives the request path of the i-th connection (default ``/ws``)."""
    loop = asyncio.get_running_loop()
    clients: list[Client] = []
    gate = asyncio.Semaphore(concurrency)
    ports = port if isinstance(port, list) else [port]

    async def one(to: int, i: int = 0) -> Client | None:
        path = paths(i) if paths is not None else "/ws"
        async with gate:
            try:
                _, client = await loop.create_connection(
                    lambda: Client(f"{host}:{to}", totals, on_message, path), host, to
                )
                opened = await asyncio.wait_for(client.opened, timeout)
            except OSError:  # TimeoutError included
                opened = False
            if opened:
                clients.append(client)
                return client
            totals.errors += 1
            return None

    if len(ports) == 1 or not across:
        await asyncio.gather(*(one(ports[i % len(ports)], i) for i in range(count)))
    else:
        for _ in range(0, count, len(ports)):
            pair = [await one(to) for to in ports]
            waits = [c.is_paired for c in pair if c is not None]
            if waits:
                await asyncio.wait(waits, timeout=timeout)
    totals.opened = len(clients)
    if echo:
        totals.paired = len(clients)
    elif clients:
        await asyncio.wait([c.is_paired for c in clients], timeout=timeout)
    return clients


def close_all(clients: list[Client]) -> None:
    for client in clients:
        if client.transport is not None and not client.closed:
            client.transport.abort()


async def measuring_window(
    totals: Totals, warmup: float, window: float, on_window: Callable[[bool], None]
) -> None:
    """Let the load settle, then record what arrives for ``window`` seconds."""
    await asyncio.sleep(warmup)
    totals.record = True
    on_window(True)
    await asyncio.sleep(window)
    totals.record = False
    on_window(False)


async def saturated(
    host: str,
    port: int | list[int],
    connections: int,
    inflight: int,
    warmup: float,
    window: float,
    echo: bool,
    on_window: Callable[[bool], None],
) -> Totals:
    """Each connection keeps ``inflight`` messages in flight: every message
    received makes its receiver send one more."""
    totals = Totals()
    clients = await connect(host, port, connections, totals, lambda c: c.send_chat(), echo)
    for client in clients:
        for _ in range(inflight):
            client.send_chat()
    await measuring_window(totals, warmup, window, on_window)
    close_all(clients)
    return totals


async def paced(
    host: str,
    port: int | list[int],
    connections: int,
    rate: float,
    warmup: float,
    window: float,
    echo: bool,
    on_window: Callable[[bool], None],
) -> Totals:
    """Each connection sends ``rate`` messages a second, spread out in time,
    as people chatting do."""
    totals = Totals()
    clients = await connect(host, port, connections, totals, lambda c: None, echo)
    loop = asyncio.get_running_loop()
    interval = 1.0 / rate
    stop = False

    def tick(client: Client) -> None:
        if stop or client.closed:
            return
        client.send_chat()
        loop.call_later(interval, tick, client)

    for i, client in enumerate(clients):
        loop.call_later(interval * i / len(clients), tick, client)
    await measuring_window(totals, warmup, window, on_window)
    stop = True
    close_all(clients)
    return totals


async def storm(
    host: str,
    port: int | list[int],
    connections: int,
    echo: bool,
    on_window: Callable[[bool], None],
) -> Totals:
    """Open ``connections`` at once; the window closes when every one is paired."""
    totals = Totals()
    on_window(True)
    clients = await connect(
        host, port, connections, totals, lambda c: None, echo, 1000, across=False
    )
    on_window(False)
    close_all(clients)
    return totals


async def idle(
    host: str,
    port: int | list[int],
    connections: int,
    settle: float,
    echo: bool,
    on_window: Callable[[bool], None],
) -> Totals:
    """Open ``connections`` and leave them paired and silent; the window is
    the ``settle`` seconds after the last one was paired."""
    totals = Totals()
    clients = await connect(host, port, connections, totals, lambda c: None, echo)
    await measuring_window(totals, 0, settle, on_window)
    close_all(clients)
    return totals
