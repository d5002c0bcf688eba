"""``make airflow-stop``: signals the launcher named in the pid file and returns once it has exited."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

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
