"""SIGKILL the sync process at many points, rerun it, and check the destination is exactly right.

Each case: a first full sync, a change of membership (joins, leaves, an email change), a run killed
with SIGKILL at one point (no exception handling, no cleanup, the lease left held), then a rerun of the
same Airflow-run identity (as a task retry does). Afterwards the Meta stand-in must hold exactly the
desired members minus the holdout. The stand-in ignores ``Idempotency-Key`` as Meta does: a batch the
killed run had pushed but not committed is pushed and applied again by the retry, and Meta's set
semantics (adding a member twice is harmless, removing twice too) are what keep the result exact.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from data_out import state
from data_out.connections import ConnectionInfo, engine_for
from data_out.engine.holdout import is_held_out
from data_out.state import ensure_schema
from sandbox.standins.base import Running
from sandbox.standins.meta import MetaStandIn
from tests.conftest import People, write_audience
from tests.data_out.destinations.cases import CASES

CHILD = Path(__file__).with_name("crash_child.py")
KILL_POINTS = [
    "stage.batch:1",
    "stage.batch:3",
    "stage.merge:1",
    "plan.written:1",
    "push.before:1",
    "push.before:3",
    "push.accepted:1",
    "push.accepted:2",
    "push.accepted:4",
    "push.committed:1",
    "push.committed:3",
]
ident = CASES["meta"].ident


def rows_before() -> list[dict]:
    return [{"customer_id": f"c{i:03d}", "email": f"p{i}@example.com"} for i in range(30)]


def rows_after() -> list[dict]:
    rows = [r for r in rows_before() if r["customer_id"] not in {"c001", "c002", "c003", "c004"}]
    rows += [{"customer_id": f"n{i:03d}", "email": f"new{i}@example.com"} for i in range(6)]
    for r in rows:
        if r["customer_id"] in {"c010", "c011"}:
            r["email"] = f"changed.{r['customer_id']}@example.com"
    return rows


def run_child(tmp: Path, url: str, kill_at: str | None, mode: str = "run") -> int:
    env = {k: v for k, v in os.environ.items() if k != "DATA_OUT_KILL_AT"}
    if kill_at:
        env["DATA_OUT_KILL_AT"] = kill_at
    proc = subprocess.run(
        [sys.executable, str(CHILD), str(tmp / "db.sqlite"), str(tmp / "aud"), url, "dag/run-1", mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if kill_at is None:
        assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.returncode


def crash_and_rerun(tmp_path: Path, kill_at: str, mode: str = "run") -> Engine:
    """First sync, membership change, a run killed at ``kill_at``, its retry; then check the destination."""
    engine = engine_for(ConnectionInfo("db", "sqlite", host=str(tmp_path / "db.sqlite")))
    ensure_schema(engine)
    people = People(engine)
    write_audience(
        tmp_path / "aud",
        "crash_test_v1",
        """
        name: crash_test_v1
        owner: tests
        purpose: crash consistency
        source: {conn_id: db, query: "SELECT customer_id, email, phone FROM people"}
        holdout: {percent: 10, salt: crash-salt}
        destinations: [{type: meta, audience_id: "9", batch_size: 4}]
        guard: {max_removal_share: 1}
    """,
    )
    standin = MetaStandIn()
    with Running(standin) as running:
        people.set(rows_before())
        run_child(tmp_path, running.url, None, mode)
        people.set(rows_after())
        code = run_child(tmp_path, running.url, kill_at, mode)
        assert code == -signal.SIGKILL, f"the process was not killed at {kill_at} (exit {code})"
        run_child(tmp_path, running.url, None, mode)  # the retry of the same Airflow run
        held = set(standin.audiences["9"])
        applied = dict(standin.applied)
    want = {ident(r) for r in rows_after() if not is_held_out("crash-salt", r["customer_id"], 10)}
    assert held == want
    if kill_at.startswith("push.accepted"):  # the batch applied before the kill really was applied again
        assert max(applied.values()) == 2
    return engine


@pytest.mark.parametrize("kill_at", KILL_POINTS)
def test_killed_anywhere_then_rerun_converges_exactly_once(tmp_path: Path, kill_at: str):
    crash_and_rerun(tmp_path, kill_at)


@pytest.mark.parametrize(
    ("kill_at", "seed"),
    [("push.before:2", 1), ("push.accepted:1", 2), ("push.accepted:3", 3), ("push.committed:2", 4)],
)
def test_a_push_shard_killed_then_retried_converges_exactly_once(tmp_path: Path, kill_at: str, seed: int):
    """The diff is pushed as parallel mapped shards (here one after another, in a shuffled order); the
    worker of one shard dies mid-push; Airflow retries that shard and runs the rest."""
    engine = crash_and_rerun(tmp_path, kill_at, f"sharded:{seed}")
    with engine.connect() as conn:
        syncs = conn.execute(select(state.sync.c.status, state.sync.c.shards).order_by(state.sync.c.id)).all()
    assert syncs[-1] == ("success", 4)  # the change of membership (14 rows) really went out in 4 shards
