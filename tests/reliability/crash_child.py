"""One audience run in its own process, so a test can SIGKILL it (``DATA_OUT_KILL_AT``) and run it again.

python crash_child.py <state.db> <audiences dir> <meta url> <holder> [run | sharded:<seed>]

``<state.db>`` is a SQLite file, or a Postgres connection as JSON (``tests.conftest.airflow_conn``); on
Postgres the source lives in the state database too, so staging takes the in-database path, which
here commits its progress after every batch of 7 rows.

``run`` (the default) runs every step in one process. With ``DATA_OUT_COUNT_NORMALISED=<file>`` the
process appends a line to that file for every row it normalises (a killed process keeps its count).
``sharded:7`` plans one push shard per four rows and pushes the shards one by one in an order
shuffled with that seed, as Airflow's mapped push tasks might run; started again after a crash it
does what Airflow's retries do: the killed shard and the shards that never ran are pushed with the
sync the plan task recorded (finished shards are not run again), then the run finishes.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT / "include")]

from sqlalchemy import select  # noqa: E402

from data_out import state  # noqa: E402
from data_out.config import load_audiences  # noqa: E402
from data_out.connections import ConnectionInfo, engine_for  # noqa: E402
from data_out.engine import shards, stage_sql  # noqa: E402
from data_out.engine.runner import AudienceRunner  # noqa: E402
from data_out.normalise import Normaliser  # noqa: E402
from data_out.state import ensure_schema  # noqa: E402


def sharded(runner: AudienceRunner, holder: str, seed: int, as_of: dt.datetime) -> None:
    """One DAG run with mapped push shards: stage, plan, push the shards in a shuffled order, finish."""
    s, r = state.sync, state.run
    with runner.engine.connect() as conn:
        unfinished = conn.execute(
            select(r.c.id, s.c.id, s.c.shards, s.c.shards_done)
            .join(s, s.c.run_id == r.c.id)
            .where(r.c.dag_run_id == holder, r.c.status == "running", s.c.status.in_(["planned", "failed"]))
            .order_by(s.c.id.desc())
            .limit(1)
        ).first()
    if unfinished is None:  # the first attempt, or a crash before the plan was recorded: (re)run the tasks
        run_id = runner.start(holder, as_of)
        runner.stage(run_id, holder)
        plan = runner.plan(run_id, "meta", holder)
        sync_id, n, done = plan.sync_id, plan.shards, 0
    else:  # Airflow retries the killed shard and runs the ones that never started
        run_id, sync_id, n, done = unfinished
    for shard in random.Random(seed).sample(range(n), n):
        if (done or 0) >> shard & 1:
            continue
        runner.push(sync_id, "meta", holder, shard=shard)
    runner.finish(run_id, holder)


def count_normalised(path: str) -> None:
    """Append one line per normalised row to ``path``, unbuffered, so a SIGKILL loses nothing counted."""
    out = open(path, "a", buffering=1)  # noqa: SIM115 - open for the life of the process
    identity_row = Normaliser.identity_row  # every path normalises a row through it

    def counted(self: Normaliser, key: str, raw: tuple) -> tuple:
        out.write("1\n")
        return identity_row(self, key, raw)

    Normaliser.identity_row = counted  # type: ignore[method-assign]


def main(db: str, audiences: str, meta_url: str, holder: str, mode: str = "run") -> int:
    def resolve(conn_id: str) -> ConnectionInfo:
        if conn_id == "data_out_meta":
            return ConnectionInfo(
                conn_id,
                "data_out_meta",
                host=meta_url,
                password="meta-test-token",
                extra={"backoff_initial": 0.01, "max_attempts": 3},
            )
        if db.startswith("{"):
            return ConnectionInfo(conn_id, **json.loads(db))
        return ConnectionInfo(conn_id, "sqlite", host=db)

    if os.environ.get("DATA_OUT_COUNT_NORMALISED"):
        count_normalised(os.environ["DATA_OUT_COUNT_NORMALISED"])
    stage_sql.RESUMABLE_MIN_ROWS, stage_sql.RESUME_CHUNK_ROWS = 0, 7
    engine = engine_for(resolve("db"))
    ensure_schema(engine)
    runner = AudienceRunner(engine, load_audiences(Path(audiences)), "crash_test_v1", resolve, stage_batch_size=7)
    as_of = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    if mode.startswith("sharded:"):
        shards.ROWS_PER_SHARD = 4
        sharded(runner, holder, int(mode.removeprefix("sharded:")), as_of)
    else:
        runner.run(holder, as_of)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:6]))
