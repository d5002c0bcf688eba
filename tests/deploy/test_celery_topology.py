"""The production topology, running, without Docker: CeleryExecutor, Redis, Postgres, two workers.

Each Airflow component gets the environment its docker-compose service gets: ``docker-compose.yaml``
interpolated with ``deploy/airflow.env.example`` (through the same helpers as test_compose.py), so the
two cannot drift. Only what names the containers' world is rewritten for this machine: the service
host names (``postgres``, ``redis``, ``airflow-apiserver``) become loopback, ``/opt/airflow`` this
checkout, the Redis password goes (the machine's Redis has none), and the test's values replace the
template's placeholders (fresh databases, generated secrets, the stand-in connections, the simple auth
manager because the FAB provider is not installed here).

It runs an audience whose plan yields 4 push shards and checks the mapped pushes ran on both workers,
then ``airflow backfill create`` over three days (three runs, in logical-date order, all successful),
and reaches the metrics receiver through the api-server.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets
import sys
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
import yaml
from cryptography.fernet import Fernet
from sqlalchemy import Engine, select, text

from data_out import state
from data_out.config import AUDIENCES_DIR_ENV
from data_out.connections import ConnectionInfo, engine_for
from data_out.metrics.receiver import signature
from sandbox.standins import connection_env
from sandbox.standins.base import Running
from sandbox.standins.meta import MetaStandIn
from tests.conftest import People
from tests.data_out.metrics.conftest import event
from tests.deploy.test_compose import COMPOSE_FILE, ENV_EXAMPLE, read_env_file, resolve
from tests.support.airflow_processes import AirflowProcesses, free_port, http_json

pytestmark = [pytest.mark.airflow, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_BIN = Path(sys.executable).with_name("airflow")
AUDIENCE = "celery_fanout_v1"
DAG_ID = f"audience__{AUDIENCE}"
META_AUDIENCE_ID = "120000000000077"
MEMBERS = 400
ROWS_PER_SHARD = 100  # 400 adds -> 4 push shards
SERVICES = {
    "api-server": "airflow-apiserver",
    "scheduler": "airflow-scheduler",
    "dag-processor": "airflow-dag-processor",
    "triggerer": "airflow-triggerer",
    "worker-a": "airflow-worker",
    "worker-b": "airflow-worker",
}
RECEIVER_KEY = "celery-receiver-key"
STARTUP_TIMEOUT = 120
RUN_TIMEOUT = 180
SHUTDOWN_BOUND = 60


def service_environments(values: dict[str, str], api: str, redis_db: int) -> dict[str, dict[str, str]]:
    """Each compose service's environment, interpolated with ``values``, rewritten for this machine."""
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    envs = {}
    for service in set(SERVICES.values()):
        env = resolve(compose["services"][service].get("environment", {}), values)
        out = {}
        for key, value in env.items():
            value = "" if value is None else str(value)
            value = value.replace("@postgres:5432", "@127.0.0.1:5432").replace("http://airflow-apiserver:8080", api)
            value = value.replace("/opt/airflow/", f"{ROOT}/")
            value = re.sub(r"^redis://:[^@]*@redis:6379/\d+$", f"redis://127.0.0.1:6379/{redis_db}", value)
            out[key] = value
        envs[service] = out
    return envs


@pytest.fixture
def databases(pg_admin: Engine) -> Iterator[tuple[str, str]]:
    names = (f"do_cel_meta_{uuid.uuid4().hex[:10]}", f"do_cel_state_{uuid.uuid4().hex[:10]}")
    with pg_admin.connect() as conn:
        for name in names:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield names
    with pg_admin.connect() as conn:
        for name in names:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def write_audience(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{AUDIENCE}.yaml").write_text(
        textwrap.dedent(
            f"""\
            name: {AUDIENCE}
            owner: tests
            purpose: a push fanned out over Celery workers
            status: active
            schedule: "0 6 * * *"
            source:
              conn_id: data_out_warehouse
              query: SELECT customer_id, email FROM people WHERE in_audience = 1
            identifiers: {{email: email}}
            destinations:
              - type: meta
                audience_id: "{META_AUDIENCE_ID}"
                match_keys: [EMAIL]
                batch_size: 25
                push_shards: 4
            """
        ),
        encoding="utf-8",
    )


def runs(api: str, run_type: str | None = None) -> list[dict]:
    found = http_json(f"{api}/api/v2/dags/{DAG_ID}/dagRuns?limit=100")["dag_runs"]
    return [r for r in found if run_type in (None, r["run_type"])]


def task_instances(api: str, run_id: str) -> list[dict]:
    return http_json(f"{api}/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances?limit=100")[
        "task_instances"
    ]


def finished(api: str, run_type: str, count: int) -> list[dict] | None:
    found = runs(api, run_type)
    for r in found:
        bad = {
            t["task_id"]: t["state"]
            for t in task_instances(api, r["dag_run_id"])
            if t["state"] in {"failed", "upstream_failed"}
        }
        assert not bad, f"{r['dag_run_id']}: {bad}"
    done = [r for r in found if r["state"] in {"success", "failed"}]
    return done if len(done) >= count else None


def test_celery_topology_runs_shards_on_both_workers_and_backfills_in_order(tmp_path: Path, databases) -> None:
    meta_db, state_db = databases
    state_conn = {"conn_type": "postgres", "host": "127.0.0.1", "port": 5432, "login": "postgres", "schema": state_db}
    People(engine_for(ConnectionInfo("wh", "postgres", host="127.0.0.1", login="postgres", schema=state_db))).set(
        [{"customer_id": f"cel{i:04d}", "email": f"person.{i}@example.com"} for i in range(MEMBERS)]
    )
    write_audience(tmp_path / "audiences")
    api_port = free_port()
    api = f"http://127.0.0.1:{api_port}"
    template, _ = read_env_file(ENV_EXAMPLE)
    standin = MetaStandIn()
    with Running(standin) as meta:
        values = {
            **template,
            "AIRFLOW_DB_USER": "postgres",
            "AIRFLOW_DB_PASSWORD": "trust",  # the machine's Postgres trusts loopback
            "AIRFLOW_DB_NAME": meta_db,
            "REDIS_PASSWORD": "none",  # removed from the URL below: the machine's Redis has no password
            "AIRFLOW_WORKER_CONCURRENCY": "2",  # 4 shards need both workers
            "AIRFLOW_FERNET_KEY": Fernet.generate_key().decode(),
            "AIRFLOW_API_SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW_JWT_SECRET": secrets.token_urlsafe(64),
            "AIRFLOW_AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            "AIRFLOW_CONN_DATA_OUT_STATE": json.dumps(state_conn),
            "AIRFLOW_CONN_DATA_OUT_WAREHOUSE": json.dumps(state_conn),
            "AIRFLOW_CONN_DATA_OUT_CUSTOMERIO_WEBHOOK": json.dumps({"conn_type": "generic", "password": RECEIVER_KEY}),
            "AIRFLOW_CONN_SMTP_DEFAULT": "",
            **connection_env({"meta": meta}),
        }
        redis_db = 8 + uuid.uuid4().int % 8
        envs = service_environments(values, api, redis_db)
        assert envs["airflow-worker"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert envs["airflow-worker"]["AIRFLOW__CELERY__BROKER_URL"] == f"redis://127.0.0.1:6379/{redis_db}"
        assert envs["airflow-worker"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith(f"@127.0.0.1:5432/{meta_db}")
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "_AIRFLOW", "DATA_OUT_"))}
        base.update(
            {
                "AIRFLOW_HOME": str(tmp_path / "airflow"),
                "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
                "AIRFLOW__API__PORT": str(api_port),
                "AIRFLOW__API__BASE_URL": api,
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
                "DATA_OUT_ROWS_PER_SHARD": str(ROWS_PER_SHARD),
                "PYTHONPATH": f"{ROOT / 'plugins'}:{ROOT / 'include'}:{ROOT}",
            }
        )
        procs = AirflowProcesses(AIRFLOW_BIN, base, tmp_path / "logs", tmp_path / "airflow" / "logs")

        def component_env(name: str) -> dict[str, str]:
            env = {k: v for k, v in envs[SERVICES[name]].items() if v != ""}
            env[AUDIENCES_DIR_ENV] = str(tmp_path / "audiences")
            env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] = env.get(
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "true"
            )
            if name.startswith("worker-"):
                env["AIRFLOW__CORE__HOSTNAME_CALLABLE"] = "tests.support.worker_name.hostname"
                env["DATA_OUT_TEST_WORKER"] = name
                env["PYTHONPATH"] = f"{env['PYTHONPATH']}:{ROOT}"  # where tests.support.worker_name lives
            return env

        figures: dict[str, Any] = {}
        timings: dict[str, float] = {}
        try:
            with procs.tails_on_failure():
                t0 = time.monotonic()
                procs.env.update(component_env("scheduler"))
                procs.run("db", "migrate", timeout=300)
                procs.run("pools", "import", str(ROOT / "deploy" / "pools.json"))
                procs.start(
                    "api-server",
                    "api-server",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(api_port),
                    env=component_env("api-server"),
                )
                procs.wait_for("the api-server", lambda: http_json(f"{api}/api/v2/monitor/health"), STARTUP_TIMEOUT)
                for name in ("scheduler", "dag-processor", "triggerer"):
                    procs.start(
                        name, *([name] if name != "triggerer" else [name, "--skip-serve-logs"]), env=component_env(name)
                    )
                for name in ("worker-a", "worker-b"):
                    procs.start(
                        name,
                        "celery",
                        "worker",
                        "--skip-serve-logs",
                        "--celery-hostname",
                        f"{name}@%h",
                        env=component_env(name),
                    )
                procs.wait_for(
                    "the DAG parsed",
                    lambda: any(d["dag_id"] == DAG_ID for d in http_json(f"{api}/api/v2/dags?limit=100")["dags"]),
                    STARTUP_TIMEOUT,
                    1.0,
                )
                timings["start-up"] = time.monotonic() - t0
                # the compose default: a new audience waits to be unpaused (a first sync is a decision)
                requests.patch(f"{api}/api/v2/dags/{DAG_ID}", json={"is_paused": False}, timeout=10).raise_for_status()

                t0 = time.monotonic()
                [run] = procs.wait_for("the scheduled run", lambda: finished(api, "scheduled", 1), RUN_TIMEOUT, 1.0)
                timings["scheduled run"] = time.monotonic() - t0
                assert run["state"] == "success", run
                pushes = [t for t in task_instances(api, run["dag_run_id"]) if t["task_id"] == "meta.push"]
                per_worker = Counter(t["hostname"] for t in pushes)
                figures["push shards per worker"] = dict(per_worker)
                assert len(pushes) == 4 and {t["state"] for t in pushes} == {"success"}, pushes
                assert set(per_worker) == {"worker-a", "worker-b"}, per_worker
                with standin.lock:
                    assert len(standin.audiences[META_AUDIENCE_ID]) == MEMBERS

                t0 = time.monotonic()
                procs.run(
                    "backfill",
                    "create",
                    "--dag-id",
                    DAG_ID,
                    "--from-date",
                    "2026-06-01T00:00:00",
                    "--to-date",
                    "2026-06-03T23:00:00",
                )
                backfill = procs.wait_for("three backfill runs", lambda: finished(api, "backfill", 3), RUN_TIMEOUT, 1.0)
                timings["backfill"] = time.monotonic() - t0
                backfill.sort(key=lambda r: r["logical_date"])
                assert [r["state"] for r in backfill] == ["success"] * 3
                with engine_for(
                    ConnectionInfo("s", "postgres", host="127.0.0.1", login="postgres", schema=state_db)
                ).connect() as conn:
                    records = conn.execute(
                        select(
                            state.run.c.dag_run_id, state.run.c.as_of, state.run.c.started_at, state.run.c.finished_at
                        )
                        .where(state.run.c.dag_run_id.like("%/backfill__%"))
                        .order_by(state.run.c.started_at)
                    ).all()
                assert [r.dag_run_id for r in records] == [f"{DAG_ID}/{r['dag_run_id']}" for r in backfill]
                for before, after in itertools.pairwise(records):
                    assert before.finished_at <= after.started_at
                figures["backfill runs"] = [
                    (r.dag_run_id.split("/")[1], f"as_of {r.as_of:%Y-%m-%d %H:%M}") for r in records
                ]

                raw = json.dumps(event(1)).encode()
                ts = str(int(time.time()))
                reply = requests.post(
                    f"{api}/data-out/customerio",
                    data=raw,
                    headers={"X-CIO-Timestamp": ts, "X-CIO-Signature": signature(RECEIVER_KEY, ts, raw)},
                    timeout=10,
                )
                assert reply.status_code == 200 and reply.json()["status"] == "stored", reply.text
                figures["receiver through the api-server"] = reply.json()["status"]
        finally:
            report = procs.stop(grace=30)
            timings["shutdown"] = report.seconds
            print(f"\ncelery topology figures: {figures}")
            print(f"celery topology timings: {', '.join(f'{k} {v:.1f}s' for k, v in timings.items())}")
    assert not report.left, report
    assert report.seconds < SHUTDOWN_BOUND, report
