"""The production topology, running, without Docker: CeleryExecutor, Redis, Postgres, two workers.

Each Airflow component gets the environment its docker-compose service gets: ``docker-compose.yaml``
interpolated with ``deploy/airflow.env.example`` (through the same helpers as test_compose.py), so the
two cannot drift. Only what names the containers' world is rewritten for this machine: the service
host names (``postgres``, ``redis``, ``airflow-apiserver``) become loopback, ``/opt/airflow`` this
checkout, the Redis password goes (the machine's Redis has none), and the test's values replace the
template's placeholders (fresh databases, generated secrets, the stand-in connections, the simple auth
manager because the FAB provider is not installed here).

It runs an audience whose plan yields 4 push shards and checks the mapped pushes ran on both workers.
In the middle of that push (a push task running on a worker whose shard the Meta stand-in has seen
some but not all batches of; the stand-in answers slowly to keep that window open) it SIGKILLs every
process of that worker, as a machine dies: Celery's main process, its forked pool and the task
processes under it. Airflow finds the dead task through its heartbeat timeout, and the retry the
product's ``default_args`` allow runs on the surviving worker and finishes the shard. The stand-in's
own records then account for every request: each planned batch (by its idempotency key) was applied
once, except the batches the killed task had sent but not committed, which the retry sends again
under the same key (Meta ignores the key; adding members already present changes nothing); every
member is in exactly one batch, and the audience ends with every member.

Then ``airflow backfill create`` over three days (three runs, in logical-date order, all successful),
and the metrics receiver reached through the api-server.

Timing settings lowered, the only departures from the compose file besides the machine's names:
``[scheduler] task_instance_heartbeat_timeout`` 30 s (default 300) and its detection interval 2 s
(default 10), so the dead worker's task is found in seconds; and the audience tasks' ``retry_delay``
1 s instead of the product's 2 min, through an Airflow cluster policy (``task_policy`` in an
``airflow_local_settings`` module on the components' path), which changes nothing else: the
retries themselves are the product's and the test checks they are configured.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import secrets
import signal
import sys
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import pytest
import requests
import yaml
from cryptography.fernet import Fernet
from sqlalchemy import Engine, select, text

from data_out import state
from data_out.config import AUDIENCES_DIR_ENV
from data_out.connections import ConnectionInfo, engine_for
from data_out.destinations.meta_versions import DEFAULT_API_VERSION
from data_out.metrics.receiver import signature
from data_out.shards import shard_of
from sandbox.standins import connection_env
from sandbox.standins.base import Request, Response, Running
from sandbox.standins.meta import MetaStandIn
from tests.conftest import People
from tests.data_out.metrics.conftest import event
from tests.deploy.test_compose import COMPOSE_FILE, ENV_EXAMPLE, read_env_file, resolve
from tests.support.airflow_processes import AirflowProcesses, free_port, http_json, wait_for

pytestmark = [pytest.mark.airflow, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_BIN = Path(sys.executable).with_name("airflow")
AUDIENCE = "celery_fanout_v1"
DAG_ID = f"audience__{AUDIENCE}"
META_AUDIENCE_ID = "120000000000077"
MEMBERS = 400
ROWS_PER_SHARD = 100  # 400 adds -> 4 push shards
SHARDS = 4
BATCH_SIZE = 25
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
STANDIN_DELAY = 1.5  # seconds before each Meta answer: a shard's push spans several seconds to kill it in
HEARTBEAT_TIMEOUT = 30  # [scheduler] task_instance_heartbeat_timeout: 6 of the tasks' 5 s heartbeats, on busy cores
RECOVERY_TIMEOUT = 120  # kill -> the retry succeeded: heartbeat timeout, callback, retry, push
#: the cluster policy that shortens the audience tasks' retry delay (see the module docstring)
POLICY = """\
import datetime as dt


def task_policy(task):
    if task.dag_id.startswith("audience__"):
        task.retry_delay = dt.timedelta(seconds=1)
"""


class RecordingMeta(MetaStandIn):
    """The Meta stand-in, also keeping every applied add: its Idempotency-Key and hashed emails, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.adds: list[tuple[str, list[str]]] = []

    def add(self, req: Request, m: re.Match[str]) -> Response:
        resp = super().add(req, m)
        form = parse_qs(req.body.decode("utf-8"))
        emails = [row[0] for row in json.loads(form["payload"][0])["data"]]
        self.adds.append((req.headers.get("idempotency-key", ""), emails))
        return resp


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
    state_engine = engine_for(ConnectionInfo("s", "postgres", host="127.0.0.1", login="postgres", schema=state_db))
    people = [{"customer_id": f"cel{i:04d}", "email": f"person.{i}@example.com"} for i in range(MEMBERS)]
    People(state_engine).set(people)
    # the hashed email Meta receives -> the member's push shard (the planner's key hash of customer_id)
    shard_of_email = {
        hashlib.sha256(p["email"].encode()).hexdigest(): shard_of(p["customer_id"], SHARDS) for p in people
    }
    planned = {s: math.ceil(n / BATCH_SIZE) for s, n in Counter(shard_of_email.values()).items()}
    assert sorted(planned) == list(range(SHARDS))
    policy_dir = tmp_path / "policy"
    policy_dir.mkdir()
    (policy_dir / "airflow_local_settings.py").write_text(POLICY, encoding="utf-8")
    write_audience(tmp_path / "audiences")
    api_port = free_port()
    api = f"http://127.0.0.1:{api_port}"
    template, _ = read_env_file(ENV_EXAMPLE)
    standin = RecordingMeta()
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
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
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
            env["PYTHONPATH"] = f"{env.get('PYTHONPATH', base['PYTHONPATH'])}:{policy_dir}"
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
                push_task = http_json(f"{api}/api/v2/dags/{DAG_ID}/tasks/meta.push")
                assert push_task["retries"] >= 1, push_task  # the product's default_args, not the test's
                assert push_task["retry_delay"]["seconds"] == 1, push_task  # the test's policy (module docstring)
                figures["push task retries"] = push_task["retries"]
                with standin.lock:
                    standin.faults.delay = STANDIN_DELAY
                # the compose default: a new audience waits to be unpaused (a first sync is a decision)
                requests.patch(f"{api}/api/v2/dags/{DAG_ID}", json={"is_paused": False}, timeout=10).raise_for_status()

                t0 = time.monotonic()
                [scheduled] = procs.wait_for("the scheduled run", lambda: runs(api, "scheduled"), RUN_TIMEOUT, 1.0)
                run_id = scheduled["dag_run_id"]

                def mid_push() -> tuple[dict, list[dict]] | None:
                    """A push shard running on a worker while the stand-in has some but not all of its batches."""
                    pushes = [t for t in task_instances(api, run_id) if t["task_id"] == "meta.push"]
                    if len(pushes) < SHARDS or any(t["state"] != "running" or not t["hostname"] for t in pushes):
                        return None
                    with standin.lock:
                        sent = Counter(shard_of_email[emails[0]] for _, emails in standin.adds)
                    for t in pushes:
                        if 1 <= sent[t["map_index"]] < planned[t["map_index"]]:
                            return t, pushes
                    return None

                target, pushes = procs.wait_for("a push shard half-way through", mid_push, RUN_TIMEOUT, 0.2)
                timings["unpause -> mid-push"] = time.monotonic() - t0
                per_worker = Counter(t["hostname"] for t in pushes)
                figures["push shards per worker"] = dict(per_worker)
                assert set(per_worker) == {"worker-a", "worker-b"}, per_worker
                assert {t["try_number"] for t in pushes} == {1}, pushes
                host = target["hostname"]
                [survivor] = {"worker-a", "worker-b"} - {host}
                killed_tis = sorted((t for t in pushes if t["hostname"] == host), key=lambda t: t["map_index"])
                killed = procs.components.pop(host)  # its death is the test's doing, not a failure
                t_kill = time.monotonic()
                doomed = killed.pids()
                for pid in doomed:
                    os.kill(pid, signal.SIGKILL)
                wait_for(f"{host}'s processes to die", lambda: not killed.pids(), 10, 0.1)
                killed.popen.wait(timeout=5)
                with standin.lock:
                    at_kill = Counter(shard_of_email[emails[0]] for _, emails in standin.adds)
                figures["killed"] = {
                    "worker": host,
                    "processes": len(doomed),
                    "tasks": [
                        f"{t['task_id']}[{t['map_index']}] try {t['try_number']} on {t['hostname']}, "
                        f"{at_kill[t['map_index']]}/{planned[t['map_index']]} batches at the stand-in"
                        for t in killed_tis
                    ],
                }
                with standin.lock:
                    standin.faults.delay = 0.0  # the window is passed: the rest of the push need not be slow
                # a request the dead worker had sent is still answered (and applied) by the stand-in:
                # wait for those answers, then read which of the dead tasks' batches were never committed
                wait_for("the stand-in's answers in flight", lambda: standin.inflight == 0, 30, 0.05)
                with state_engine.connect() as conn:
                    uncommitted = set(
                        conn.execute(
                            select(state.batch.c.idempotency_key).where(
                                state.batch.c.audience == AUDIENCE,
                                state.batch.c.shard.in_([t["map_index"] for t in killed_tis]),
                            )
                        ).scalars()
                    )
                with standin.lock:
                    sent_before = {key for key, _ in standin.adds}
                replayed = uncommitted & sent_before  # applied at Meta, unknown to state: the retry sends them again

                def recovered() -> list[dict] | None:
                    done = finished(api, "scheduled", 1)
                    if not done:
                        return None
                    return [t for t in task_instances(api, run_id) if t["task_id"] == "meta.push"]

                pushes = procs.wait_for("the killed shards' retries", recovered, RECOVERY_TIMEOUT, 0.5)
                timings["kill -> run finished"] = time.monotonic() - t_kill
                timings["scheduled run"] = time.monotonic() - t0
                [run] = runs(api, "scheduled")
                assert run["state"] == "success", run
                assert len(pushes) == SHARDS and {t["state"] for t in pushes} == {"success"}, pushes
                retries = []
                for before in killed_tis:
                    [after] = [t for t in pushes if t["map_index"] == before["map_index"]]
                    if before is not target and after["try_number"] == 1:  # it finished just before the kill
                        assert after["hostname"] == host and at_kill[after["map_index"]] == planned[after["map_index"]]
                        continue
                    assert after["try_number"] == 2 and after["hostname"] == survivor, (before, after)
                    assert after["max_tries"] == push_task["retries"], after
                    retries.append(f"{after['task_id']}[{after['map_index']}] try {after['try_number']} on {survivor}")
                figures["retried"] = retries
                for t in pushes:
                    if t["map_index"] not in {k["map_index"] for k in killed_tis}:
                        assert t["try_number"] == 1, t

                # the stand-in's records: every request of the run accounted for
                with standin.lock:
                    adds = list(standin.adds)
                    applied = Counter(standin.applied)
                    log = list(standin.log)
                    final = set(standin.audiences[META_AUDIENCE_ID])
                with state_engine.connect() as conn:
                    sync = conn.execute(
                        select(state.sync.c.batches, state.sync.c.added, state.sync.c.shards, state.sync.c.status)
                        .where(state.sync.c.audience == AUDIENCE)
                        .order_by(state.sync.c.id)
                    ).first()
                keys = Counter(key for key, _ in adds)
                members_of = {key: emails for key, emails in adds}
                # a re-sent batch is the same batch: the same members under the same key
                assert all(sorted(emails) == sorted(members_of[key]) for key, emails in adds)
                assert sync is not None and sync.shards == SHARDS and sync.status == "success", sync
                assert sync.batches == sum(planned.values()) == len(keys), (sync, planned, keys)
                assert sync.added == MEMBERS, sync
                assert {k for k, n in keys.items() if n > 1} == replayed, (keys, replayed)
                assert all(n <= 2 for n in keys.values()), keys
                # the batch being pushed and the one waiting for its commit (sync.py's pipeline), per shard
                replayed_per_shard = Counter(shard_of_email[members_of[k][0]] for k in replayed)
                assert set(replayed_per_shard) <= {t["map_index"] for t in killed_tis}, replayed_per_shard
                assert all(n <= 2 for n in replayed_per_shard.values()), replayed_per_shard
                assert applied == keys, (applied, keys)  # the base stand-in's per-key count agrees
                in_batches = Counter(email for emails in members_of.values() for email in emails)
                assert set(in_batches) == set(shard_of_email) and set(in_batches.values()) == {1}, in_batches
                assert all(len(e) == len(set(e)) for e in members_of.values())
                assert final == {(f"EMAIL={h}",) for h in shard_of_email}, len(final)
                posts = [entry for entry in log if entry[0] == "POST" and entry[1].endswith("/users")]
                others = [entry for entry in log if entry not in posts]
                assert {status for *_, status in log} == {200}, Counter(log)
                assert len(posts) == sum(planned.values()) + len(replayed), (len(posts), planned, replayed)
                # besides the batches, one size read (GET /{audience}) after each push attempt that drained
                # its shard: every successful try, and a killed try that got that far
                gets = Counter(path for method, path, _ in others if method == "GET")
                assert set(gets) == {f"/{DEFAULT_API_VERSION}/{META_AUDIENCE_ID}"}, others
                drained_at_kill = sum(at_kill[t["map_index"]] == planned[t["map_index"]] for t in killed_tis)
                assert SHARDS <= len(others) <= SHARDS + drained_at_kill, (others, drained_at_kill)
                figures["meta requests"] = (
                    f"{len(log)} = {len(posts)} batch posts ({sum(planned.values())} planned batches + "
                    f"{len(replayed)} re-sent: sent by the killed task, not committed, per shard "
                    f"{dict(replayed_per_shard)}) + {len(others)} size reads"
                )
                figures["members at meta"] = len(final)
                log_mark = len(log)

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
                with state_engine.connect() as conn:
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
                    (r["logical_date"], r["state"], f"as_of {rec.as_of:%Y-%m-%d %H:%M}")
                    for r, rec in zip(backfill, records, strict=True)
                ]
                with standin.lock:
                    figures["meta requests of the backfill"] = dict(Counter(standin.log[log_mark:]))

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
    assert not killed.pids()
    assert report.seconds < SHUTDOWN_BOUND, report
