"""Run roulette and its peers side by side; write the table, records and plot to docs/.

    python benchmarks/run.py                 # the full suite, 3 rounds
    python benchmarks/run.py --quick --out /tmp/bench   # a smoke run

Each server starts fresh for each scenario, pinned to CPU 0; the load
generator runs in this process, pinned to CPU 1.  The order of the servers
rotates every round.  Server CPU is read from /proc/PID/stat over the
measuring window, so figures are CPU-normalised: microseconds of server CPU
per message.  Server memory is VmRSS from /proc/PID/status, read when the
server is ready and at the end of the window.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402
import plot  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PYTHON = sys.executable
TWISTD = str(Path(PYTHON).with_name("twistd"))


def roulette_command(port: int, log: Path, twistd: str = TWISTD) -> list[str]:
    return [
        twistd, "-n", "--pidfile=", "--logfile", str(log), "roulette",
        "--port", f"tcp:{port}:interface=127.0.0.1:backlog=4096",
        # Abuse limits raised so that they do not throttle the load.
        "--message-rate", "1000000", "--message-burst", "1000000",
        "--max-per-ip", "1000000", "--connects-per-minute", "1000000",
        "--max-sockets-per-ip", "0",
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
#: Two processes of roulette sharing one pool through a redis-server of
#: their own (``--pool``): every chat of a relay scenario is across the two,
#: and the CPU of all three processes is counted.
POOL = "roulette-pool"
#: ``--workers`` adds these: ``twistd roulette --workers N`` (1 and 2) on one
#: port, sharing a redis-server of their own; nothing is pinned, and the CPU
#: of the redis-server, the supervisor and every worker is counted.
WORKERS = ("roulette-workers-1", "roulette-workers-2")
#: Whether servers and the load generator are pinned to a CPU each.
PIN = True
#: ``--compare TWISTD`` adds this server: another install of roulette.
COMPARED = "roulette-compared"
#: ``--metrics`` adds this server: roulette with ``--metrics``, scraped every
#: ``SCRAPE_INTERVAL`` seconds while it is measured (Prometheus scrapes every
#: 15 s by default: this is the cost at fifteen times that).
METRICS = "roulette-metrics"
SCRAPE_INTERVAL = 1.0


def compared_command(twistd: str) -> Callable[[int, Path], list[str]]:
    """``twistd roulette`` of another install (an earlier version, say), with
    the options of :func:`roulette_command` that it knows."""
    usage = subprocess.run(
        [twistd, "roulette", "--help"], capture_output=True, text=True, check=True
    ).stdout

    def command(port: int, log: Path) -> list[str]:
        full = roulette_command(port, log, twistd)
        start = full.index("roulette") + 1
        kept = full[:start]
        for option, value in zip(full[start::2], full[start + 1 :: 2], strict=True):
            if f"{option}=" in usage:
                kept += [option, value]
        return kept

    return command


@dataclass(frozen=True)
class Scenario:
    """``kind`` is saturated, paced (the latency sweep), storm, idle or hold
    (paced, for its memory)."""

    name: str
    kind: str
    connections: int
    inflight: int = 0
    rate: float = 0.0

    @property
    def offered(self) -> float:
        """Messages a second offered by a paced load."""
        return self.connections * self.rate

    @property
    def memory(self) -> bool:
        """Whether the scenario is there for the memory each connection takes."""
        return self.kind in ("idle", "hold")


def sweep(connections: int, rates: tuple[float, ...]) -> list[Scenario]:
    return [Scenario(f"chat-{connections}x{r:g}", "paced", connections, rate=r) for r in rates]


FULL = [
    Scenario("saturated-50", "saturated", 50, inflight=4),
    Scenario("saturated-500", "saturated", 500, inflight=4),
    Scenario("saturated-2000", "saturated", 2000, inflight=4),
    *sweep(2000, (1, 2, 5, 10, 20)),
    Scenario("storm-2000", "storm", 2000),
    Scenario("idle-10000", "idle", 10000),
    Scenario("hold-15000", "hold", 15000, rate=0.2),
]
QUICK = [
    Scenario("saturated-20", "saturated", 20, inflight=2),
    *sweep(40, (5, 20)),
    Scenario("storm-100", "storm", 100),
    Scenario("idle-200", "idle", 200),
    Scenario("hold-300", "hold", 300, rate=0.2),
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
    return PIN and shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(child) for child in f.read().split()]


class Server:
    """One server under test: its processes (all pinned to one CPU), the
    ports clients connect to, and the processes whose CPU is counted."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.processes: list[subprocess.Popen[bytes]] = []
        self.workers: list[int] = []
        self._scraping: threading.Event | None = None
        if name == POOL or name in WORKERS:
            redis_port = self.redis_port = free_port()
            self._start(
                ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", str(workdir)],
                redis_port, workdir,
            )  # fmt: skip
        if name in WORKERS:
            count = int(name.rpartition("-")[2])
            self.ports = [free_port()]
            command = roulette_command(self.ports[0], workdir / f"{name}.log")
            self._start(
                [*command, "--redis", f"redis://127.0.0.1:{redis_port}/0",
                 "--workers", str(count)],
                self.ports[0], workdir,
            )  # fmt: skip
            deadline = time.monotonic() + 30
            while len(self.workers) < count and time.monotonic() < deadline:
                time.sleep(0.1)
                self.workers = children(self.processes[-1].pid)
            # Until every worker has joined the pool, some refuse (503).
            time.sleep(1.5)
        elif name == POOL:
            self.ports = [free_port(), free_port()]
            for i, port in enumerate(self.ports):
                command = roulette_command(port, workdir / f"{name}-{i}.log")
                self._start(
                    [*command, "--redis", f"redis://127.0.0.1:{redis_port}/0"], port, workdir
                )
            # Until both have joined the pool, WebSockets are refused (503).
            time.sleep(1.0)
        elif name == METRICS:
            self.ports = [free_port()]
            metrics_port = free_port()
            command = roulette_command(self.ports[0], workdir / f"{name}.log")
            self._start(
                [*command, "--metrics", f"tcp:{metrics_port}:interface=127.0.0.1"],
                self.ports[0], workdir,
            )  # fmt: skip
            self._scraping = threading.Event()
            threading.Thread(
                target=scrape, args=(metrics_port, self._scraping), daemon=True
            ).start()
        else:
            self.ports = [free_port()]
            self._start(
                SERVERS[name](self.ports[0], workdir / f"{name}.log"), self.ports[0], workdir
            )
        self.port = self.ports[0]
        self.process = self.processes[-1]
        self.pids = [p.pid for p in self.processes] + self.workers

    def _start(self, command: list[str], port: int, workdir: Path) -> None:
        if pinned():
            command = ["taskset", "-c", "0", *command]
        self.processes.append(
            subprocess.Popen(
                command, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
            )
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"{self.name} did not start")

    def stop(self) -> None:
        if self._scraping is not None:
            self._scraping.set()
        for pid in self.workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for process in reversed(self.processes):
            process.kill()
            process.wait()


def scrape(port: int, stop: threading.Event) -> None:
    """GET /metrics every ``SCRAPE_INTERVAL`` seconds until ``stop`` is set."""
    while not stop.wait(SCRAPE_INTERVAL):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                r.read()
        except OSError as error:
            print(f"WARNING: scraping /metrics failed: {error}", file=sys.stderr, flush=True)


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
    #: Each process's share of ``server_cpu_s``, in the order they started
    #: (for the pool: redis-server, then the two nodes).
    server_cpu_split: list[float] = field(default_factory=list)
    opened: int = 0
    paired: int = 0
    errors: int = 0
    rss_empty_kib: int = 0
    rss_loaded_kib: int = 0
    kb_per_connection: float = 0.0


def percentile(values: list[int], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6


def measure(
    server: Server,
    scenario: Scenario,
    rnd: int,
    warmup: float,
    window: float,
    hook: Callable[[bool], None] | None = None,
) -> Result:
    """Run one scenario against a freshly started server.  The window opens
    and closes on the load generator's signal; server CPU and RSS are read
    at both ends, and ``hook`` (a profiler, say) is told after opening and
    before closing."""
    pids = server.pids
    result = Result(server.name, scenario.name, rnd, rss_empty_kib=sum(map(rss_kib, pids)))
    marks: dict[bool, tuple[float, float, float]] = {}
    each: dict[bool, list[float]] = {}

    def on_window(opening: bool) -> None:
        if hook is not None and not opening:
            hook(opening)
        each[opening] = [cpu_seconds(pid) for pid in pids]
        cpu = sum(each[opening])
        marks[opening] = (cpu, time.process_time(), time.perf_counter())
        if not opening:
            result.rss_loaded_kib = sum(map(rss_kib, pids))
        if hook is not None and opening:
            hook(opening)

    ports = server.ports
    address = ("127.0.0.1", ports if len(ports) > 1 else ports[0])
    n, echo = scenario.connections, server.name == BASELINE
    if scenario.kind == "saturated":
        load = loadgen.saturated(*address, n, scenario.inflight, warmup, window, echo, on_window)
    elif scenario.kind in ("paced", "hold"):
        load = loadgen.paced(*address, n, scenario.rate, warmup, window, echo, on_window)
    elif scenario.kind == "idle":  # the connections settle for the warm-up time
        load = loadgen.idle(*address, n, warmup, echo, on_window)
    else:
        load = loadgen.storm(*address, n, echo, on_window)
    totals = run_loop(load)

    (cpu0, gen0, t0), (cpu1, gen1, t1) = marks[True], marks[False]
    result.server_cpu_s = cpu1 - cpu0
    result.server_cpu_split = [
        round(b - a, 3) for a, b in zip(each[True], each[False], strict=True)
    ]
    result.opened, result.paired, result.errors = totals.opened, totals.paired, totals.errors
    if scenario.kind == "storm":
        result.connections_per_s = totals.paired / (t1 - t0)
        # For a storm, the latencies are each connection's time to be paired.
        result.p50_ms = percentile(totals.pairing_ns, 0.50)
        result.p99_ms = percentile(totals.pairing_ns, 0.99)
    if scenario.memory and totals.opened:
        result.kb_per_connection = (result.rss_loaded_kib - result.rss_empty_kib) / totals.opened
    if scenario.kind not in ("storm", "idle"):
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
    # The servers inherit the raised limit: they are started after this.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    needed = max(s.connections for s in scenarios) + 100
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SystemExit(f"RLIMIT_NOFILE is {hard}; these scenarios need {needed} descriptors")
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
                    if result.errors or result.paired < result.opened:
                        print(
                            f"WARNING: {name} {scenario.name}: {result.paired} of "
                            f"{scenario.connections} paired, {result.errors} connections failed",
                            file=sys.stderr,
                            flush=True,
                        )
                    results.append(result)
    return results


def ratio(result: Result, base: Result) -> float | None:
    """Against the baseline: server CPU per message, else connections a
    second (storms), else KB per connection (idle)."""
    for attr in ("server_cpu_us_per_msg", "connections_per_s", "kb_per_connection"):
        if getattr(base, attr) and getattr(result, attr):
            return getattr(result, attr) / getattr(base, attr)
    return None


def summarise(results: list[Result], servers: list[str]) -> list[dict[str, Any]]:
    """Medians over rounds, and the median of per-round ratios to the baseline."""
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
                if base and (value := ratio(r, base)) is not None:
                    ratios.append(value)
            medians = (
                "messages_per_s", "server_cpu_us_per_msg", "loadgen_cpu_us_per_msg", "p50_ms",
                "p99_ms", "connections_per_s", "rss_loaded_kib", "kb_per_connection",
            )  # fmt: skip
            rows.append(
                {
                    "scenario": scenario,
                    "server": name,
                    "rounds": len(mine),
                    **{a: statistics.median(getattr(r, a) for r in mine) for a in medians},
                    "ratio_to_baseline": statistics.median(ratios) if ratios else float("nan"),
                    # The worst round: one short of connections is a failure.
                    "paired": min(r.paired for r in mine),
                    "connections": max(r.opened + r.errors for r in mine),
                }
            )
    return rows


def run_loop(coroutine: Any) -> Any:
    """Run the load generator's ``coroutine`` on uvloop (the ``bench``
    extra), as every measured run does; a smoke run (``--quick``) without it
    uses plain asyncio."""
    try:
        import uvloop
    except ImportError:
        import asyncio

        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def versions() -> dict[str, str]:
    from importlib.metadata import version

    found = {"python": platform.python_version()}
    for package in ("twisted", "autobahn", "websockets", "uvloop", "roulette"):
        try:
            found[package] = version(package)
        except Exception:
            found[package] = "?"
    return found


def cell(value: float, spec: str) -> str:
    """A figure, or a dash where it does not apply."""
    return "-" if not value or math.isnan(value) else format(value, spec)


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    columns = (
        ("msg/s", "messages_per_s", ",.0f"),
        ("server µs/msg", "server_cpu_us_per_msg", ".1f"),
        ("ratio¹", "ratio_to_baseline", ".2f"),
        ("p50 ms³", "p50_ms", ".1f"),
        ("p99 ms³", "p99_ms", ".1f"),
        ("conn/s", "connections_per_s", ",.0f"),
        ("KB/conn²", "kb_per_connection", ".1f"),
        ("RSS MiB²", "rss_loaded_kib", ",.0f"),
        ("loadgen µs/msg", "loadgen_cpu_us_per_msg", ".1f"),
    )
    lines = [
        "| scenario | server | " + " | ".join(title for title, _, _ in columns) + " |",
        "|---|---|" + "---:|" * len(columns),
    ]
    for row in rows:
        server = row["server"]
        if row["paired"] < row["connections"]:
            server += f" (**{row['paired']:,} of {row['connections']:,} paired**)"
        row = {**row, "rss_loaded_kib": row["rss_loaded_kib"] / 1024}
        figures = " | ".join(cell(row[key], spec) for _, key, spec in columns)
        lines.append(f"| {row['scenario']} | {server} | {figures} |")
    head = (
        f"Measured {meta['date']} on {meta['machine']} ({meta['cpus']} CPUs, Linux "
        f"{meta['kernel']}), {meta['rounds']} rounds, {meta['window']} s windows; "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
        + ".\n\n¹ Median of per-round ratios to the bare Autobahn echo: server CPU per "
        "message (lower is better), connections per second for storms (higher is better), "
        "or KB per connection for idle connections (lower is better).\n"
        "² The server's resident memory (VmRSS) at the end of the window; KB/conn is its "
        "growth from the moment the server was ready, in KiB, divided by the connections "
        "held (idle and hold scenarios only).\n"
        "³ A chat message's one-way latency; for a storm, the time from a connection's "
        "TCP handshake to its paired event (the upgrade included).\n"
    )
    return head + "\n" + "\n".join(lines) + "\n"


def latency_plot(
    rows: list[dict[str, Any]], scenarios: list[Scenario], meta: dict[str, Any]
) -> str:
    """p99 against offered load over the paced scenarios, one line a server."""
    sweep = {s.name: s for s in scenarios if s.kind == "paced"}
    series: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        if row["scenario"] in sweep:
            point = (sweep[row["scenario"]].offered, row["p99_ms"])
            series.setdefault(row["server"], []).append(point)
    connections = sorted({s.connections for s in sweep.values()})
    subtitle = (
        f"{' and '.join(f'{n:,}' for n in connections)} connections, each sending at a steady "
        f"rate; server on one core of {meta['machine']}, {meta['date']}"
    )
    return plot.latency_svg(series, "p99 latency against offered load", subtitle)


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=float, default=5.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument(
        "--compare",
        metavar="TWISTD",
        help=f"also measure the roulette of this twistd (another install) as {COMPARED!r}",
    )
    parser.add_argument(
        "--pool",
        action="store_true",
        help=f"also measure {POOL!r}: two processes sharing a redis-server, chats across them",
    )
    parser.add_argument(
        "--workers",
        action="store_true",
        help=f"also measure {' and '.join(WORKERS)} (one port, a redis-server; nothing pinned)",
    )
    parser.add_argument(
        "--metrics",
        action="store_true",
        help=f"also measure {METRICS!r}: roulette with --metrics, scraped every "
        f"{SCRAPE_INTERVAL:g} s",
    )
    parser.add_argument("--scenarios", default="", help="comma-separated names")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    scenarios = QUICK if args.quick else FULL
    if args.scenarios:
        wanted = set(args.scenarios.split(","))
        scenarios = [s for s in scenarios if s.name in wanted]
    if args.quick:
        args.rounds, args.window, args.warmup = 1, 0.5, 0.25
    if not args.quick and importlib.util.find_spec("uvloop") is None:
        sys.exit("uvloop is not installed: pip install -e '.[bench]' (--quick runs without)")
    servers = args.servers.split(",")
    if args.compare:
        SERVERS[COMPARED] = compared_command(args.compare)
        servers.insert(servers.index("roulette") + 1 if "roulette" in servers else 0, COMPARED)
    if args.metrics:
        servers.insert(servers.index("roulette") + 1 if "roulette" in servers else 0, METRICS)
    if args.pool:
        servers.insert(servers.index("roulette") + 1 if "roulette" in servers else 0, POOL)
    if args.workers:
        global PIN
        PIN = False
        servers += WORKERS
    results = run(scenarios, args.rounds, args.warmup, args.window, servers)
    rows = summarise(results, servers)
    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": cpu_model(),
        "arch": platform.machine(),
        "kernel": platform.release(),
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
    (args.out / "performance-latency.svg").write_text(latency_plot(rows, scenarios, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
