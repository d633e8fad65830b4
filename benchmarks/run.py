"""Run roulette and its peers side by side and write docs/performance.md.

    python benchmarks/run.py                 # the full suite, 3 rounds
    python benchmarks/run.py --quick --out /tmp/bench   # a smoke run

Each server starts fresh for each scenario, pinned to CPU 0; the load
generator runs in this process, pinned to CPU 1.  The order of the servers
rotates every round.  Server CPU is read from /proc/PID/stat over the
measuring window, so figures are CPU-normalised: microseconds of server CPU
per message.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PYTHON = sys.executable
TWISTD = str(Path(PYTHON).with_name("twistd"))


def roulette_command(port: int, log: Path) -> list[str]:
    return [
        TWISTD, "-n", "--pidfile=", "--logfile", str(log), "roulette",
        "--port", f"tcp:{port}:interface=127.0.0.1:backlog=4096",
        # Abuse limits raised so that they do not throttle the load.
        "--message-rate", "1000000", "--message-burst", "1000000",
        "--max-per-ip", "1000000", "--connects-per-minute", "1000000",
        "--repair-cooldown", "0",
    ]  # fmt: skip


SERVERS: dict[str, Callable[[int, Path], list[str]]] = {
    "roulette": roulette_command,
    "autobahn-echo": lambda port, log: [
        PYTHON, str(HERE / "peers" / "echo_autobahn.py"), str(port)
    ],
    "websockets-relay": lambda port, log: [
        PYTHON, str(HERE / "peers" / "relay_websockets.py"), str(port)
    ],
}  # fmt: skip
BASELINE = "autobahn-echo"


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # saturated, paced or storm
    connections: int
    inflight: int = 0
    rate: float = 0.0


FULL = [
    Scenario("saturated-50", "saturated", 50, inflight=4),
    Scenario("saturated-500", "saturated", 500, inflight=4),
    Scenario("saturated-2000", "saturated", 2000, inflight=4),
    Scenario("chat-2000x2", "paced", 2000, rate=2),
    Scenario("chat-2000x5", "paced", 2000, rate=5),
    Scenario("storm-2000", "storm", 2000),
]
QUICK = [
    Scenario("saturated-20", "saturated", 20, inflight=2),
    Scenario("chat-40x5", "paced", 40, rate=5),
    Scenario("storm-100", "storm", 100),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pinned() -> bool:
    return shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


class Server:
    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.port = free_port()
        command = SERVERS[name](self.port, workdir / f"{name}.log")
        if pinned():
            command = ["taskset", "-c", "0", *command]
        self.process = subprocess.Popen(
            command, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{name} did not start")

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


@dataclass
class Result:
    server: str
    scenario: str
    round: int
    messages: int = 0
    messages_per_s: float = 0.0
    server_cpu_us_per_msg: float = 0.0
    loadgen_cpu_us_per_msg: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    connections_per_s: float = 0.0
    server_cpu_s: float = 0.0


def percentile(values: list[int], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6


def measure(server: Server, scenario: Scenario, rnd: int, warmup: float, window: float) -> Result:
    import uvloop

    echo = server.name == BASELINE
    marks: dict[bool, tuple[float, float, float]] = {}

    def on_window(opening: bool) -> None:
        marks[opening] = (cpu_seconds(server.process.pid), time.process_time(), time.perf_counter())

    result = Result(server.name, scenario.name, rnd)
    if scenario.kind in ("saturated", "paced"):
        # Messages in flight per connection, or messages a second per connection.
        load, per_connection = (
            (loadgen.saturated, scenario.inflight)
            if scenario.kind == "saturated"
            else (loadgen.paced, scenario.rate)
        )
        totals = uvloop.run(
            load(
                "127.0.0.1", server.port, scenario.connections, per_connection,
                warmup, window, echo, on_window,
            )
        )  # fmt: skip
    else:
        elapsed, totals = uvloop.run(
            loadgen.storm("127.0.0.1", server.port, scenario.connections, echo, on_window)
        )
        result.connections_per_s = scenario.connections / elapsed
    (cpu0, gen0, t0), (cpu1, gen1, t1) = marks[True], marks[False]
    result.server_cpu_s = cpu1 - cpu0
    if scenario.kind != "storm":
        result.messages = totals.received
        result.messages_per_s = totals.received / (t1 - t0)
        if totals.received:
            result.server_cpu_us_per_msg = (cpu1 - cpu0) / totals.received * 1e6
            result.loadgen_cpu_us_per_msg = (gen1 - gen0) / totals.received * 1e6
        result.p50_ms = percentile(totals.latencies_ns, 0.50)
        result.p99_ms = percentile(totals.latencies_ns, 0.99)
    return result


def run(scenarios: list[Scenario], rounds: int, warmup: float, window: float,
        servers: list[str]) -> list[Result]:  # fmt: skip
    if pinned():
        os.sched_setaffinity(0, {1})
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    results = []
    with tempfile.TemporaryDirectory(prefix="roulette-bench-") as tmp:
        for rnd in range(rounds):
            order = servers[rnd % len(servers) :] + servers[: rnd % len(servers)]
            for scenario in scenarios:
                for name in order:
                    server = Server(name, Path(tmp))
                    try:
                        result = measure(server, scenario, rnd, warmup, window)
                    finally:
                        server.stop()
                    print(json.dumps(asdict(result)), flush=True)
                    results.append(result)
    return results


def summarise(results: list[Result], servers: list[str]) -> list[dict[str, Any]]:
    """Medians over rounds, and the median of per-round CPU ratios to the baseline."""
    rows = []
    scenarios = list(dict.fromkeys(r.scenario for r in results))
    for scenario in scenarios:
        for name in servers:
            mine = [r for r in results if r.scenario == scenario and r.server == name]
            if not mine:
                continue
            ratios = []
            for r in mine:
                base = next(
                    (b for b in results if b.scenario == scenario and b.server == BASELINE
                     and b.round == r.round),
                    None,
                )  # fmt: skip
                if base and base.server_cpu_us_per_msg and r.server_cpu_us_per_msg:
                    ratios.append(r.server_cpu_us_per_msg / base.server_cpu_us_per_msg)
                elif base and base.connections_per_s and r.connections_per_s:
                    ratios.append(r.connections_per_s / base.connections_per_s)

            def med(attr: str, rows: list[Result] = mine) -> float:
                return statistics.median(getattr(r, attr) for r in rows)

            rows.append(
                {
                    "scenario": scenario,
                    "server": name,
                    "rounds": len(mine),
                    "messages_per_s": med("messages_per_s"),
                    "server_cpu_us_per_msg": med("server_cpu_us_per_msg"),
                    "loadgen_cpu_us_per_msg": med("loadgen_cpu_us_per_msg"),
                    "p50_ms": med("p50_ms"),
                    "p99_ms": med("p99_ms"),
                    "connections_per_s": med("connections_per_s"),
                    "ratio_to_baseline": statistics.median(ratios) if ratios else float("nan"),
                }
            )
    return rows


def versions() -> dict[str, str]:
    from importlib.metadata import version

    found = {"python": platform.python_version()}
    for package in ("twisted", "autobahn", "websockets", "uvloop", "roulette"):
        try:
            found[package] = version(package)
        except Exception:
            found[package] = "?"
    return found


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "| scenario | server | msg/s | server µs/msg | ratio¹ | p50 ms | p99 ms | conn/s "
        "| loadgen µs/msg |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for row in rows:
        lines.append(
            "| {scenario} | {server} | {messages_per_s:,.0f} | {server_cpu_us_per_msg:.1f} | "
            "{ratio_to_baseline:.2f} | {p50_ms:.1f} | {p99_ms:.1f} | {connections_per_s:,.0f} | "
            "{loadgen_cpu_us_per_msg:.1f} |".format(**row)
        )
    head = (
        f"Measured {meta['date']} on {meta['machine']} ({meta['cpus']} CPUs), "
        f"{meta['rounds']} rounds, {meta['window']} s windows; "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
        + ".\n\n¹ Median of per-round ratios to the bare Autobahn echo: server CPU per "
        "message (lower is better), or connections per second for storms (higher is better).\n"
    )
    return head + "\n" + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=float, default=5.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--scenarios", default="", help="comma-separated names")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    scenarios = QUICK if args.quick else FULL
    if args.scenarios:
        wanted = set(args.scenarios.split(","))
        scenarios = [s for s in scenarios if s.name in wanted]
    if args.quick:
        args.rounds, args.window, args.warmup = 1, 1.0, 0.5
    servers = args.servers.split(",")
    results = run(scenarios, args.rounds, args.warmup, args.window, servers)
    rows = summarise(results, servers)
    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "rounds": args.rounds,
        "window": args.window,
        "pinned": pinned(),
        "versions": versions(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "performance.jsonl", "a") as f:
        for r in results:
            f.write(json.dumps({**asdict(r), **meta}) + "\n")
    (args.out / "performance-table.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
