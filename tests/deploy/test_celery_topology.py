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
the metrics receiver and the Data Out pages reached through the api-server.

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
from dataclasses import dataclass, field
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
from data_out.destinations.meta.versions import DEFAULT_API_VERSION
from data_out.engine.shards import shard_of
from data_out.metrics.receiver import signature
from sandbox.standins import connection_env
from sandbox.standins.base import Request, Response, Running
from sandbox.standins.meta import MetaStandIn
from tests.conftest import People
from tests.data_out.metrics.conftest import event
from tests.deploy.test_compose import COMPOSE_FILE, ENV_EXAMPLE, read_env_file, resolve
from tests.support.airflow_processes import AirflowProcesses, Component, free_port, http_json, wait_for

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


@dataclass
class Topology:
    """The running components and what the test reads them through: the api-server, the stand-in, the state."""

    procs: AirflowProcesses
    api: str
    api_port: int
    standin: RecordingMeta
    state_engine: Engine
    #: the environment each component gets (``component_env``), by component name
    envs: dict[str, dict[str, str]]
    #: the hashed email Meta receives -> the member's push shard
    shard_of_email: dict[str, int]
    #: push shard -> the batches the plan sends for it
    planned: dict[int, int]
    figures: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def sent_per_shard(self) -> Counter[int]:
        """The batches the stand-in has applied so far, per push shard."""
        with self.standin.lock:
            return Counter(self.shard_of_email[emails[0]] for _, emails in self.standin.adds)

    def pushes(self, run_id: str) -> list[dict]:
        """The run's mapped push task instances."""
        return [t for t in task_instances(self.api, run_id) if t["task_id"] == "meta.push"]


@dataclass
class MidPush:
    """The scheduled run caught with a push shard half-way through."""

    run_id: str
    #: when the audience was unpaused (time.monotonic)
    t_unpause: float
    #: the push shard found half-way through, and every push task instance at that moment
    target: dict
    pushes: list[dict]


@dataclass
class Kill:
    """The worker killed in the middle of a push, and what the stand-in and the state had of its tasks."""

    mid: MidPush
    host: str
    survivor: str
    #: the push task instances that were running on the killed worker, by map index
    tis: list[dict]
    component: Component
    t_kill: float
    #: batches the stand-in had applied per shard when the worker died
    at_kill: Counter[int]
    #: batches applied at Meta but not committed to the state: the retry sends them again
    replayed: set[str]


def seed_members(state_engine: Engine) -> tuple[dict[str, int], dict[int, int]]:
    """The warehouse's members, and the push shard and batch count the planner will give each."""
    people = [{"customer_id": f"cel{i:04d}", "email": f"person.{i}@example.com"} for i in range(MEMBERS)]
    People(state_engine).set(people)
    # the hashed email Meta receives -> the member's push shard (the planner's key hash of customer_id)
    shard_of_email = {
        hashlib.sha256(p["email"].encode()).hexdigest(): shard_of(p["customer_id"], SHARDS) for p in people
    }
    planned = {s: math.ceil(n / BATCH_SIZE) for s, n in Counter(shard_of_email.values()).items()}
    assert sorted(planned) == list(range(SHARDS))
    return shard_of_email, planned


def machine_values(meta_db: str, state_conn: dict[str, Any], meta: Running) -> dict[str, str]:
    """The env template's values with the test's: fresh databases, generated secrets, the stand-in connections."""
    template, _ = read_env_file(ENV_EXAMPLE)
    return {
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


def base_environment(tmp_path: Path, api_port: int, api: str) -> dict[str, str]:
    """What every Airflow process inherits: this machine's environment without Airflow's, and the test's settings."""
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
    return base


def component_env(
    name: str, services: dict[str, dict[str, str]], base: dict[str, str], tmp_path: Path, policy_dir: Path
) -> dict[str, str]:
    """One component's environment: its compose service's, plus the audiences, the policy and a worker's name."""
    env = {k: v for k, v in services[SERVICES[name]].items() if v != ""}
    env[AUDIENCES_DIR_ENV] = str(tmp_path / "audiences")
    env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] = env.get("AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "true")
    env["PYTHONPATH"] = f"{env.get('PYTHONPATH', base['PYTHONPATH'])}:{policy_dir}"
    if name.startswith("worker-"):
        env["AIRFLOW__CORE__HOSTNAME_CALLABLE"] = "tests.support.worker_name.hostname"
        env["DATA_OUT_TEST_WORKER"] = name
        env["PYTHONPATH"] = f"{env['PYTHONPATH']}:{ROOT}"  # where tests.support.worker_name lives
    return env


def component_environments(
    values: dict[str, str], api: str, meta_db: str, base: dict[str, str], tmp_path: Path, policy_dir: Path
) -> dict[str, dict[str, str]]:
    """Every component's environment; proves the workers get the compose file's executor, broker and database."""
    redis_db = 8 + uuid.uuid4().int % 8
    envs = service_environments(values, api, redis_db)
    assert envs["airflow-worker"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert envs["airflow-worker"]["AIRFLOW__CELERY__BROKER_URL"] == f"redis://127.0.0.1:6379/{redis_db}"
    assert envs["airflow-worker"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith(f"@127.0.0.1:5432/{meta_db}")
    return {name: component_env(name, envs, base, tmp_path, policy_dir) for name in SERVICES}


def start_topology(topo: Topology) -> dict:
    """Migrates and starts every component; proves the push task's retries are the product's. Returns the task."""
    procs, api, env = topo.procs, topo.api, topo.envs
    t0 = time.monotonic()
    procs.env.update(env["scheduler"])
    procs.run("db", "migrate", timeout=300)
    procs.run("pools", "import", str(ROOT / "deploy" / "pools.json"))
    procs.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(topo.api_port), env=env["api-server"])
    procs.wait_for("the api-server", lambda: http_json(f"{api}/api/v2/monitor/health"), STARTUP_TIMEOUT)
    for name in ("scheduler", "dag-processor", "triggerer"):
        procs.start(name, *([name] if name != "triggerer" else [name, "--skip-serve-logs"]), env=env[name])
    for name in ("worker-a", "worker-b"):
        procs.start(name, "celery", "worker", "--skip-serve-logs", "--celery-hostname", f"{name}@%h", env=env[name])
    procs.wait_for(
        "the DAG parsed",
        lambda: any(d["dag_id"] == DAG_ID for d in http_json(f"{api}/api/v2/dags?limit=100")["dags"]),
        STARTUP_TIMEOUT,
        1.0,
    )
    topo.timings["start-up"] = time.monotonic() - t0
    push_task = http_json(f"{api}/api/v2/dags/{DAG_ID}/tasks/meta.push")
    assert push_task["retries"] >= 1, push_task  # the product's default_args, not the test's
    assert push_task["retry_delay"]["seconds"] == 1, push_task  # the test's policy (module docstring)
    topo.figures["push task retries"] = push_task["retries"]
    return push_task


def mid_push(topo: Topology, run_id: str) -> tuple[dict, list[dict]] | None:
    """A push shard running on a worker while the stand-in has some but not all of its batches."""
    pushes = topo.pushes(run_id)
    if len(pushes) < SHARDS or any(t["state"] != "running" or not t["hostname"] for t in pushes):
        return None
    sent = topo.sent_per_shard()
    for t in pushes:
        if 1 <= sent[t["map_index"]] < topo.planned[t["map_index"]]:
            return t, pushes
    return None


def unpause_until_mid_push(topo: Topology) -> MidPush:
    """Unpauses the audience; proves its scheduled run's shards run on both workers, on their first try."""
    with topo.standin.lock:
        topo.standin.faults.delay = STANDIN_DELAY
    # the compose default: a new audience waits to be unpaused (a first sync is a decision)
    requests.patch(f"{topo.api}/api/v2/dags/{DAG_ID}", json={"is_paused": False}, timeout=10).raise_for_status()
    t0 = time.monotonic()
    [scheduled] = topo.procs.wait_for("the scheduled run", lambda: runs(topo.api, "scheduled"), RUN_TIMEOUT, 1.0)
    run_id = scheduled["dag_run_id"]
    target, pushes = topo.procs.wait_for(
        "a push shard half-way through", lambda: mid_push(topo, run_id), RUN_TIMEOUT, 0.2
    )
    topo.timings["unpause -> mid-push"] = time.monotonic() - t0
    per_worker = Counter(t["hostname"] for t in pushes)
    topo.figures["push shards per worker"] = dict(per_worker)
    assert set(per_worker) == {"worker-a", "worker-b"}, per_worker
    assert {t["try_number"] for t in pushes} == {1}, pushes
    return MidPush(run_id, t0, target, pushes)


def kill_worker(topo: Topology, mid: MidPush) -> Kill:
    """SIGKILLs every process of the half-way shard's worker; finds the batches it sent but never committed."""
    host = mid.target["hostname"]
    [survivor] = {"worker-a", "worker-b"} - {host}
    killed_tis = sorted((t for t in mid.pushes if t["hostname"] == host), key=lambda t: t["map_index"])
    killed = topo.procs.components.pop(host)  # its death is the test's doing, not a failure
    t_kill = time.monotonic()
    doomed = killed.pids()
    for pid in doomed:
        os.kill(pid, signal.SIGKILL)
    wait_for(f"{host}'s processes to die", lambda: not killed.pids(), 10, 0.1)
    killed.popen.wait(timeout=5)
    at_kill = topo.sent_per_shard()
    topo.figures["killed"] = {
        "worker": host,
        "processes": len(doomed),
        "tasks": [
            f"{t['task_id']}[{t['map_index']}] try {t['try_number']} on {t['hostname']}, "
            f"{at_kill[t['map_index']]}/{topo.planned[t['map_index']]} batches at the stand-in"
            for t in killed_tis
        ],
    }
    with topo.standin.lock:
        topo.standin.faults.delay = 0.0  # the window is passed: the rest of the push need not be slow
    # a request the dead worker had sent is still answered (and applied) by the stand-in:
    # wait for those answers, then read which of the dead tasks' batches were never committed
    wait_for("the stand-in's answers in flight", lambda: topo.standin.inflight == 0, 30, 0.05)
    with topo.state_engine.connect() as conn:
        uncommitted = set(
            conn.execute(
                select(state.batch.c.idempotency_key).where(
                    state.batch.c.audience == AUDIENCE,
                    state.batch.c.shard.in_([t["map_index"] for t in killed_tis]),
                )
            ).scalars()
        )
    with topo.standin.lock:
        sent_before = {key for key, _ in topo.standin.adds}
    replayed = uncommitted & sent_before  # applied at Meta, unknown to state: the retry sends them again
    return Kill(mid, host, survivor, killed_tis, killed, t_kill, at_kill, replayed)


def check_recovery(topo: Topology, kill: Kill, push_task: dict) -> None:
    """Proves the run succeeds, each killed shard retried once on the survivor, the other shards never retried."""

    def recovered() -> list[dict] | None:
        done = finished(topo.api, "scheduled", 1)
        if not done:
            return None
        return topo.pushes(kill.mid.run_id)

    pushes = topo.procs.wait_for("the killed shards' retries", recovered, RECOVERY_TIMEOUT, 0.5)
    topo.timings["kill -> run finished"] = time.monotonic() - kill.t_kill
    topo.timings["scheduled run"] = time.monotonic() - kill.mid.t_unpause
    [run] = runs(topo.api, "scheduled")
    assert run["state"] == "success", run
    assert len(pushes) == SHARDS and {t["state"] for t in pushes} == {"success"}, pushes
    retries = []
    for before in kill.tis:
        [after] = [t for t in pushes if t["map_index"] == before["map_index"]]
        if before is not kill.mid.target and after["try_number"] == 1:  # it finished just before the kill
            assert (
                after["hostname"] == kill.host and kill.at_kill[after["map_index"]] == topo.planned[after["map_index"]]
            )
            continue
        assert after["try_number"] == 2 and after["hostname"] == kill.survivor, (before, after)
        assert after["max_tries"] == push_task["retries"], after
        retries.append(f"{after['task_id']}[{after['map_index']}] try {after['try_number']} on {kill.survivor}")
    topo.figures["retried"] = retries
    for t in pushes:
        if t["map_index"] not in {k["map_index"] for k in kill.tis}:
            assert t["try_number"] == 1, t


def check_meta_accounting(topo: Topology, kill: Kill) -> int:
    """Proves every Meta request of the run is accounted for: each batch applied once, but the re-sent ones.

    Returns how many requests the stand-in had logged, where the backfill's begin.
    """
    with topo.standin.lock:
        adds = list(topo.standin.adds)
        applied = Counter(topo.standin.applied)
        log = list(topo.standin.log)
        final = set(topo.standin.audiences[META_AUDIENCE_ID])
    with topo.state_engine.connect() as conn:
        sync = conn.execute(
            select(state.sync.c.batches, state.sync.c.added, state.sync.c.shards, state.sync.c.status)
            .where(state.sync.c.audience == AUDIENCE)
            .order_by(state.sync.c.id)
        ).first()
    planned, replayed, shard_of_email = topo.planned, kill.replayed, topo.shard_of_email
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
    assert set(replayed_per_shard) <= {t["map_index"] for t in kill.tis}, replayed_per_shard
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
    drained_at_kill = sum(kill.at_kill[t["map_index"]] == planned[t["map_index"]] for t in kill.tis)
    assert SHARDS <= len(others) <= SHARDS + drained_at_kill, (others, drained_at_kill)
    topo.figures["meta requests"] = (
        f"{len(log)} = {len(posts)} batch posts ({sum(planned.values())} planned batches + "
        f"{len(replayed)} re-sent: sent by the killed task, not committed, per shard "
        f"{dict(replayed_per_shard)}) + {len(others)} size reads"
    )
    topo.figures["members at meta"] = len(final)
    return len(log)


def check_backfill(topo: Topology, log_mark: int) -> None:
    """Proves ``airflow backfill create`` over three days runs three successful runs, one after another, in order."""
    t0 = time.monotonic()
    topo.procs.run(
        "backfill",
        "create",
        "--dag-id",
        DAG_ID,
        "--from-date",
        "2026-06-01T00:00:00",
        "--to-date",
        "2026-06-03T23:00:00",
    )
    backfill = topo.procs.wait_for("three backfill runs", lambda: finished(topo.api, "backfill", 3), RUN_TIMEOUT, 1.0)
    topo.timings["backfill"] = time.monotonic() - t0
    backfill.sort(key=lambda r: r["logical_date"])
    assert [r["state"] for r in backfill] == ["success"] * 3
    with topo.state_engine.connect() as conn:
        records = conn.execute(
            select(state.run.c.dag_run_id, state.run.c.as_of, state.run.c.started_at, state.run.c.finished_at)
            .where(state.run.c.dag_run_id.like("%/backfill__%"))
            .order_by(state.run.c.started_at)
        ).all()
    assert [r.dag_run_id for r in records] == [f"{DAG_ID}/{r['dag_run_id']}" for r in backfill]
    for before, after in itertools.pairwise(records):
        assert before.finished_at <= after.started_at
    topo.figures["backfill runs"] = [
        (r["logical_date"], r["state"], f"as_of {rec.as_of:%Y-%m-%d %H:%M}")
        for r, rec in zip(backfill, records, strict=True)
    ]
    with topo.standin.lock:
        topo.figures["meta requests of the backfill"] = dict(Counter(topo.standin.log[log_mark:]))


def check_receiver(topo: Topology) -> None:
    """Proves the metrics receiver, a plugin route, answers through the api-server and stores a signed event."""
    raw = json.dumps(event(1)).encode()
    ts = str(int(time.time()))
    reply = requests.post(
        f"{topo.api}/data-out/customerio",
        data=raw,
        headers={"X-CIO-Timestamp": ts, "X-CIO-Signature": signature(RECEIVER_KEY, ts, raw)},
        timeout=10,
    )
    assert reply.status_code == 200 and reply.json()["status"] == "stored", reply.text
    topo.figures["receiver through the api-server"] = reply.json()["status"]


def check_pages(topo: Topology) -> None:
    """Proves the Data Out pages answer through the api-server, from the state database the workers wrote."""
    reply = requests.get(f"{topo.api}/data-out-ui/api/overview", timeout=30)
    assert reply.status_code == 200, reply.text
    [row] = [a for a in reply.json()["audiences"] if a["audience"] == AUDIENCE]
    [meta] = [d for d in row["destinations"] if d["name"] == "meta"]
    assert row["last_run"]["status"] == "success" and meta["acked"] == MEMBERS, row
    health = requests.get(f"{topo.api}/data-out-ui/dags/{DAG_ID}/health", timeout=30)
    assert health.status_code == 200 and AUDIENCE in health.text, health.status_code
    topo.figures["Data Out pages through the api-server"] = f"overview: meta acknowledged {meta['acked']}"


def test_celery_topology_runs_shards_on_both_workers_and_backfills_in_order(tmp_path: Path, databases) -> None:
    meta_db, state_db = databases
    state_conn = {"conn_type": "postgres", "host": "127.0.0.1", "port": 5432, "login": "postgres", "schema": state_db}
    state_engine = engine_for(ConnectionInfo("s", "postgres", host="127.0.0.1", login="postgres", schema=state_db))
    shard_of_email, planned = seed_members(state_engine)
    policy_dir = tmp_path / "policy"
    policy_dir.mkdir()
    (policy_dir / "airflow_local_settings.py").write_text(POLICY, encoding="utf-8")
    write_audience(tmp_path / "audiences")
    api_port = free_port()
    api = f"http://127.0.0.1:{api_port}"
    standin = RecordingMeta()
    with Running(standin) as meta:
        values = machine_values(meta_db, state_conn, meta)
        base = base_environment(tmp_path, api_port, api)
        envs = component_environments(values, api, meta_db, base, tmp_path, policy_dir)
        procs = AirflowProcesses(AIRFLOW_BIN, base, tmp_path / "logs", tmp_path / "airflow" / "logs")
        topo = Topology(procs, api, api_port, standin, state_engine, envs, shard_of_email, planned)
        try:
            with procs.tails_on_failure():
                push_task = start_topology(topo)
                kill = kill_worker(topo, unpause_until_mid_push(topo))
                check_recovery(topo, kill, push_task)
                log_mark = check_meta_accounting(topo, kill)
                check_backfill(topo, log_mark)
                check_receiver(topo)
                check_pages(topo)
        finally:
            report = procs.stop(grace=30)
            topo.timings["shutdown"] = report.seconds
            print(f"\ncelery topology figures: {topo.figures}")
            print(f"celery topology timings: {', '.join(f'{k} {v:.1f}s' for k, v in topo.timings.items())}")
    assert not report.left, report
    assert not kill.component.pids()
    assert report.seconds < SHUTDOWN_BOUND, report
