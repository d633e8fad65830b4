"""What interests cost a join: over real sockets, and in the matchmaker alone.

    python benchmarks/interests.py            # both parts, 3 rounds
    python benchmarks/interests.py --quick    # a smoke run

**Over sockets** (``twistd roulette``, pinned to CPU 0; this process, the
load generator, to CPU 1): ``--clients`` connections (10,000) join one
after another as fast as the server takes them, each with one to three
interests drawn from a vocabulary of ``--vocabulary`` words (1,000) given in
its URL, then ``--batch`` (2,000) more join the queue those left.  The
same again without interests.  For each: joins a second and server CPU per
join (the handshake, the join and any pairing it makes), and how many
waited at the end.  The interest wait (``--interest-wait``, 60 s) outlasts
the run: no fallback happens while it is measured.

Two waiting clients who share an interest are paired, so at most one
waiting client holds each word: of 10,000 who join with interests from
1,000 words, a few hundred are left waiting, each with words no other
waiting client has.  The queue a join meets is as long as interests can
make it.

**In the matchmaker** (``MemoryMatchmaker``, no sockets): the time of one
join (and the disconnect after it) against a queue of 0 to 100,000 waiting
clients with interests of their own (a vocabulary large enough that none
shares one), for a joiner with three interests none of them shares and for
one without interests.  An index makes it flat; a scan of the queue would
grow with it.

**A whole join in process** (no sockets, the garbage collector off): the
handshake fed to a connection of the server's own factory, then the join;
5,000 in a row, without interests, with one to three in the address, and
with them in the address of a server that does not match by them
(``interest_wait`` 0): what reading and answering them costs apart from
matching by them.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402
import run  # noqa: E402
from relay_in_process import Discarding  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402

from roulette.abuse import AddressLimits  # noqa: E402
from roulette.core import MemoryMatchmaker  # noqa: E402
from roulette.limits import Limits  # noqa: E402
from roulette.lobby import Gate, Lobby  # noqa: E402
from roulette.server import RouletteFactory  # noqa: E402

WITH, WITHOUT = "interests", "no interests"


def paths(vocabulary: int, rng: random.Random, count: int = 20_000) -> list[str]:
    """A URL path for each of ``count`` clients: one to three random interests."""
    words = [f"w{i}" for i in range(vocabulary)]
    return [
        "/ws?" + urlencode([("interest", w) for w in rng.sample(words, rng.randint(1, 3))])
        for _ in range(count)
    ]


def waiting(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
        return int(json.load(answer)["waiting"])


async def joins(server: run.Server, count: int, path_of: Any) -> tuple[float, float, int]:
    """``count`` connections join (and stay); joins a second, server CPU µs
    a join, errors."""
    totals = loadgen.Totals()
    before = sum(map(run.cpu_seconds, server.pids))
    started = time.perf_counter()
    # echo=True: done once every connection is open, paired or not.
    await loadgen.connect(
        "127.0.0.1", server.port, count, totals, lambda c: None, True, 1000, paths=path_of
    )
    elapsed = time.perf_counter() - started
    cpu = sum(map(run.cpu_seconds, server.pids)) - before
    return totals.opened / elapsed, cpu / max(1, totals.opened) * 1e6, totals.errors


async def one_case(
    server: run.Server, clients: int, batch: int, urls: list[str] | None
) -> dict[str, Any]:
    """Fill the queue, then join it; the connections stay open until the end."""
    loop = asyncio.get_running_loop()
    fill = await joins(server, clients, (lambda i: urls[i]) if urls else None)
    queue = await loop.run_in_executor(None, waiting, server.port)
    more = await joins(server, batch, (lambda i: urls[clients + i]) if urls else None)
    return {
        "fill_joins_per_s": round(fill[0]),
        "fill_cpu_us_per_join": round(fill[1], 1),
        "waiting_after_fill": queue,
        "joins_per_s": round(more[0]),
        "cpu_us_per_join": round(more[1], 1),
        "waiting_after": await loop.run_in_executor(None, waiting, server.port),
        "errors": fill[2] + more[2],
    }


def over_sockets(args: argparse.Namespace) -> list[dict[str, Any]]:
    wait = str(args.interest_wait)
    run.SERVERS["roulette-interests"] = lambda port, log: [
        *run.roulette_command(port, log),
        "--interest-wait",
        wait,
    ]
    rng = random.Random(1)
    records = []
    with tempfile.TemporaryDirectory(prefix="roulette-bench-") as tmp:
        for rnd in range(args.rounds):
            cases = [WITH, WITHOUT] if rnd % 2 == 0 else [WITHOUT, WITH]
            for case in cases:
                urls = paths(args.vocabulary, rng) if case == WITH else None
                server = run.Server("roulette-interests", Path(tmp))
                try:
                    record = run.run_loop(one_case(server, args.clients, args.batch, urls))
                finally:
                    server.stop()
                records.append({"round": rnd, "case": case, **record})
                print(json.dumps(records[-1]), flush=True)
    return records


class _Peer:
    __slots__ = ()

    def send_waiting(self) -> None:
        pass

    def send_paired(self, offer: bool = False, common: Any = ()) -> None:
        pass

    def send_partner_left(self) -> None:
        pass

    def send_event(self, event: bytes) -> None:
        pass


def in_matchmaker(queues: list[int], tries: int) -> list[dict[str, Any]]:
    """µs for one join and the disconnect after it, best of five."""
    records = []
    for size in queues:
        mm = MemoryMatchmaker(random.Random(1), time.monotonic, 60.0, interest_wait=3600)
        for i in range(size):
            mm.connect(_Peer(), i, interests=(f"only{i}", f"own{i}"))
        assert mm.stats().waiting == size
        row: dict[str, Any] = {"waiting": size}
        for case, interests in ((WITH, ("x1", "x2", "x3")), (WITHOUT, ())):
            best = float("inf")
            for _ in range(5):
                peers = [_Peer() for _ in range(tries)]
                started = time.perf_counter()
                for peer in peers:
                    mm.connect(peer, "joiner", interests=interests)
                    mm.disconnect(peer)
                best = min(best, (time.perf_counter() - started) / tries * 1e6)
            row[case] = round(best, 2)
        records.append(row)
        print(json.dumps(row), flush=True)
    return records


def handshake(path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def joins_in_process(vocabulary: int, count: int, rounds: int) -> dict[str, float]:
    """µs of CPU a join (handshake included), best of ``rounds``."""
    cases = {
        WITHOUT: (None, 10.0),
        WITH: (vocabulary, 10.0),
        "interests, not matched": (vocabulary, 0.0),
    }
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(rounds):
        for case, (words, wait) in cases.items():
            clock = Clock()
            clock.advance(1000)
            mm = MemoryMatchmaker(random.Random(0), clock.seconds, 0, interest_wait=wait)
            lobby = Lobby(mm, clock, Gate(addresses=AddressLimits(10**6, 10**6)))
            factory = RouletteFactory(lobby, limits=Limits(interest_wait=wait), reactor=clock)
            urls = paths(words, random.Random(1), count) if words else ["/ws"] * count
            requests = [handshake(url) for url in urls]
            kept = []
            gc.disable()
            try:
                started = time.process_time()
                for request in requests:
                    protocol = factory.buildProtocol(None)
                    protocol.makeConnection(Discarding())
                    protocol.dataReceived(request)
                    kept.append(protocol)
                took = (time.process_time() - started) / count * 1e6
            finally:
                gc.enable()
            best[case] = min(best[case], took)
    row = {case: round(us, 1) for case, us in best.items()}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=2_000)
    parser.add_argument("--vocabulary", type=int, default=1_000)
    parser.add_argument("--interest-wait", type=float, default=60.0)
    parser.add_argument("--skip-sockets", action="store_true")
    args = parser.parse_args()
    queues = [0, 1_000, 10_000, 100_000]
    tries = 20_000
    if args.quick:
        args.rounds, args.clients, args.batch = 1, 300, 100
        queues, tries = [0, 1_000], 1_000
    if not args.skip_sockets:
        if run.pinned():
            os.sched_setaffinity(0, {1})
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        records = over_sockets(args)
        print("\nover sockets, medians:")
        for case in (WITH, WITHOUT):
            mine = [r for r in records if r["case"] == case]
            summary = {
                key: statistics.median(r[key] for r in mine)
                for key in mine[0]
                if key not in ("round", "case")
            }
            print(json.dumps({"case": case, **summary}))
    print("\nin the matchmaker (µs a join):")
    in_matchmaker(queues, tries)
    print("\na whole join in process (µs):")
    joins_in_process(args.vocabulary, 5_000 if not args.quick else 500, args.rounds + 2)


if __name__ == "__main__":
    main()
