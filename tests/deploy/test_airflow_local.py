"""The launcher's small parts: ``make airflow-stop``, and which DAGs a launch unpauses."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path

from data_out.config import load_audiences
from sandbox import airflow_local

#: a stand-in for the launcher: exits cleanly on SIGTERM (as the launcher does after stopping Airflow)
SLEEPER = (
    "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); "
    "print('up', flush=True); time.sleep(300)"
)


def test_stop_signals_the_launcher_and_waits_for_it(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", SLEEPER], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "up"  # its handler is installed
        # reap it as soon as it exits, as its real parent (the shell running make) does; a zombie would
        # still answer kill(pid, 0)
        threading.Thread(target=proc.wait, daemon=True).start()
        (tmp_path / airflow_local.PID_FILE).write_text(str(proc.pid))
        assert airflow_local.stop_running(tmp_path, timeout=30) == 0
        assert proc.poll() == 0  # it had already exited, cleanly, when stop returned
    finally:
        proc.kill()
        proc.wait()


def test_stop_without_a_running_launcher_says_so(tmp_path: Path, capsys) -> None:
    assert airflow_local.stop_running(tmp_path) == 0
    assert "no running `make airflow`" in capsys.readouterr().out


def test_a_launch_unpauses_the_platform_dags_and_the_active_audiences_only() -> None:
    """A home that ``make demo`` used holds the platform DAGs paused (paused at creation there); a
    launch unpauses them and the active audiences, and leaves an audience whose status is paused alone."""
    statuses = {name: a.config.status for name, a in load_audiences().audiences.items()}
    statuses["parked_v1"] = "paused"
    pattern = re.compile(airflow_local.unpause_pattern(statuses))
    platform = ["data_out_operations", "data_out_reconciliation", "data_out_message_metrics", "data_out_lifecycle"]
    active = [f"audience__{n}" for n, s in statuses.items() if s == "active"]
    assert active and all(pattern.match(d) for d in platform + active)
    assert not pattern.match("audience__parked_v1")
    assert not pattern.match(f"{active[0]}_old")  # whole ids only
