"""Running a benchmark module as ``make`` does, at a tiny N, for the tests of its output."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_bench(module: str, *args: str, line: re.Pattern[str], timeout: float) -> str:
    """Run ``python -m module args``; assert it succeeds and ends with ``line``. Returns its output."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'plugins'}:{ROOT / 'include'}"}
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert line.match(lines[-1]), lines[-1]
    return "\n".join(lines)
