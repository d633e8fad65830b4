"""A smoke run of the benchmark suite, so that it cannot rot.  It checks that
every server was measured, not how fast it was."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_benchmark_smoke_run(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(tmp_path)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    records = [
        json.loads(line) for line in (tmp_path / "performance.jsonl").read_text().splitlines()
    ]
    servers = {"roulette", "autobahn-echo", "websockets-relay"}
    for scenario in ("saturated-20", "chat-40x5"):
        measured = {r["server"]: r for r in records if r["scenario"] == scenario}
        assert set(measured) == servers
        for record in measured.values():
            assert record["messages"] > 0
            assert record["server_cpu_us_per_msg"] > 0
            assert record["p99_ms"] >= record["p50_ms"] > 0
    storms = {r["server"]: r for r in records if r["scenario"] == "storm-100"}
    assert set(storms) == servers
    assert all(r["connections_per_s"] > 0 for r in storms.values())
    table = (tmp_path / "performance-table.md").read_text()
    assert "| saturated-20 | roulette |" in table
