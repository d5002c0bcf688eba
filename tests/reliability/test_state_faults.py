"""The state database fails mid-run: connection killed, database down, read-only, disk full.

Each case runs one audience the way its Airflow tasks do (stage, plan, push, finish; a failed task is
retried), with the fault injected at a precise moment of one task: after the source's first batch was
staged, before the plan, after the destination applied a batch but before state committed it, or before
finish. Then it checks what an operator relies on:

* the task fails with a ``StateDatabaseError`` that names the database (never its password), the step
  and the driver's one-line reason, with no statement dump and no member's identifiers;
* nothing is acknowledged that the destination did not accept (``do_ack`` against the destination);
* once the database is back, retrying the failed task and running the rest converges to the desired
  members minus the holdout, with no batch applied twice and no member added twice.

Faults are injected on conditions (an engine event, a source or destination hook), never on timers.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, select, text

from data_out import state
from data_out.config import LoadedAudience, load_audiences
from data_out.connections import ConnectionInfo, engine_for
from data_out.destinations.base import MemberRow, Op
from data_out.engine import lease
from data_out.engine.holdout import is_held_out
from data_out.engine.runner import AudienceRunner
from data_out.errors import next_step_of
from data_out.hooks.state import DataOutStateHook
from data_out.identity import sha256_hex
from data_out.operators.audience import AudienceStepOperator
from data_out.sources.base import Row, Source
from data_out.state import ensure_schema
from data_out.state.errors import DatabaseError, StateDatabaseError, describe, translated, watch
from tests.conftest import PG_ADMIN_URL, People, write_audience
from tests.support.memory_destination import MemoryDestination, MemoryStore

AUD = "state_fault_v1"
SALT = "fault-salt"
AS_OF = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
PASSWORD = "s3cret-state-pw"  # Postgres here trusts loopback, so a password is accepted and ignored
TASKS = ("stage", "plan", "push", "finish")


def rows_before() -> list[dict]:
    return [{"customer_id": f"cust-{i:04d}", "email": f"person.{i}@example.com"} for i in range(300)]


def rows_after() -> list[dict]:
    """60 leave, 120 join, 10 change email: removes and several add batches to push."""
    rows = [r for r in rows_before() if int(r["customer_id"][5:]) >= 60]
    rows += [{"customer_id": f"cust-{i:04d}", "email": f"person.{i}@example.com"} for i in range(300, 420)]
    for r in rows:
        if 100 <= int(r["customer_id"][5:]) < 110:
            r["email"] = f"changed.{r['customer_id'][5:]}@example.com"
    return rows


def desired(rows: list[dict]) -> dict[str, str]:
    return {r["customer_id"]: sha256_hex(r["email"]) for r in rows if not is_held_out(SALT, r["customer_id"], 10)}


# -- faults ------------------------------------------------------------------------------------------
class Fault:
    """One way for the state database to fail; ``arm`` starts it, ``restore`` ends it."""

    name: str
    reason: str  # a regex the driver's reason must match

    def arm(self) -> None:
        raise NotImplementedError

    def restore(self) -> None:
        """The database is back."""


class PgFault(Fault):
    def __init__(self, admin: Engine, database: str) -> None:
        self.admin = admin
        self.database = database

    def terminate_all(self) -> None:
        """End every session on the database and wait until each has exited (PostgreSQL 14+)."""
        with self.admin.connect() as conn:
            done = conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
                    "WHERE datname = :db AND pid <> pg_backend_pid()"
                ),
                {"db": self.database},
            ).scalars()
            assert all(done), "a state database session did not exit"

    def alter(self, setting: str) -> None:
        with self.admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{self.database}" {setting}'))


class Killed(PgFault):
    """The session in use is terminated (failover, proxy restart); new connections work at once."""

    name, reason = "killed", "terminating connection|server closed the connection"

    def __init__(self, admin: Engine, database: str, engine: Engine) -> None:
        super().__init__(admin, database)
        self.armed = False
        self.when: Callable[[str], bool] = lambda statement: True  # which statement dies once armed
        event.listen(engine, "before_cursor_execute", self._kill_next)

    def _kill_next(self, conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if not self.armed or not self.when(statement):
            return
        self.armed = False
        with self.admin.connect() as admin:
            pid = cursor.connection.info.backend_pid
            assert admin.scalar(text("SELECT pg_terminate_backend(:pid, 10000)"), {"pid": pid})

    def arm(self) -> None:
        self.armed = True  # the next statement the state engine sends runs on a dead session


class Down(PgFault):
    """The database goes away and refuses new connections until it is back."""

    name, reason = "down", "not currently accepting connections"

    def arm(self) -> None:
        self.alter("ALLOW_CONNECTIONS false")
        self.terminate_all()

    def restore(self) -> None:
        self.alter("ALLOW_CONNECTIONS true")


class ReadOnly(PgFault):
    """The database turns read-only (a demoted primary, a full-disk safety switch): reads work, writes fail."""

    name, reason = "read_only", "read-only transaction"

    def arm(self) -> None:
        self.alter("SET default_transaction_read_only = on")
        self.terminate_all()  # pooled sessions reconnect and pick up the new default

    def restore(self) -> None:
        self.alter("RESET default_transaction_read_only")
        self.terminate_all()


class DiskFull(Fault):
    """SQLite cannot grow its file: ``PRAGMA max_page_count`` pinned to the current size after a VACUUM."""

    name, reason = "disk_full", "database or disk is full"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.armed = False
        event.listen(engine, "checkout", self._limit)  # the pragma is per connection: set it on every checkout

    def _limit(self, dbapi_conn: Any, *_: Any) -> None:
        cur = dbapi_conn.cursor()
        pages = cur.execute("PRAGMA page_count").fetchone()[0] if self.armed else 2**31
        cur.execute(f"PRAGMA max_page_count = {pages}")
        cur.close()

    def arm(self) -> None:
        with self.engine.connect() as conn:
            conn.exec_driver_sql("VACUUM")  # no free pages left to reuse: every new row needs the file to grow
        self.armed = True

    def restore(self) -> None:
        self.armed = False


# -- an audience run, task by task -------------------------------------------------------------------
class HookedSource:
    """Calls ``hook`` once the source's ``after``-th batch was handed over (and staged)."""

    def __init__(self, inner: Source, after: int, hook: Callable[[], None]) -> None:
        self.inner, self.after, self.hook = inner, after, hook

    def iter_batches(self, batch_size: int) -> Iterator[list[Row]]:
        for i, rows in enumerate(self.inner.iter_batches(batch_size), 1):
            yield rows
            if i == self.after:
                self.hook()


class HookedRunner(AudienceRunner):
    source_hook: Callable[[], None] | None = None

    def source_for(self, loaded: LoadedAudience, as_of: dt.datetime) -> Source:
        source = super().source_for(loaded, as_of)
        if loaded is self.loaded and self.source_hook is not None:
            return HookedSource(source, 1, self.source_hook)
        return source


class DagRun:
    """The audience DAG's tasks in order; ``task`` runs one (again, when it is a retry)."""

    def __init__(self, runner: AudienceRunner, holder: str) -> None:
        self.runner, self.holder = runner, holder
        self.run_id = self.sync_id = 0

    def task(self, name: str) -> Any:
        r = self.runner
        if name == "stage":  # StageAudienceOperator: a retry opens a new run record
            self.run_id = r.start(self.holder, AS_OF)
            return r.stage(self.run_id, self.holder)
        if name == "plan":
            self.sync_id = r.plan(self.run_id, "memory", self.holder).sync_id
            return self.sync_id
        if name == "push":
            return r.push(self.sync_id, "memory", self.holder)
        return r.finish(self.run_id, self.holder)


@dataclasses.dataclass
class World:
    engine: Engine
    fault: Fault
    runner: HookedRunner
    store: MemoryStore
    people: People  # the warehouse table the audience's query reads
    database: str  # how messages must name the state database
    in_database: bool = False  # the source lives in the (Postgres) state database: staged in SQL
    in_doubt: set[str] = dataclasses.field(default_factory=set)
    #: members of batches the destination applied after the fault (on Postgres the next batch is
    #: pushed while the one before commits: ``push._Pipeline``)
    pushed_after: set[str] = dataclasses.field(default_factory=set)
    requests_at_fault: int = 0

    def destination(self) -> dict[str, str | None]:
        return {k: r.email_sha256 for k, r in self.store.audience("aud-1").items()}

    def acked(self) -> dict[str, str | None]:
        a = state.ack
        with self.engine.connect() as conn:
            return dict(
                conn.execute(
                    select(a.c.member_key, a.c.email_sha256).where(a.c.audience == AUD, a.c.rejected.is_(False))
                ).all()
            )

    def recorded_errors(self) -> list[str]:
        with self.engine.connect() as conn:
            errors = conn.execute(select(state.run.c.error).where(state.run.c.audience == AUD)).scalars().all()
            errors += conn.execute(select(state.sync.c.error).where(state.sync.c.audience == AUD)).scalars().all()
        return [e for e in errors if e]


@pytest.fixture
def world_for(
    tmp_path: Path, store: MemoryStore, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Callable[..., World]:
    """Builds the state database, a separate SQLite warehouse, the audience and the fault of a case."""
    monkeypatch.setattr(MemoryDestination, "max_batch_rows", 50)  # several batches, each a real write
    wh = ConnectionInfo("wh", "sqlite", host=str(tmp_path / "warehouse.sqlite"))
    write_audience(
        tmp_path / "aud",
        AUD,
        f"""
        name: {AUD}
        owner: tests
        purpose: state database faults
        source: {{conn_id: wh, query: "SELECT customer_id, email, phone FROM people"}}
        holdout: {{percent: 10, salt: {SALT}}}
        destinations: [{{type: memory, batch_size: 50}}]
        guard: {{max_removal_share: 1}}
    """,
    )

    def build(fault_name: str, in_database: bool = False) -> World:
        if fault_name == DiskFull.name:
            info = ConnectionInfo("data_out_state", "sqlite", host=str(tmp_path / "state.sqlite"))
        else:
            pg: ConnectionInfo = request.getfixturevalue("pg_database")
            info = dataclasses.replace(pg, conn_id="data_out_state", password=PASSWORD)
        engine = engine_for(info)
        ensure_schema(engine)
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        request.addfinalizer(admin.dispose)
        faults: dict[str, Callable[[], Fault]] = {
            "disk_full": lambda: DiskFull(engine),
            "killed": lambda: Killed(admin, str(info.schema), engine),
            "down": lambda: Down(admin, str(info.schema)),
            "read_only": lambda: ReadOnly(admin, str(info.schema)),
        }
        fault = faults[fault_name]()  # no restore on teardown: the test database is dropped WITH (FORCE)
        request.addfinalizer(engine.dispose)
        source = info if in_database else wh
        runner = HookedRunner(
            engine,
            load_audiences(tmp_path / "aud"),
            AUD,
            lambda c: source if c == "wh" else ConnectionInfo(c, "memory"),
            stage_batch_size=50,
        )
        return World(engine, fault, runner, store, People(engine_for(source)), describe(engine), in_database)

    return build


def fault_on_first_add(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Arm the fault once the destination applied the run's first add batch, before state commits it."""
    original = MemoryDestination.push

    def push(self: MemoryDestination, op: Op, rows: list[MemberRow], key: str) -> Any:
        result = original(self, op, rows, key)
        if world.in_doubt:
            world.pushed_after |= {r.member_key for r in rows}
        elif op is Op.ADD:
            world.in_doubt = {r.member_key for r in rows}
            world.requests_at_fault = len(world.store.requests)
            if isinstance(world.fault, Killed):  # the session that commits this batch dies, whichever it is
                # its first write of do_ack: the insert of a batch of new members, or the delete before
                world.fault.when = lambda statement: (
                    statement.lstrip().upper().startswith(("DELETE FROM DO_ACK", "INSERT INTO DO_ACK"))
                )
            world.fault.arm()
        return result

    monkeypatch.setattr(MemoryDestination, "push", push)


def assert_clear(exc: StateDatabaseError, world: World, task: str) -> None:
    msg = str(exc)
    assert f"state database {world.database} unavailable during {task} of audience {AUD}: " in msg, msg
    assert re.search(world.fault.reason, msg), msg
    assert "nothing past the last committed batch was marked as synced" in msg and "retries" in msg
    for noise in ("[SQL", "sqlalche.me", "parameters", PASSWORD):
        assert noise not in msg, msg
    raw = {r["email"] for r in rows_before() + rows_after()} | {r["customer_id"] for r in rows_after()}
    assert not [v for v in raw if v in msg], "a raw identifier reached the message"
    assert exc.__cause__ is None and exc.__suppress_context__, "the driver's exception must not be chained"


CASES = [
    pytest.param(fault, task, id=f"{fault}-{task}") for fault in ("killed", "down", "read_only") for task in TASKS
] + [pytest.param("disk_full", task, id=f"disk_full-{task}") for task in ("stage", "plan", "push")]
# SQLite's finish only updates rows in place, which a full disk does not stop: there is no fault to show.


@pytest.mark.parametrize(("fault_name", "task"), CASES)
def test_state_database_fault_mid_run_fails_clearly_then_converges(
    world_for: Callable[..., World], monkeypatch: pytest.MonkeyPatch, fault_name: str, task: str
):
    fault_mid_run_then_converge(world_for(fault_name), task, monkeypatch)


def test_a_session_killed_during_in_database_staging(world_for: Callable[..., World], monkeypatch: pytest.MonkeyPatch):
    """The Postgres pushdown path: the source is a query on the state database, staged in one SQL transaction."""
    w = world_for("killed", in_database=True)
    assert isinstance(w.fault, Killed)
    w.fault.when = lambda statement: statement.lstrip().upper().startswith("CREATE TEMP TABLE DO_DELTA")
    fault_mid_run_then_converge(w, "stage", monkeypatch)


def fault_mid_run_then_converge(w: World, task: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A first good run; then the fault during ``task`` of the second; then Airflow's retry and the rest."""
    w.people.set(rows_before())
    first = DagRun(w.runner, "dag/run-1")
    for t in TASKS:
        first.task(t)
    synced = w.destination()
    assert synced == desired(rows_before()) == w.acked()

    w.people.set(rows_after())
    w.store.requests.clear()
    dag = DagRun(w.runner, "dag/run-2")
    for t in TASKS[: TASKS.index(task)]:
        dag.task(t)
    if task == "stage" and not w.in_database:
        w.runner.source_hook = w.fault.arm  # after the first source batch was staged
    elif task == "push":
        fault_on_first_add(w, monkeypatch)
    else:
        w.fault.arm()
    with pytest.raises(StateDatabaseError) as failed:
        dag.task(task)
    w.runner.source_hook = None
    assert_clear(failed.value, w, task)

    w.fault.restore()
    acked, held = w.acked(), w.destination()
    assert acked.items() <= held.items(), "state acknowledges members the destination does not hold"
    if task == "push":
        # the applied, uncommitted batch is in doubt, and at most the one pushed while it committed
        assert w.in_doubt <= set(held) - set(acked) <= w.in_doubt | w.pushed_after
        assert len(w.store.requests) <= w.requests_at_fault + 1, "pushed on after the commit failed"
    elif task == "finish":
        assert held == acked == desired(rows_after())  # every batch was pushed and committed before
    else:
        assert held == synced and acked == synced  # nothing was pushed, nothing acknowledged
    assert all("[SQL" not in e for e in w.recorded_errors()), "a statement dump reached the run history"

    for t in TASKS[TASKS.index(task) :]:  # Airflow retries the failed task, then the rest run
        dag.task(t)
    assert w.destination() == desired(rows_after()) == w.acked()
    assert max(w.store.applied_keys.values()) == 1, "a batch was applied twice"
    applied: set[str] = set()
    added: Counter[str] = Counter()
    for op, key, rows in w.store.requests:
        if key not in applied:  # the first request with a key applied it; later ones were replays
            applied.add(key)
            added.update(r.member_key for r in rows if op == "add")
    assert added and max(added.values()) == 1, "a member was added twice"
    lease.acquire(w.engine, AUD, "dag/run-3")  # finish released the lease: the next run can start


# -- where the state database is opened, and what is not a state-database fault ----------------------
def test_a_down_state_database_fails_the_hook_clearly(
    pg_database: ConnectionInfo, pg_admin: Engine, monkeypatch: pytest.MonkeyPatch
):
    """A task opening a state database that is down: the message names the connection id and the database."""
    conn = {"conn_type": "postgres", "host": pg_database.host, "port": pg_database.port, "login": "postgres"}
    monkeypatch.setenv(
        "AIRFLOW_CONN_FAULTY_STATE", json.dumps({**conn, "schema": pg_database.schema, "password": PASSWORD})
    )
    down = Down(pg_admin, str(pg_database.schema))
    down.arm()
    try:
        with pytest.raises(StateDatabaseError) as failed:
            DataOutStateHook("faulty_state").get_conn()
    finally:
        down.restore()
    msg = str(failed.value)
    assert (
        f"state database faulty_state (postgresql://{pg_database.host}:{pg_database.port}/{pg_database.schema})" in msg
    )
    assert "during opening the state database" in msg and "not currently accepting connections" in msg
    assert PASSWORD not in msg and "[SQL" not in msg
    assert DataOutStateHook("faulty_state").get_conn() is not None  # back: the next attempt works


def test_an_unreachable_sqlite_state_file_fails_the_hook_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    missing = tmp_path / "no-such-dir" / "state.db"
    monkeypatch.setenv("AIRFLOW_CONN_FAULTY_SQLITE", json.dumps({"conn_type": "sqlite", "host": str(missing)}))
    with pytest.raises(StateDatabaseError, match=r"state database faulty_sqlite \(sqlite:///.*unable to open"):
        DataOutStateHook("faulty_sqlite").get_conn()


def test_only_outages_of_the_state_engine_are_translated(tmp_path: Path):
    """A warehouse outage and a constraint violation (a bug, not an outage) are not state-database errors:
    they come out as a ``DatabaseError`` naming the driver's error, its text redacted."""
    warehouse = create_engine(f"sqlite:///{tmp_path / 'no-such-dir' / 'wh.db'}")
    with pytest.raises(DatabaseError) as other, translated("push of audience x"):
        warehouse.connect()
    assert str(other.value).startswith("database error during push of audience x: OperationalError: unable to open")
    engine = watch(engine_for(ConnectionInfo("s", "sqlite", host=str(tmp_path / "s.db"))))
    ensure_schema(engine)
    with pytest.raises(DatabaseError) as integrity, translated("start of audience x"), engine.begin() as conn:
        for _ in range(2):
            conn.execute(state.lease.insert().values(audience="x", holder="h", acquired_at=AS_OF, expires_at=AS_OF))
    assert "IntegrityError: UNIQUE constraint failed: do_lease.audience" in str(integrity.value)


class _Failing(AudienceStepOperator):
    def step(self, context: Any) -> Any:
        raise StateDatabaseError(
            "state database sqlite:///s.db unavailable during push of audience x: OperationalError: database or disk "
            "is full; nothing past the last committed batch was marked as synced. Airflow retries the task"
        )


def test_the_operator_lets_airflow_retry_and_the_email_says_what_to_do():
    """Not an AirflowFailException: the task's retries run; the failure email explains the next step."""
    with pytest.raises(StateDatabaseError) as failed:
        _Failing(task_id="push", audience="x").execute({})
    assert "clear the failed task" in next_step_of(failed.value)
