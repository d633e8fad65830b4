"""One relayed chat message, timed in process: no sockets, no load generator.

Two connections are opened on one factory over discarding transports and
paired; then one of them is handed the same masked text frame ``N`` times.
What is timed is the server's whole path for a message: frame reading,
decoding, validation, the budget, the matchmaker and the partner's frame
written.  Prints the best of seven runs, in µs a message, as one JSON line.

Run it with the Python of each install to compare two commits, alternating:

    .venv/bin/python benchmarks/relay_in_process.py 50000
    /tmp/before-venv/bin/python benchmarks/relay_in_process.py 50000

It reads the lobby from ``roulette.lobby`` or, for commits before that
module, from ``roulette.server``.
"""

from __future__ import annotations

import json
import random
import sys
import time
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from roulette.abuse import AddressLimits
from roulette.core import MemoryMatchmaker
from roulette.server import RouletteFactory

try:
    from roulette.limits import Limits
    from roulette.lobby import Gate, Lobby
except ImportError:  # before the lobby had a module of its own
    from roulette.server import Gate, Limits, Lobby  # type: ignore[attr-defined,no-redef]

HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class Discarding(StringTransport):
    """A transport that keeps nothing: the benchmark measures the server."""

    def write(self, data: bytes) -> None:
        pass

    def writeSequence(self, seq: Any) -> None:
        pass

    def unregisterProducer(self) -> None:
        self.producer = None


def masked_text_frame(payload: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    assert len(payload) < 126
    body = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + body


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    clock = Clock()
    clock.advance(1000)
    matchmaker = MemoryMatchmaker(random.Random(0), clock.seconds, 60)
    lobby = Lobby(matchmaker, clock, Gate(addresses=AddressLimits(10**6, 10**6)))
    factory = RouletteFactory(
        lobby, limits=Limits(message_rate=1e12, message_burst=1e12), reactor=clock
    )

    def connect() -> Any:
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(Discarding())
        protocol.dataReceived(HANDSHAKE)
        return protocol

    a, b = connect(), connect()
    # The matchmaker pairs their sessions.
    assert matchmaker.partner_of(a.session) is b.session, "the two connections were not paired"
    frame = masked_text_frame(b'{"type":"message","text":"hello there, how are you?"}')
    runs = []
    for _ in range(7):
        started = time.process_time()
        for _ in range(count):
            a.dataReceived(frame)
        runs.append((time.process_time() - started) / count * 1e6)
    print(json.dumps({"best_us_per_msg": round(min(runs), 3), "runs": [round(r, 3) for r in runs]}))


if __name__ == "__main__":
    main()
