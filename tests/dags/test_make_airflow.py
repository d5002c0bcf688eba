"""``make airflow``'s launcher, run as a person runs it: every shipped audience's scheduled run succeeds.

Starts ``include/sandbox/airflow_local.py`` (what ``make airflow`` calls) with its own Airflow home and
demo directory on a free port, on the embedded default (SQLite metadata, SQLite state database). The
scheduler creates one scheduled run per shipped audience as soon as the DAGs are parsed, all at once,
so parallel tasks share the SQLite state file. A triggered ``data_out_operations`` run starts at once
(not paused). Then SIGINT, as Ctrl-C sends, and every process the launcher started must be gone within
the bound. Its output must show no library deprecation warning.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest

from data_out.config import load_audiences
from sandbox.airflow_processes import clean_environ, free_port, session_pids, wait_for

pytestmark = [pytest.mark.airflow]

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = ROOT / "include" / "sandbox" / "airflow_local.py"
READY_TIMEOUT = 300  # fresh metadata DB migration (SQLite) and start-up on two shared cores
RUNS_TIMEOUT = 300  # every audience's first scheduled run, in parallel
STOP_BOUND = 60  # SIGINT to the launcher's exit, every child gone


class Api:
    """The REST API as a signed-in user (the simple auth manager's generated admin password)."""

    def __init__(self, base: str, password: str) -> None:
        self.base = base
        body = json.dumps({"username": "admin", "password": password}).encode()
        req = urllib.request.Request(
            f"{base}/auth/token", data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback
            self.token = json.loads(resp.read())["access_token"]

    def call(self, path: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(
            f"{self.base}{path}",
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
            method="POST" if body is not None else "GET",
        )
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback
            return json.loads(resp.read())

    def runs(self, dag_id: str) -> list[dict]:
        return self.call(f"/api/v2/dags/{dag_id}/dagRuns?limit=50")["dag_runs"]

    def failed_tasks(self, dag_id: str, run_id: str) -> dict[str, str]:
        tis = self.call(f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances")["task_instances"]
        return {t["task_id"]: t["state"] for t in tis if t["state"] in {"failed", "up_for_retry", "upstream_failed"}}


def task_errors(task_logs: Path, dag_id: str, run_id: str) -> list[str]:
    """The exceptions recorded in a run's task logs, for the failure message."""
    errors = []
    for path in (task_logs / f"dag_id={dag_id}" / f"run_id={run_id}").glob("**/*.log"):
        for line in path.read_text(errors="replace").splitlines():
            if '"exc_value"' in line:
                errors.append(f"{path.parent.name}: {json.loads(line)['error_detail'][0]['exc_value'][:600]}")
    return errors


def all_audiences_done(api: Api, dag_ids: list[str], task_logs: Path) -> dict[str, str] | None:
    """Each audience's scheduled (or asset-triggered) run state once all have finished; raises at the
    first failed task."""
    states = {}
    for dag_id in dag_ids:
        # on a cron schedule: "scheduled"; on an Asset (asset:message_metrics): "asset_triggered"
        scheduled = [r for r in api.runs(dag_id) if r["run_type"] in {"scheduled", "asset_triggered"}]
        for run in scheduled:
            failed = api.failed_tasks(dag_id, run["dag_run_id"])
            assert not failed, (
                f"{dag_id} {run['dag_run_id']}: {failed}: {task_errors(task_logs, dag_id, run['dag_run_id'])}"
            )
        if not scheduled or scheduled[-1]["state"] not in {"success", "failed"}:
            return None
        states[dag_id] = scheduled[-1]["state"]
    return states


def test_make_airflow_runs_every_audience_and_stops_everything(tmp_path: Path) -> None:
    port = free_port()
    demo_dir, home = tmp_path / "demo", tmp_path / "airflow"
    out = tmp_path / "launcher.out"
    env = clean_environ({"PYTHONPATH": f"{ROOT / 'plugins'}:{ROOT / 'include'}"})
    env.pop("PYTHONWARNINGS", None)  # the launcher must bring its own filters
    cmd = [sys.executable, str(LAUNCHER), "--port", str(port), "--demo-dir", str(demo_dir), "--home", str(home)]
    with out.open("wb") as sink:
        launcher = subprocess.Popen(
            [*cmd, "--people", "3000"], env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    pids: dict[str, int] = {}
    timings: dict[str, float] = {}
    try:
        t0 = time.monotonic()

        def ready() -> bool:
            assert launcher.poll() is None, f"the launcher exited ({launcher.returncode}):\n{out.read_text()}"
            return "Airflow is up" in out.read_text()

        wait_for("make airflow to be up", ready, READY_TIMEOUT, 1.0)
        timings["start-up"] = time.monotonic() - t0
        pids = json.loads((demo_dir / "airflow-status.json").read_text())
        assert set(pids) == {"api-server", "scheduler", "dag-processor", "triggerer"}
        text = out.read_text()
        assert f"http://127.0.0.1:{port}" in text and "sign in as admin" in text
        password = json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())["admin"]
        assert repr(password) in text  # the printed password is the one that signs in
        api = Api(f"http://127.0.0.1:{port}", password)

        audience_dags = sorted(f"audience__{n}" for n in load_audiences().audiences)
        assert len(audience_dags) >= 8
        t0 = time.monotonic()
        states = wait_for(
            "every audience's scheduled run",
            lambda: all_audiences_done(api, audience_dags, home / "logs"),
            RUNS_TIMEOUT,
            2.0,
        )
        timings["all audiences' scheduled runs"] = time.monotonic() - t0
        assert states == dict.fromkeys(audience_dags, "success"), states

        # operations is triggered-only: a triggered run starts at once, nothing paused holds it in queued
        run = api.call(
            "/api/v2/dags/data_out_operations/dagRuns",
            {"logical_date": None, "conf": {"audiences": ["lapsed_75d_v1"], "dry_run": True}},
        )

        def operations_done() -> str | None:
            state = api.call(f"/api/v2/dags/data_out_operations/dagRuns/{quote(run['dag_run_id'], safe='')}")["state"]
            return state if state in {"success", "failed"} else None

        assert wait_for("the triggered operations run", operations_done, 120, 1.0) == "success"
    finally:
        t0 = time.monotonic()
        if launcher.poll() is None:
            os.kill(launcher.pid, signal.SIGINT)  # what Ctrl-C sends
        try:
            code = launcher.wait(STOP_BOUND)
        except subprocess.TimeoutExpired:
            os.killpg(launcher.pid, signal.SIGKILL)
            code = None
        timings["stop"] = time.monotonic() - t0
        left = {name: session_pids(pid) for name, pid in pids.items()}
        for stray in left.values():  # never leave anything behind, even when the test failed
            for pid in stray:
                os.kill(pid, signal.SIGKILL)
        print(f"\nmake airflow timings: {', '.join(f'{k} {v:.1f}s' for k, v in timings.items())}")
        print(out.read_text()[-3000:])

    assert code == 0, out.read_text()[-4000:]
    assert not any(left.values()), f"processes left after the launcher stopped: {left}"
    assert timings["stop"] < STOP_BOUND
    assert "stopped every Airflow process" in out.read_text()
    assert "Deprecat" not in out.read_text()
    noisy = [p.name for p in (demo_dir / "airflow-logs").glob("*.log") if "Deprecat" in p.read_text(errors="replace")]
    assert not noisy, f"deprecation warnings in the components' logs: {noisy}"
    assert not (demo_dir / "airflow.pid").exists()
