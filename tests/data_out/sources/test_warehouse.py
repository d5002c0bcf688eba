"""Audience SQL runs read-only and under a time limit, on SQLite and on a real Postgres.

Each case runs a whole audience (``AudienceRunner``) whose query tries a side effect, and checks that
the run fails with a message naming the audience and what to do, and that the warehouse is unchanged.
On Postgres both staging paths are covered: the warehouse in another database (rows streamed to
Python) and the warehouse in the state database itself (staged in SQL, ``stage_sql.py``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, select, text

from data_out import state
from data_out.config import load_audiences
from data_out.connections import ConnectionInfo, engine_for
from data_out.engine.runner import AudienceRunner
from data_out.sources.base import SourceError
from data_out.sources.warehouse import SqlSource
from data_out.state import ensure_schema
from tests.conftest import write_audience

AUD = "readonly_source_v1"
AS_OF = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


class World:
    """A warehouse with ``people`` (and a sequence on Postgres), a state database, one audience."""

    def __init__(self, tmp: Path, warehouse: ConnectionInfo, state_info: ConnectionInfo) -> None:
        self.tmp, self.warehouse, self.state_info = tmp, warehouse, state_info
        self.wh = engine_for(warehouse)
        self.state = engine_for(state_info)
        ensure_schema(self.state)
        with self.wh.begin() as conn:
            conn.execute(text("CREATE TABLE people (customer_id VARCHAR(64), email VARCHAR(400))"))
            conn.execute(
                text("INSERT INTO people VALUES (:c, :e)"),
                [{"c": f"c{i}", "e": f"p{i}@example.com"} for i in range(20)],
            )
            if self.wh.dialect.name == "postgresql":
                conn.execute(text("CREATE SEQUENCE seq"))
        self.run_no = 0

    def audience(self, query: str, timeout: str = "15m") -> None:
        write_audience(
            self.tmp / "aud",
            AUD,
            f"""
            name: {AUD}
            owner: tests
            purpose: read-only source
            source: {{conn_id: wh, statement_timeout: {timeout}, query: "{query}"}}
            destinations: [{{type: memory}}]
            guard: {{allow_empty_source: true, max_removal_share: 1}}
            """,
        )

    def resolve(self, conn_id: str) -> ConnectionInfo:
        return self.warehouse if conn_id == "wh" else ConnectionInfo(conn_id, "memory")

    def run(self) -> dict:
        self.run_no += 1
        runner = AudienceRunner(self.state, load_audiences(self.tmp / "aud"), AUD, self.resolve)
        try:
            run_id = runner.run(f"t/{self.run_no}", AS_OF)
        except Exception:  # noqa: BLE001 - the run record says why; the test reads it
            run_id = None
        with self.state.connect() as conn:
            r = state.run
            if run_id is None:
                run_id = conn.scalar(select(r.c.id).order_by(r.c.id.desc()).limit(1))
            return dict(conn.execute(select(r).where(r.c.id == run_id)).mappings().one())

    def people(self) -> int:
        with self.wh.connect() as conn:
            return int(conn.scalar(text("SELECT count(*) FROM people")))

    def scalar(self, sql: str) -> object:
        with self.wh.connect() as conn:
            return conn.scalar(text(sql))


@pytest.fixture
def sqlite_world(tmp_path: Path) -> World:
    return World(tmp_path, ConnectionInfo("wh", "sqlite", host=str(tmp_path / "wh.sqlite")), _sqlite_state(tmp_path))


def _sqlite_state(tmp: Path) -> ConnectionInfo:
    return ConnectionInfo("db", "sqlite", host=str(tmp / "state.sqlite"))


@pytest.fixture(params=["streamed", "in_database"])
def pg_world(request: pytest.FixtureRequest, tmp_path: Path, pg_database: ConnectionInfo) -> World:
    """The Postgres warehouse with the state elsewhere (streamed), or in the same database (staged in SQL)."""
    state_info = _sqlite_state(tmp_path) if request.param == "streamed" else pg_database
    return World(tmp_path, pg_database, state_info)


def _refused(run: dict, *words: str) -> None:
    assert run["status"] == "failed", run
    error = run["error"] or ""
    assert f"audience {AUD}" in error, error
    for w in words:
        assert w in error, error


# -- SQLite -----------------------------------------------------------------------------------------
def test_sqlite_delete_returning_is_refused_and_nothing_changes(sqlite_world: World):
    w = sqlite_world
    w.audience("WITH z AS (SELECT 1) DELETE FROM people RETURNING customer_id, email")
    _refused(w.run(), "tried to change the database", "read-only", "must be a SELECT")
    assert w.people() == 20


def test_sqlite_query_only_is_reset_on_the_pooled_connection(tmp_path: Path):
    """Warehouse and state in one SQLite file share one engine: after the read, the state still writes."""
    info = ConnectionInfo("wh", "sqlite", host=str(tmp_path / "one.sqlite"))
    w = World(tmp_path, info, info)
    w.audience("WITH z AS (SELECT 1) DELETE FROM people RETURNING customer_id, email")
    _refused(w.run(), "tried to change the database")
    w.audience("SELECT customer_id, email FROM people")
    run = w.run()
    assert (run["status"], run["members"]) == ("success", 20)
    with w.wh.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA query_only").scalar() == 0


def test_sqlite_statement_timeout_cancels_a_runaway_query(tmp_path: Path):
    engine = engine_for(ConnectionInfo("wh", "sqlite", host=str(tmp_path / "slow.sqlite")))
    # about ten seconds of work that yields no row: only the timeout ends it sooner
    forever = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000000) "
        "SELECT x AS customer_id FROM c WHERE x < 0"
    )
    source = SqlSource(engine, forever, {}, ["customer_id"], "audience slow_v1", dt.timedelta(seconds=0.3))
    with pytest.raises(SourceError, match=r"longer than its statement timeout \(0.3s\)") as caught:
        list(source.iter_batches(100))
    assert caught.value.retryable is False


# -- Postgres ---------------------------------------------------------------------------------------
def test_pg_nextval_is_refused_and_the_sequence_does_not_move(pg_world: World):
    w = pg_world
    w.audience("SELECT customer_id, email, nextval('seq') AS n FROM people")
    _refused(w.run(), "tried to change the database", "nextval")
    assert w.scalar("SELECT last_value FROM seq") == 1 and w.scalar("SELECT is_called FROM seq") is False


@pytest.mark.parametrize(
    "query",
    [
        "WITH z AS (SELECT 1) DELETE FROM people RETURNING customer_id, email",
        "WITH d AS (DELETE FROM people RETURNING customer_id, email) SELECT customer_id, email FROM d",
    ],
)
def test_pg_delete_returning_is_refused(pg_world: World, query: str):
    """Postgres refuses a DELETE inside the cursor or subquery the query is read through; read-only mode
    stands behind that."""
    w = pg_world
    w.audience(query)
    _refused(w.run(), "tried to change the database", "must be a SELECT")
    assert w.people() == 20


def test_pg_large_objects_never_land(pg_world: World):
    """Read-only mode lets ``lo_from_bytea`` through: the streamed read is rolled back, the in-database
    section compares the count and refuses the run."""
    w = pg_world
    w.audience("SELECT customer_id, email, lo_from_bytea(0, 'x') AS o FROM people")
    run = w.run()
    assert w.scalar("SELECT count(*) FROM pg_largeobject_metadata") == 0
    if w.state_info == w.warehouse:
        _refused(run, "large objects")
    else:
        assert run["status"] == "success"


def test_pg_statement_timeout(pg_world: World):
    w = pg_world
    w.audience("SELECT customer_id, email FROM people WHERE pg_sleep(0.2) IS NOT NULL", timeout="1s")
    _refused(w.run(), "longer than its statement timeout (1s)", "source.statement_timeout")


def test_pg_a_plain_select_still_stages_after_a_refusal(pg_world: World):
    """The refusal rolled back cleanly: timeouts and read-only mode do not leak into the next run."""
    w = pg_world
    w.audience("SELECT customer_id, email, nextval('seq') AS n FROM people")
    w.run()
    w.audience("SELECT customer_id, email FROM people")
    run = w.run()
    assert (run["status"], run["members"]) == ("success", 20)


# -- the documented read-only role ------------------------------------------------------------------
def _role_sql(path: Path) -> str:
    """The role's SQL exactly as docs/sources.md shows it (the block after the ROLE-SQL marker)."""
    doc = path.read_text(encoding="utf-8")
    block = doc.split("<!-- read-only role -->", 1)[1].split("```sql", 1)[1].split("```", 1)[0]
    return block


@pytest.fixture
def reader(pg_database: ConnectionInfo, pg_admin: Engine) -> Iterator[Callable[[str], ConnectionInfo]]:
    """The documented role, created for real under a unique name, and an ordinary login role (as Data Out's
    state role is) whose sessions it must not be able to end; both dropped afterwards."""
    tag = uuid.uuid4().hex[:8]
    role, other = f"do_reader_{tag}", f"do_other_{tag}"
    sql = (
        _role_sql(Path(__file__).resolve().parents[3] / "docs" / "sources.md")
        .replace("data_out_reader", role)
        .replace("analytics_warehouse", pg_database.schema or "")
        .replace("change-me", uuid.uuid4().hex)
    )
    owner = create_engine(pg_admin.url.set(database=pg_database.schema), isolation_level="AUTOCOMMIT")
    with owner.connect() as conn:
        conn.execute(text("CREATE TABLE people (customer_id VARCHAR(64), email VARCHAR(400))"))
        conn.execute(
            text("INSERT INTO people SELECT 'c' || g, 'p' || g || '@example.com' FROM generate_series(1, 20) g")
        )
        conn.execute(text("CREATE SEQUENCE seq"))
        conn.exec_driver_sql(sql)
        conn.execute(text(f'CREATE ROLE "{other}" LOGIN'))
        conn.execute(text(f'GRANT CONNECT ON DATABASE "{pg_database.schema}" TO "{other}"'))

    def login(name: str) -> ConnectionInfo:
        login = {"reader": role, "other": other}[name]
        return ConnectionInfo(
            name, "postgres", host=pg_database.host, port=pg_database.port, login=login, schema=pg_database.schema
        )

    yield login
    for name in ("reader", "other"):
        engine_for(login(name)).dispose()
    with owner.connect() as conn:
        for r in (role, other):
            conn.execute(text(f'DROP OWNED BY "{r}"'))
            conn.execute(text(f'DROP ROLE "{r}"'))
    owner.dispose()


def test_the_documented_role_cannot_terminate_sessions_or_write(
    reader: Callable[[str], ConnectionInfo], pg_admin: Engine, tmp_path: Path
):
    engine = engine_for(reader("reader"))
    for victim_engine, said in (
        (engine_for(reader("other")), "must be a member of the role whose process is being terminated"),
        (pg_admin, "must be a superuser to terminate superuser process"),
    ):
        with victim_engine.connect() as victim:
            pid = victim.scalar(text("SELECT pg_backend_pid()"))
            sql = f"SELECT 'c1' AS customer_id, pg_terminate_backend({pid}) AS k"
            with pytest.raises(SourceError) as refused:
                list(SqlSource(engine, sql, {}, [], "audience r").iter_batches(10))
            message = str(refused.value)
            assert message.startswith("audience r: ") and said in message and "may only read" in message
            assert refused.value.retryable is False
            assert victim.scalar(text("SELECT 1")) == 1  # still alive
    for sql in (
        "WITH d AS (DELETE FROM people RETURNING customer_id) SELECT customer_id FROM d",
        "SELECT nextval('seq') AS customer_id",
    ):
        with pytest.raises(SourceError):
            list(SqlSource(engine, sql, {}, [], "audience r").iter_batches(10))
    # a session of the role is read-only by default, even outside Data Out's own transaction
    with engine.connect() as conn:
        assert conn.scalar(text("SHOW default_transaction_read_only")) == "on"
        with pytest.raises(Exception, match="read-only transaction|permission denied"):
            conn.execute(text("INSERT INTO people VALUES ('x', 'y')"))
    rows = list(SqlSource(engine, "SELECT customer_id FROM people", {}, [], "audience r").iter_batches(100))
    assert sum(len(b) for b in rows) == 20


def test_pg_in_database_halves_and_exclusions_are_read_only_too(
    tmp_path: Path, pg_database: ConnectionInfo, monkeypatch: pytest.MonkeyPatch
):
    """The diff in two halves (a helper connection) and an excluded audience's keys evaluate SQL too."""
    from data_out.engine import stage_sql

    w = World(tmp_path, pg_database, pg_database)
    monkeypatch.setattr(stage_sql, "SPLIT_MIN_MEMBERS", 0)  # always two halves
    w.audience("SELECT customer_id, email, nextval('seq') AS n FROM people")
    _refused(w.run(), "tried to change the database", "nextval")
    write_audience(
        tmp_path / "aud",
        "excluded_v1",
        """
        name: excluded_v1
        owner: tests
        purpose: an exclusion whose query writes
        source: {conn_id: wh, query: "SELECT customer_id, setval('seq', 99) AS s FROM people"}
        destinations: [{type: memory, audience_id: other}]
        """,
    )
    w.audience("SELECT customer_id, email FROM people")
    path = tmp_path / "aud" / f"{AUD}.yaml"
    path.write_text(path.read_text() + "exclusions: [excluded_v1]\n")
    run = w.run()
    assert run["status"] == "failed" and "excluded_v1" in run["error"] and "tried to change" in run["error"]
    assert w.scalar("SELECT last_value FROM seq") == 1
