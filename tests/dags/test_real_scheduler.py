"""An audience DAG run by the real Airflow scheduler, not by ``dag.test()``.

Starts ``airflow api-server``, ``scheduler`` (LocalExecutor) and ``dag-processor`` against a fresh
Postgres metadata database, lets the scheduler create the audience's run from its cron schedule, and
checks the result where it matters: the members the Meta stand-in holds. Then shuts every process down
and checks that none is left. This is what catches what ``dag.test()`` cannot: the DAG file parsed by
the dag-processor in its own process, the schedule and pause-at-creation settings honoured, tasks run
by the Task SDK through the execution API with connections from the environment.

Then a data engineer's backfill, typed as they would: ``airflow backfill create`` over three days of a
daily audience. Airflow starts a backfill's runs together (a backfill has its own ``max_active_runs``,
10 unless given), so the runs must take turns themselves: each one's stage task waits while an earlier
run is running, and the state database's run history shows three successful runs, one after another in
logical-date order, each evaluated as of its own data interval.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import secrets
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import Engine, select, text

from data_out import state
from data_out.config import AUDIENCES_DIR_ENV
from data_out.connections import ConnectionInfo, engine_for
from data_out.engine.holdout import is_held_out
from sandbox.standins import connection_env
from sandbox.standins.base import Running
from sandbox.standins.meta import MetaStandIn
from tests.conftest import People
from tests.support.airflow_processes import AirflowProcesses, clean_environ, free_port, http_json

pytestmark = [pytest.mark.airflow, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_BIN = Path(sys.executable).with_name("airflow")
POOLS = ROOT / "deploy" / "pools.json"  # Data Out's pools, one per destination type
AUDIENCE = "real_scheduler_meta_v1"
DAG_ID = f"audience__{AUDIENCE}"
META_AUDIENCE_ID = "120000000000042"
SALT = "real-scheduler"
HOLDOUT_PERCENT = 20
#: the other DAG files in dags/ (audience_config_check.py defines none while every audience file is valid)
PLATFORM_DAGS = {"data_out_lifecycle", "data_out_message_metrics", "data_out_operations", "data_out_reconciliation"}
# Once a year, 1 January 00:00 UTC. With catchup off, Airflow's CronTriggerTimetable schedules the latest
# fire time at or before now (never before the start date), which is already past: the scheduler creates
# that one run as soon as the DAG is parsed, and no second run comes due while the test runs.
SCHEDULE = "0 0 1 1 *"
BACKFILL_AUDIENCE = "real_scheduler_backfill_v1"
BACKFILL_DAG_ID = f"audience__{BACKFILL_AUDIENCE}"
BACKFILL_META_AUDIENCE_ID = "120000000000043"
BACKFILL_SCHEDULE = "0 6 * * *"  # daily; with catchup off, only its latest fire time runs on its own
BACKFILL_FROM, BACKFILL_TO = "2026-06-01T00:00:00", "2026-06-03T23:00:00"  # three fire times: 1-3 June 06:00

STARTUP_TIMEOUT = 90  # api-server healthy, scheduler and dag-processor heartbeating
RUN_TIMEOUT = 150  # from healthy to the scheduled run finished (about 10s on 2 idle cores)
BACKFILL_TIMEOUT = 240  # three runs one after another, each waiting up to a turn poke (15s) for its turn
SHUTDOWN_GRACE = 30  # SIGTERM to exit; then SIGKILL
SHUTDOWN_BOUND = 45  # what the whole shutdown may take, SIGKILL included


@pytest.fixture
def metadata_db(pg_admin: Engine) -> Iterator[str]:
    """A fresh Postgres database for Airflow's own metadata, dropped afterwards (even if processes linger)."""
    name = f"do_airflow_{uuid.uuid4().hex[:12]}"
    with pg_admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield pg_admin.url.set(database=name).render_as_string(hide_password=False)
    with pg_admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def people_rows() -> list[dict]:
    """Three dozen people with emails (some needing normalisation) and four without any."""
    rows = [{"customer_id": f"rs{i:03d}", "email": f"  Person.{i}@Example.COM "} for i in range(36)]
    rows += [{"customer_id": f"rs-noemail-{i}", "email": None} for i in range(4)]
    return rows


def expected_meta_rows(rows: list[dict]) -> set[tuple[str, ...]]:
    """What Meta should hold: the targeted (not held-out) people with an email, as SHA-256 of the
    trimmed, lower-cased address, computed here independently of the product's identity code."""
    return {
        (f"EMAIL={hashlib.sha256(r['email'].strip().lower().encode()).hexdigest()}",)
        for r in rows
        if r["email"] and not is_held_out(SALT, r["customer_id"], HOLDOUT_PERCENT)
    }


def write_audience(
    directory: Path,
    warehouse_conn_id: str,
    name: str = AUDIENCE,
    schedule: str = SCHEDULE,
    meta_audience_id: str = META_AUDIENCE_ID,
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.yaml").write_text(
        textwrap.dedent(
            f"""\
            name: {name}
            owner: tests
            purpose: run by the real scheduler on its schedule
            status: active
            schedule: "{schedule}"
            source:
              conn_id: {warehouse_conn_id}
              query: SELECT customer_id, email FROM people WHERE in_audience = 1
            identifiers: {{email: email}}
            holdout: {{percent: {HOLDOUT_PERCENT}, salt: {SALT}}}
            destinations:
              - type: meta
                audience_id: "{meta_audience_id}"
                match_keys: [EMAIL]
            """
        ),
        encoding="utf-8",
    )


def airflow_env(tmp_path: Path, metadata_url: str, api_port: int, extra: dict[str, str]) -> dict[str, str]:
    """A self-contained Airflow: its own home, metadata DB, secrets, ports; this repo's DAGs and plugins."""
    api = f"http://127.0.0.1:{api_port}"
    home = tmp_path / "airflow"
    return clean_environ(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "PYTHONPATH": f"{ROOT / 'plugins'}:{ROOT / 'include'}",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",  # two cores; one small audience
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
            # Explicit, not left to the default: the platform DAGs (metrics, lifecycle, reconciliation,
            # operations) arrive paused and never run; the active audience opts out of it itself
            # (is_paused_upon_creation=False), which is exactly what this test relies on.
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            # Shared secrets: the scheduler signs task tokens the api-server's execution API must accept.
            "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__API__BASE_URL": api,
            "AIRFLOW__API__PORT": str(api_port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
            # Loopback-only test cluster: the REST API without logins, so the test can read DAG runs.
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            # No extra listeners on fixed ports (8793 log server, 8974 health check) that could collide.
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            # Look for DAG files every few seconds (the first parse happens at start-up regardless).
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
            **extra,
        }
    )


def dag_runs(api: str, dag_id: str = "~") -> list[dict]:
    return http_json(f"{api}/api/v2/dags/{dag_id}/dagRuns?limit=100")["dag_runs"]


def finished_runs(api: str, dag_id: str = DAG_ID, run_type: str | None = None) -> list[dict]:
    """The audience's finished runs (of ``run_type`` if given); raises at once when a task fails rather
    than waiting out its retries (the audience DAG retries after minutes)."""
    runs = [r for r in dag_runs(api, dag_id) if run_type in (None, r["run_type"])]
    for run in runs:
        url = f"{api}/api/v2/dags/{dag_id}/dagRuns/{quote(run['dag_run_id'], safe='')}/taskInstances"
        tis = http_json(url)["task_instances"]
        failed = {t["task_id"]: t["state"] for t in tis if t["state"] in {"failed", "up_for_retry", "upstream_failed"}}
        assert not failed, f"tasks of {run['dag_run_id']} failed: {failed} (task logs below)"
    return [r for r in runs if r["state"] in {"success", "failed"}]


def health(api: str) -> dict:
    return http_json(f"{api}/api/v2/monitor/health")


def all_healthy(api: str) -> bool:
    status = health(api)
    return all(status[c]["status"] == "healthy" for c in ("metadatabase", "scheduler", "dag_processor"))


def test_the_scheduler_runs_audiences_on_schedule_and_a_backfill_in_order(tmp_path: Path, metadata_db: str) -> None:
    warehouse = ConnectionInfo("rs_warehouse", "sqlite", host=str(tmp_path / "warehouse.db"))
    state_db = ConnectionInfo("data_out_state", "sqlite", host=str(tmp_path / "state.db"))
    rows = people_rows()
    People(engine_for(warehouse)).set(rows)
    write_audience(tmp_path / "audiences", warehouse.conn_id)
    write_audience(
        tmp_path / "audiences", warehouse.conn_id, BACKFILL_AUDIENCE, BACKFILL_SCHEDULE, BACKFILL_META_AUDIENCE_ID
    )
    expected = expected_meta_rows(rows)
    assert 15 < len(expected) < 36  # a holdout was drawn and people without an email were left out

    assert AIRFLOW_BIN.exists(), f"no airflow command beside {sys.executable}: run the tests from the virtualenv"
    api_port = free_port()
    api = f"http://127.0.0.1:{api_port}"
    standin = MetaStandIn()
    with Running(standin) as meta:
        conns = {
            **connection_env({"meta": meta}),  # AIRFLOW_CONN_DATA_OUT_META: the Meta destination's default
            "AIRFLOW_CONN_DATA_OUT_STATE": json.dumps({"conn_type": "sqlite", "host": state_db.host}),
            "AIRFLOW_CONN_RS_WAREHOUSE": json.dumps({"conn_type": "sqlite", "host": warehouse.host}),
            AUDIENCES_DIR_ENV: str(tmp_path / "audiences"),
        }
        env = airflow_env(tmp_path, metadata_db, api_port, conns)
        procs = AirflowProcesses(AIRFLOW_BIN, env, tmp_path / "logs", tmp_path / "airflow" / "logs")
        timings: dict[str, float] = {}
        try:
            with procs.tails_on_failure():
                t0 = time.monotonic()
                procs.run("db", "migrate")
                if POOLS.exists():  # as a deployment does: the scheduler never runs a task whose pool is missing
                    procs.run("pools", "import", str(POOLS))
                timings["db migrate + pools"] = time.monotonic() - t0

                # The api-server first: task workers call its execution API, so it must answer before
                # the scheduler can queue anything (the workers would retry, but not forever).
                t0 = time.monotonic()
                procs.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(api_port))
                procs.wait_for(
                    "the api-server", lambda: health(api)["metadatabase"]["status"] == "healthy", STARTUP_TIMEOUT
                )
                procs.start("scheduler", "scheduler", "--skip-serve-logs")
                procs.start("dag-processor", "dag-processor")
                procs.wait_for("a heartbeating scheduler and dag-processor", lambda: all_healthy(api), STARTUP_TIMEOUT)
                timings["start-up"] = time.monotonic() - t0

                t0 = time.monotonic()
                finished = procs.wait_for(f"a finished run of {DAG_ID}", lambda: finished_runs(api), RUN_TIMEOUT, 1.0)
                procs.wait_for(
                    f"the scheduled run of {BACKFILL_DAG_ID}",
                    lambda: finished_runs(api, BACKFILL_DAG_ID, "scheduled"),
                    RUN_TIMEOUT,
                    1.0,
                )
                timings["scheduled runs"] = time.monotonic() - t0

                [run] = finished
                assert len(dag_runs(api, DAG_ID)) == 1  # one fire time in the past: one run, no second
                assert (run["state"], run["run_type"]) == ("success", "scheduled"), run
                assert run["dag_run_id"].startswith("scheduled__")
                # the platform DAGs were parsed too, arrived paused, and nothing but the audiences ran
                dags = {d["dag_id"]: d["is_paused"] for d in http_json(f"{api}/api/v2/dags?limit=100")["dags"]}
                assert dags.pop(DAG_ID) is False
                assert dags.pop(BACKFILL_DAG_ID) is False
                assert set(dags) == PLATFORM_DAGS, dags
                assert all(dags.values()), dags
                assert {r["dag_id"] for r in dag_runs(api)} == {DAG_ID, BACKFILL_DAG_ID}

                # the result at the destination: exactly the targeted members, hashed; the holdout withheld
                with standin.lock:
                    at_meta = set(standin.audiences.get(META_AUDIENCE_ID, set()))
                assert at_meta == expected
                # and the product's own run record names the scheduler's run ("<dag_id>/<run_id>")
                with engine_for(state_db).connect() as conn:
                    record = conn.execute(select(state.run).where(state.run.c.audience == AUDIENCE)).mappings().one()
                assert (record["status"], record["dag_run_id"]) == ("success", f"{DAG_ID}/{run['dag_run_id']}")

                t0 = time.monotonic()
                backfill = check_backfill_in_order(procs, api, state_db, tmp_path / "airflow" / "logs")
                timings["backfill of 3 days"] = time.monotonic() - t0
                print(f"\nbackfill runs (logical date, state run started -> finished, as_of): {backfill}")
        finally:
            report = procs.stop(grace=SHUTDOWN_GRACE)
            timings["shutdown"] = report.seconds
            print(f"\nreal scheduler timings: {', '.join(f'{k} {v:.1f}s' for k, v in timings.items())}")
            if report.killed:
                print(f"needed SIGKILL: {report.killed}")

    assert not report.left, f"processes still alive after SIGKILL: {report.left}\n{procs.tails()}"
    assert report.seconds < SHUTDOWN_BOUND, report


def parse_ts(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def check_backfill_in_order(procs: AirflowProcesses, api: str, state_db: ConnectionInfo, task_logs: Path) -> list:
    """``airflow backfill create`` over three days, as typed by hand: three runs, all successful, one after
    another in logical-date order, each evaluated as of its own data interval. Returns the figures."""
    procs.run("backfill", "create", "--dag-id", BACKFILL_DAG_ID, "--from-date", BACKFILL_FROM, "--to-date", BACKFILL_TO)
    runs = procs.wait_for(
        "three finished backfill runs",
        lambda: (r := finished_runs(api, BACKFILL_DAG_ID, "backfill")) and len(r) == 3 and r,
        BACKFILL_TIMEOUT,
        1.0,
    )
    runs.sort(key=lambda r: r["logical_date"])
    assert [r["state"] for r in runs] == ["success"] * 3, runs
    assert [parse_ts(r["logical_date"]).date() for r in runs] == [
        dt.date(2026, 6, 1),
        dt.date(2026, 6, 2),
        dt.date(2026, 6, 3),
    ]
    with engine_for(state_db).connect() as conn:
        records = (
            conn.execute(
                select(state.run)
                .where(state.run.c.audience == BACKFILL_AUDIENCE, state.run.c.dag_run_id.like("%/backfill__%"))
                .order_by(state.run.c.started_at)
            )
            .mappings()
            .all()
        )
    # one run record per backfill run (a waiting stage task opens none), all successful, in logical-date order
    assert [r["dag_run_id"] for r in records] == [f"{BACKFILL_DAG_ID}/{r['dag_run_id']}" for r in runs]
    assert [r["status"] for r in records] == ["success"] * 3
    utc = lambda d: d if d.tzinfo else d.replace(tzinfo=dt.UTC)  # noqa: E731 - SQLite drops the zone
    for record, run in zip(records, runs, strict=True):
        assert utc(record["as_of"]) == parse_ts(run["data_interval_end"]), (record, run)
    for before, after in itertools.pairwise(records):
        assert utc(before["finished_at"]) <= utc(after["started_at"]), (before, after)  # never overlapping
    # Airflow really did start them together: the later runs waited for their turn rather than failing
    stage_logs = [
        p.read_text(errors="replace")
        for p in task_logs.glob(f"dag_id={BACKFILL_DAG_ID}/run_id=backfill__*/task_id=stage/**/*.log")
    ]
    assert any("Waiting for this run's turn" in text for text in stage_logs), "no backfill run had to wait its turn"
    return [
        (
            run["logical_date"],
            f"{utc(r['started_at']):%H:%M:%S} -> {utc(r['finished_at']):%H:%M:%S}",
            f"{utc(r['as_of']):%Y-%m-%d %H:%M}",
        )
        for r, run in zip(records, runs, strict=True)
    ]
