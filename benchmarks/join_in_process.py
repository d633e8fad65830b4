"""One join, timed in process: no sockets, no load generator.

``N`` connections are opened on one factory over discarding transports, one
after the other: each one's handshake, its first events and its pairing (every
second one finds a partner waiting) are what is timed, with the garbage
collector off.  Prints the best of five runs, in µs a join, as one JSON line.

Run it with the Python of each install to compare two commits, alternating:

    .venv/bin/python benchmarks/join_in_process.py 4000
    /tmp/before-venv/bin/python benchmarks/join_in_process.py 4000
"""

from __future__ import annotations

import gc
import json
import random
import sys
import time

from relay_in_process import HANDSHAKE, Discarding
from twisted.internet.task import Clock

from roulette.abuse import AddressLimits
from roulette.core import MemoryMatchmaker
from roulette.limits import Limits
from roulette.lobby import Gate, Lobby
from roulette.server import RouletteFactory


def run(count: int) -> float:
    clock = Clock()
    clock.advance(1000)
    matchmaker = MemoryMatchmaker(random.Random(0), clock.seconds, 60)
    lobby = Lobby(matchmaker, clock, Gate(addresses=AddressLimits(10**6, 10**6)))
    factory = RouletteFactory(lobby, limits=Limits(), reactor=clock)
    kept = []
    gc.disable()
    try:
        started = time.process_time()
        for _ in range(count):
            protocol = factory.buildProtocol(None)
            protocol.makeConnection(Discarding())
            protocol.dataReceived(HANDSHAKE)
            kept.append(protocol)
        elapsed = time.process_time() - started
    finally:
        gc.enable()
    assert matchmaker.stats().chatting == count - count % 2, "the joins were not paired"
    return elapsed / count * 1e6


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 4000
    runs = [run(count) for _ in range(5)]
    best = round(min(runs), 2)
    print(json.dumps({"best_us_per_join": best, "runs": [round(r, 2) for r in runs]}))


if __name__ == "__main__":
    main()
