"""`make bench` runs: one short round of every benchmark (figures are not checked here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.procs import REPO_ROOT, service_env


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_every_benchmark_runs_and_reports(tmp_path: Path):
    out = tmp_path / "benchmarks.md"
    run = subprocess.run([sys.executable, "-m", "tests.bench", "--quick", "--out", str(out)],
                         cwd=REPO_ROOT, env=service_env({}), capture_output=True, text=True,
                         timeout=560)
    assert run.returncode == 0, run.stderr[-3000:]
    text = out.read_text()
    for title in ("Detection under a frozen neighbour", "Detection latency", "Probe throughput",
                  "Pipeline latency", "Fold throughput", "Scale of the inventory",
                  "Several probers", "WebSocket fan-out", "Dashboard in a browser"):
        assert f"### {title}" in text, title
    assert "of the bare loop" in text
