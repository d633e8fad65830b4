"""A smoke run of the benchmark suite, so that it cannot rot.  It checks that
every server was measured, not how fast it was."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
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

    def measured(scenario: str) -> list[dict]:
        found = {r["server"]: r for r in records if r["scenario"] == scenario}
        assert set(found) == servers
        return list(found.values())

    for scenario in ("saturated-20", "chat-40x5", "chat-40x20", "hold-300"):
        for record in measured(scenario):
            assert record["messages"] > 0
            # CPU time is read in clock ticks (10 ms): a quick run of a few
            # hundred messages may cost less than one.
            assert record["server_cpu_us_per_msg"] >= 0
            assert record["p99_ms"] >= record["p50_ms"] > 0
    assert all(r["server_cpu_us_per_msg"] > 0 for r in measured("saturated-20"))
    assert all(r["connections_per_s"] > 0 for r in measured("storm-100"))
    for scenario in ("idle-200", "hold-300"):
        for record in measured(scenario):
            assert record["paired"] == record["opened"] == int(scenario.split("-")[1])
            assert record["errors"] == 0
            assert record["kb_per_connection"] > 0
    table = (tmp_path / "performance-table.md").read_text()
    assert "| saturated-20 | roulette |" in table
    assert "| idle-200 | roulette |" in table
    plot = ET.parse(tmp_path / "performance-latency.svg").getroot()
    assert plot.tag == "{http://www.w3.org/2000/svg}svg"
    # One line a server through the two points of the quick sweep.
    lines = plot.findall("{http://www.w3.org/2000/svg}polyline")
    assert [len(line.get("points", "").split()) for line in lines] == [2, 2, 2]
