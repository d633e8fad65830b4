"""Profile one server under one scenario with py-spy, over the measuring window.

    python benchmarks/profile_server.py roulette chat-2000x2 --out docs/profiles/chat.txt.gz

The server and the load are those of ``run.py`` (same pinning, same
scenarios); py-spy attaches to the server when the window opens and stops
when it closes.  It writes the samples as collapsed stacks, gzipped when
``--out`` ends in ``.gz`` (open them in speedscope, or feed them to
flamegraph.pl), and prints the functions that take
the most time, by their own time and with what they call.  Attaching needs
ptrace rights over the server (root, or ``kernel.yama.ptrace_scope=0``).

To profile an older roulette, put its checkout first on the path:
``git worktree add /tmp/old <commit>`` then ``PYTHONPATH=/tmp/old python
benchmarks/profile_server.py ...``.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import run

PY_SPY = shutil.which(
    "py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
)


def top(collapsed: Path, count: int) -> str:
    """The heaviest functions of a collapsed-stack file: own time, then total."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        weight = int(n)
        samples += weight
        # "function (path/to/file.py:123)" -> "function (file.py)"
        frames = [re.sub(r" \((?:.*/)?([^/:]+)(?::\d+)?\)$", r" (\1)", f) for f in stack.split(";")]
        own[frames[-1]] += weight
        for frame in set(frames):
            total[frame] += weight
    lines = [f"{samples} samples", "", "| own | total | function |", "|---:|---:|---|"]
    for frame, n in own.most_common(count):
        lines.append(
            f"| {100 * n / samples:.1f}% | {100 * total[frame] / samples:.1f}% | `{frame}` |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("server", choices=sorted([*run.SERVERS, run.POOL]))
    parser.add_argument("scenario", help="a scenario of run.py's full suite")
    parser.add_argument("--out", type=Path, required=True, help="collapsed stacks go here")
    parser.add_argument("--window", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rate", type=int, default=250, help="samples a second")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    if PY_SPY is None:
        sys.exit("py-spy is not installed (pip install -e '.[bench]')")
    scenario = next((s for s in run.FULL if s.name == args.scenario), None)
    if scenario is None:
        sys.exit(f"no scenario {args.scenario!r}; try one of {[s.name for s in run.FULL]}")
    if run.pinned():
        os.sched_setaffinity(0, {1})
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    gzipped = args.out.suffix == ".gz"
    raw = args.out.with_suffix("") if gzipped else args.out
    spy: list[subprocess.Popen[bytes]] = []

    def on_window(server: run.Server, opening: bool) -> None:
        if opening:
            command = [PY_SPY, "record", "--pid", str(server.process.pid), "--rate",
                       str(args.rate), "--format", "raw", "--output", str(raw),
                       "--nonblocking"]  # fmt: skip
            spy.append(subprocess.Popen(command, stdout=subprocess.DEVNULL))
        else:
            spy[-1].send_signal(signal.SIGINT)
            spy[-1].wait()

    with tempfile.TemporaryDirectory(prefix="roulette-profile-") as tmp:
        server = run.Server(args.server, Path(tmp))
        try:
            result = run.measure(
                server, scenario, 0, args.warmup, args.window,
                hook=lambda opening: on_window(server, opening),
            )  # fmt: skip
        finally:
            server.stop()
    print(f"{args.server} {args.scenario}: {result}")
    print(top(raw, args.top))
    if gzipped:
        args.out.write_bytes(gzip.compress(raw.read_bytes(), 9))
        raw.unlink()


if __name__ == "__main__":
    main()
