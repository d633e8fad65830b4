"""Soak: hundreds of clients churning against a real ``twistd roulette`` for
about a minute, with flooders, droppers and rude clients among them.

Run it alone with ``python -m pytest tests/test_soak.py -s`` (``-s`` shows the
figures; ``SOAK_SECONDS`` sets the length of the churn, default 40).

Well-behaved clients tag every message with sender and addressee.  In each
chat both sides send a batch, confirm when they have the partner's whole
batch, and only then does one of them press Next: so every message of a
well-behaved client must arrive, and must arrive at its addressee only.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import websockets
from redis_server import RedisServer
from support import RunningServer, run_async, wait_until
from websockets.exceptions import ConnectionClosed, InvalidStatus

pytestmark = pytest.mark.soak

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "40"))
WELL_BEHAVED = 240
FLOODERS = 4
DROPPERS = 20
RUDE = 2
BATCH = 4


@dataclass
class Tally:
    chats: int = 0
    delivered: int = 0
    misdelivered: list[str] = field(default_factory=list)
    stalled: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)
    reports: int = 0
    banned: int = 0
    refused_after_ban: int = 0
    flooder_closes: int = 0
    drops: int = 0
    rate_limited: int = 0


def address(kind: str, n: int) -> dict[str, str]:
    """A distinct forwarded address per client, each in a /24 of its own, as
    strangers are (the server trusts one proxy)."""
    base = {"w": 1, "f": 2, "d": 3, "x": 4}[kind]
    return {"X-Forwarded-For": f"10.{base}.{n + 1}.1"}


async def events(ws: Any, timeout: float) -> Any:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


class Over(Exception):
    """The churn is over: stop waiting."""


async def paired(ws: Any, end: float) -> None:
    """Wait for ``paired``; raise :class:`Over` once the churn has ended."""
    while True:
        remaining = end - time.monotonic()
        if remaining <= 0:
            raise Over
        try:
            event = await events(ws, remaining)
        except TimeoutError:
            raise Over from None
        if event["type"] == "paired":
            return
        if event["type"] == "banned":
            raise Over


class Pacer:
    """Keeps a client within the server's default budgets, as a person is:
    at most ``rate`` frames a second."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.next_at = 0.0

    async def wait(self) -> None:
        now = time.monotonic()
        if self.next_at > now:
            await asyncio.sleep(self.next_at - now)
        self.next_at = max(now, self.next_at) + self.interval


async def well_behaved(n: int, url: str, end: float, tally: Tally) -> None:
    me = f"w{n}"
    pacer = Pacer(rate=3.0)  # below the default 5 messages a second
    async with websockets.connect(url, additional_headers=address("w", n)) as ws:

        async def send(command: dict[str, str]) -> None:
            await pacer.wait()
            await ws.send(json.dumps(command))

        while time.monotonic() < end:
            # Wait to be paired (someone is always about to press Next).
            try:
                await paired(ws, end)
            except Over:
                return
            await send({"type": "message", "text": f"hi:{me}"})
            partner: str | None = None
            got: set[int] = set()
            told_done = partner_done = False
            stall_at = time.monotonic() + 15  # a chat makes progress or is stalled
            while True:
                try:
                    event = await events(ws, stall_at - time.monotonic())
                except (TimeoutError, ValueError):
                    tally.stalled.append(f"{me} with {partner}: got {sorted(got)}")
                    await send({"type": "next"})
                    break
                kind = event["type"]
                if kind == "partner_away":
                    # A dropper is gone (it never comes back): no waiting
                    # out the resume grace.
                    await send({"type": "next"})
                    break
                if kind == "partner_left":
                    if partner and partner.startswith("w") and not (partner_done and told_done):
                        if time.monotonic() < end:
                            tally.broken.append(f"{me} with {partner}")
                    await send({"type": "next"})
                    break
                if kind == "error":
                    if event["code"] == "rate_limited":
                        tally.rate_limited += 1
                    continue
                if kind != "message":
                    continue
                text = event["text"]
                if text.startswith("hi:"):
                    partner = text[3:]
                    if partner.startswith("x"):
                        await send({"type": "report", "reason": "rude"})
                        tally.reports += 1
                        break
                    if partner.startswith("w"):
                        for k in range(BATCH):
                            await send({"type": "message", "text": f"m:{me}:{partner}:{k}"})
                elif text.startswith("m:"):
                    _, sender, addressee, k = text.split(":")
                    if addressee != me or sender != partner or int(k) in got:
                        tally.misdelivered.append(f"{text} reached {me} (partner {partner})")
                    got.add(int(k))
                    tally.delivered += 1
                    if len(got) == BATCH and not told_done:
                        told_done = True
                        await send({"type": "message", "text": f"done:{me}"})
                elif text.startswith("done:"):
                    partner_done = True
                if told_done and partner_done:
                    tally.chats += 1
                    if partner is not None and me < partner:
                        await send({"type": "next"})
                        break
                    # The other side presses Next; partner_left follows.


async def flooder(n: int, url: str, end: float, tally: Tally) -> None:
    while time.monotonic() < end:
        try:
            # max_queue=None: it never reads its errors, yet must see the close.
            async with websockets.connect(
                url, additional_headers=address("f", n), max_queue=None
            ) as ws:
                await paired(ws, end)
                await ws.send(json.dumps({"type": "message", "text": f"hi:f{n}"}))
                try:
                    for i in range(500):
                        await ws.send(json.dumps({"type": "message", "text": f"flood {i}"}))
                except ConnectionClosed:
                    pass
                await asyncio.wait_for(ws.wait_closed(), 15)
                if ws.close_code == 1008:
                    tally.flooder_closes += 1
        except (ConnectionClosed, TimeoutError, OSError, Over):
            pass
        await asyncio.sleep(1)


async def dropper(n: int, url: str, end: float, tally: Tally) -> None:
    rng = random.Random(n)
    while time.monotonic() < end:
        try:
            ws = await websockets.connect(url, additional_headers=address("d", n))
            try:
                await paired(ws, end)
            except Over:
                await ws.close()
                return
            await ws.send(json.dumps({"type": "message", "text": f"hi:d{n}"}))
            leave_at = time.monotonic() + rng.uniform(0, 2)
            try:
                while (remaining := leave_at - time.monotonic()) > 0:
                    event = await events(ws, remaining)
                    if event["type"] == "message" and event["text"].startswith("hi:x"):
                        await ws.send(json.dumps({"type": "report", "reason": "rude"}))
                        tally.reports += 1
            except TimeoutError:
                pass
            ws.transport.abort()  # gone without a word
            tally.drops += 1
        except (ConnectionClosed, TimeoutError, OSError):
            pass
        await asyncio.sleep(rng.uniform(0, 1))


async def rude(n: int, url: str, end: float, tally: Tally) -> None:
    async def say(ws: Any, command: dict[str, str]) -> None:
        try:
            await ws.send(json.dumps(command))
        except ConnectionClosed:
            pass  # what is still queued for us (a ban, say) is read next

    while time.monotonic() < end:
        try:
            async with websockets.connect(url, additional_headers=address("x", n)) as ws:
                while time.monotonic() < end:
                    try:
                        event = await events(ws, 5)
                    except TimeoutError:  # a quiet partner: move on
                        await say(ws, {"type": "next"})
                        continue
                    if event["type"] == "banned":
                        tally.banned += 1
                        break
                    if event["type"] == "paired":
                        await say(ws, {"type": "message", "text": f"hi:x{n}"})
                    elif event["type"] == "partner_left":
                        await say(ws, {"type": "next"})
                    elif event["type"] == "message" and event["text"][:4] in ("hi:x", "hi:f"):
                        await say(ws, {"type": "next"})  # only people are worth annoying
                await asyncio.wait_for(ws.wait_closed(), 5)
        except InvalidStatus as refused:
            if refused.response.status_code == 403:
                tally.refused_after_ban += 1
            await asyncio.sleep(2)
        except (ConnectionClosed, TimeoutError, OSError):
            await asyncio.sleep(0.5)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def warm_up(url: str) -> None:
    """Touch every code path once so the baseline includes Python's caches."""
    clients = [
        await websockets.connect(url, additional_headers={"X-Forwarded-For": f"198.18.9.{i}"})
        for i in range(1, 201)
    ]
    for ws in clients:
        await ws.send(json.dumps({"type": "message", "text": "warm"}))
    await asyncio.sleep(1)
    for ws in clients:
        await ws.close()


def test_soak() -> None:
    with RunningServer(
        None,
        "--trust-proxy",
        "1",
        "--repair-cooldown",
        "5",
        "--ban-minutes",
        "10",
    ) as server:
        tally = soak([server])
    assert tally.banned > 0


def test_soak_across_two_processes_sharing_redis(tmp_path: Path) -> None:
    """The same churn, its clients spread over two processes of one pool:
    chats within a process and across the two alike, bans shared."""
    redis = RedisServer(tmp_path)
    redis.start()
    options = ("--trust-proxy", "1", "--repair-cooldown", "5", "--redis", redis.url)
    try:
        with RunningServer(None, *options) as one, RunningServer(None, *options) as two:
            tally = soak([one, two])
        # Reports made on either process count together toward one ban.
        assert tally.banned > 0
    finally:
        redis.stop()


def soak(servers: list[RunningServer]) -> Tally:
    """Churn against ``servers`` (client n connects to server n mod their
    number); check that nothing was lost, misdelivered or stalled, and that
    memory comes back.  Returns the tally."""
    pids = []
    for server in servers:
        assert server.process is not None
        pids.append(server.process.pid)
        run_async(warm_up(server.ws_url))
    for server in servers:
        wait_until(lambda server=server: server.health()["online"] == 0, timeout=30)
    rss_before = [rss_kib(pid) for pid in pids]
    tally = Tally()
    started = time.monotonic()
    end = started + SOAK_SECONDS
    urls = [server.ws_url for server in servers]

    async def churn() -> None:
        def url(n: int) -> str:
            return urls[n % len(urls)]

        tasks = [well_behaved(n, url(n), end, tally) for n in range(WELL_BEHAVED)]
        tasks += [flooder(n, url(n), end, tally) for n in range(FLOODERS)]
        tasks += [dropper(n, url(n), end, tally) for n in range(DROPPERS)]
        tasks += [rude(n, url(n), end, tally) for n in range(RUDE)]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            tails = "\n".join(server.log()[-3000:] for server in servers)
            raise AssertionError(f"{len(errors)} clients failed: {errors[:3]}\n{tails}")

    peak_online = 0

    async def watch() -> None:
        nonlocal peak_online
        while time.monotonic() < end:
            peak_online = max(peak_online, servers[0].health()["online"])
            await asyncio.sleep(2)

    async def main() -> None:
        await asyncio.gather(churn(), watch())

    run_async(main())
    elapsed = time.monotonic() - started
    for server in servers:
        wait_until(lambda server=server: server.health()["online"] == 0, timeout=30)
    time.sleep(1)
    rss_after = [rss_kib(pid) for pid in pids]
    logs = [server.log() for server in servers]

    figures = {
        "processes": len(servers),
        "seconds": round(elapsed, 1),
        "clients": WELL_BEHAVED + FLOODERS + DROPPERS + RUDE,
        "peak_online": peak_online,
        "chats_completed": tally.chats // 2,
        "messages_delivered": tally.delivered,
        "reports": tally.reports,
        "bans": tally.banned,
        "refused_after_ban": tally.refused_after_ban,
        "flooders_closed_1008": tally.flooder_closes,
        "tcp_drops": tally.drops,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
    }
    print("\nsoak figures:", json.dumps(figures))
    assert tally.rate_limited == 0, "a well-behaved client was rate limited"
    assert not tally.misdelivered, tally.misdelivered[:5]
    assert not tally.stalled, tally.stalled[:5]
    assert not tally.broken, tally.broken[:5]
    assert tally.chats > WELL_BEHAVED, "too few chats to mean anything"
    assert tally.flooder_closes > 0
    for log in logs:
        assert "Traceback" not in log
    # Memory comes back to about where it started once everyone has left.
    for before, after in zip(rss_before, rss_after, strict=True):
        assert after < before * 1.25 + 8 * 1024, (before, after)
    return tally
