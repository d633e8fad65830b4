"""Two Redis clients side by side: what each costs its process a command.

    python benchmarks/redis_clients.py [--commands 20000] [--rounds 3]

The pool (``--redis``) talks to Redis through ``txredisapi`` on Twisted's
epoll reactor.  The other candidate is ``redis``'s asyncio client (redis-py,
the ``bench`` extra installs it), which Twisted could only use through its
asyncio reactor; here it runs on a plain asyncio loop, its best case.  Both
parse replies with ``hiredis``.  Three operations, as the pool uses them:

- ``eval``: a small Lua script by its SHA (``EVALSHA``), as every pairing
  decision is made;
- ``publish``: a ``PUBLISH`` awaited for its reply;
- ``heard``: a message published by another connection and heard on a
  subscription, as each node hears its notices and its partners' events.

For ``eval`` and ``publish``, one command at a time (``x1``: each waits for
the one before) and 50 at once (``x50``): txredisapi writes them one after
the other on its one connection, where Redis runs them in the order sent;
redis-py's client runs one command at a time on a connection, so it is given
a pool of up to 50.  Each client runs in a process of its own, pinned to
CPU 1 (the redis-server to CPU 0); its CPU time is read with ``getrusage``
around the run.  The table gives medians over the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SCRIPT = "return redis.call('INCR', KEYS[1])"
CHANNEL = "bench:heard"
PAYLOAD = 'E n:1 n:2 {"type":"message","text":"' + "x" * 60 + '"}'
CLIENTS = ("txredisapi", "redis-asyncio")
OPERATIONS = ("eval x1", "eval x50", "publish x1", "publish x50", "heard")


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def report(commands: int, cpu_s: float, wall_s: float) -> None:
    print(json.dumps({"us_per_command": cpu_s / commands * 1e6, "per_s": commands / wall_s}))


# -- the clients, each run in a process of its own ------------------------------


def run_txredisapi(port: int, operation: str, commands: int) -> None:
    from twisted.internet import epollreactor

    epollreactor.install()
    import txredisapi
    from twisted.internet import defer, reactor, task
    from twisted.internet.endpoints import TCP4ClientEndpoint

    async def main() -> None:
        handler = await txredisapi.Connection("127.0.0.1", port, reconnect=False)
        redis = handler._factory.pool[0]  # the live connection, as the pool uses it
        if operation == "heard":
            done: defer.Deferred[None] = defer.Deferred()
            heard = 0
            marks: list[float] = []

            class Subscriber(txredisapi.SubscriberProtocol):  # type: ignore[misc]
                def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
                    nonlocal heard
                    heard += 1
                    if heard == 1:
                        marks.extend((cpu(), time.perf_counter()))
                    if heard == commands:
                        done.callback(None)

            factory = txredisapi.SubscriberFactory()
            factory.protocol = Subscriber
            factory.startConnecting(TCP4ClientEndpoint(reactor, "127.0.0.1", port))
            subscriber = await factory.deferred
            await subscriber.subscribe(CHANNEL)
            print("subscribed", flush=True)
            await done
            report(commands - 1, cpu() - marks[0], time.perf_counter() - marks[1])
            return
        command, _, width = operation.partition(" x")
        inflight = int(width)
        sha = await redis.script_load(SCRIPT)

        def one() -> defer.Deferred[Any]:
            if command == "eval":
                return redis.evalsha(sha, ["bench:n"], [])
            return redis.publish("bench:nobody", PAYLOAD)

        await one()
        start_cpu, start = cpu(), time.perf_counter()
        left = commands

        async def lane() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await one()

        await defer.gatherResults([defer.ensureDeferred(lane()) for _ in range(inflight)])
        report(commands, cpu() - start_cpu, time.perf_counter() - start)

    task.react(lambda _: defer.ensureDeferred(main()))


def run_redis_asyncio(port: int, operation: str, commands: int) -> None:
    import asyncio

    import redis.asyncio as aioredis

    async def main() -> None:
        if operation == "heard":
            client = aioredis.Redis(port=port)
            pubsub = client.pubsub()
            await pubsub.subscribe(CHANNEL)
            await pubsub.get_message(timeout=5)  # the subscription's confirmation
            print("subscribed", flush=True)
            heard = 0
            marks: list[float] = []
            while heard < commands:
                message = await pubsub.get_message(timeout=30)
                if message is None or message["type"] != "message":
                    continue
                heard += 1
                if heard == 1:
                    marks.extend((cpu(), time.perf_counter()))
            report(commands - 1, cpu() - marks[0], time.perf_counter() - marks[1])
            await client.aclose()
            return
        command, _, width = operation.partition(" x")
        inflight = int(width)
        client = aioredis.Redis(port=port, max_connections=inflight)
        sha = await client.script_load(SCRIPT)

        def one() -> Any:
            if command == "eval":
                return client.evalsha(sha, 1, "bench:n")
            return client.publish("bench:nobody", PAYLOAD)

        await one()
        start_cpu, start = cpu(), time.perf_counter()
        left = commands

        async def lane() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await one()

        await asyncio.gather(*(lane() for _ in range(inflight)))
        report(commands, cpu() - start_cpu, time.perf_counter() - start)
        await client.aclose()

    asyncio.run(main())


# -- the runner --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pin(cpu_number: int) -> list[str]:
    return ["taskset", "-c", str(cpu_number)] if (os.cpu_count() or 1) >= 2 else []


def publish_many(port: int, count: int) -> None:
    """Publish ``count`` messages from a connection of the runner's own,
    encoded by hiredis and written in large batches, replies drained."""
    import hiredis

    command = hiredis.pack_command(("PUBLISH", CHANNEL, PAYLOAD))  # type: ignore[arg-type]
    reader = hiredis.Reader()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        replies = 0
        for start in range(0, count, 1000):
            sock.sendall(command * min(1000, count - start))
            while replies < min(start + 1000, count):
                reader.feed(sock.recv(65536))
                while reader.gets() is not False:
                    replies += 1


def measure(client: str, port: int, operation: str, commands: int) -> dict[str, float]:
    child = subprocess.Popen(
        [*pin(1), sys.executable, __file__, "--child", client, "--port", str(port),
         "--operation", operation, "--commands", str(commands)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert child.stdout is not None
    if operation == "heard":
        assert child.stdout.readline().strip() == "subscribed"
        publish_many(port, commands)
    out, _ = child.communicate(timeout=300)
    if child.returncode:
        raise SystemExit(f"{client} {operation} failed")
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--commands", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=CLIENTS)
    parser.add_argument("--port", type=int)
    parser.add_argument("--operation", choices=OPERATIONS)
    args = parser.parse_args()
    if args.child == "txredisapi":
        return run_txredisapi(args.port, args.operation, args.commands)
    if args.child == "redis-asyncio":
        return run_redis_asyncio(args.port, args.operation, args.commands)
    with tempfile.TemporaryDirectory(prefix="roulette-redis-") as tmp:
        port = free_port()
        server = subprocess.Popen(
            [*pin(0), "redis-server", "--port", str(port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            results: dict[tuple[str, str], list[dict[str, float]]] = {}
            for _ in range(args.rounds):
                for operation in OPERATIONS:
                    for client in CLIENTS:
                        found = measure(client, port, operation, args.commands)
                        results.setdefault((operation, client), []).append(found)
        finally:
            server.kill()
            server.wait()
    from importlib.metadata import version

    print(
        f"{args.commands:,} commands, {args.rounds} rounds, medians; python "
        f"{sys.version.split()[0]}, txredisapi {version('txredisapi')}, redis "
        f"{version('redis')}, hiredis {version('hiredis')}, twisted {version('twisted')}\n"
    )
    print("| operation | client | client µs/command | commands/s |")
    print("|---|---|---:|---:|")
    for (operation, client), runs in results.items():
        us = statistics.median(r["us_per_command"] for r in runs)
        rate = statistics.median(r["per_s"] for r in runs)
        print(f"| {operation} | {client} | {us:.1f} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
