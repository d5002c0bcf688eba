"""The Customer.io benchmark runs end to end (at a tiny N) and ends with the one line its readers parse."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# 2,500 people in pages of 1,000: three membership pages and the customer_count request, 0.4 s at 10/s
LINE = re.compile(
    r"^bench-customerio: members=2500 pages=4 rate=10 floor_s=0\.40 elapsed_s=[\d.]+ ratio=[\d.]+x "
    r"rss_start_mb=\d+ rss_peak_mb=\d+$"
)


def test_bench_runs_and_prints_its_line():
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'plugins'}:{ROOT / 'include'}"}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.customerio", "--members", "2500", "--page-size", "1000"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert LINE.match(lines[-1]), lines[-1]
    assert "4 requests sent, 0 answered 429" in proc.stdout
