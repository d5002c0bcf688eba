"""Driver messages are cut to what is safe to log: the row a database quotes never reaches a log or a record."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import DBAPIError

from data_out import state
from data_out.config import load_audiences
from data_out.connections import ConnectionInfo, engine_for
from data_out.engine.runner import AudienceRunner, RunFailed
from data_out.redact import driver_line, is_driver_error, scrub
from data_out.state import ensure_schema
from data_out.state.errors import DatabaseError, error_text, translated
from tests.conftest import People

AS_OF = dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC)
EMAIL = "alice.jones@example.com"


def _error(engine: Engine, *statements: str) -> DBAPIError:
    with pytest.raises(DBAPIError) as failed, engine.begin() as conn:
        for sql in statements:
            conn.execute(text(sql))
    return failed.value


@pytest.fixture
def pg(pg_database: ConnectionInfo) -> Engine:
    return engine_for(pg_database)


def test_a_unique_violation_keeps_the_constraint_and_drops_the_key(pg: Engine):
    exc = _error(
        pg,
        "CREATE TABLE t (k text PRIMARY KEY)",
        f"INSERT INTO t VALUES ('{EMAIL}')",
        f"INSERT INTO t VALUES ('{EMAIL}')",
    )
    assert EMAIL in str(exc)  # what the driver's own text would have put in the log
    line = driver_line(exc)
    assert line == 'duplicate key value violates unique constraint "t_pkey"'


def test_a_check_violation_drops_the_failing_row(pg: Engine):
    exc = _error(
        pg,
        "CREATE TABLE t (k text, CONSTRAINT short CHECK (length(k) < 5))",
        "INSERT INTO t VALUES ('cus_8f3a2')",
    )
    assert "Failing row contains (cus_8f3a2)" in str(exc)
    assert driver_line(exc) == 'new row for relation "t" violates check constraint "short"'


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT CAST('cus_8f3a2' AS integer)", 'invalid input syntax for type integer: "<value>"'),
        ("SELECT CAST('99999999999' AS integer)", 'value "<value>" is out of range for type integer'),
        ("SELECT CAST('jane@gmail' AS uuid)", 'invalid input syntax for type uuid: "<value>"'),
    ],
)
def test_values_a_cast_quotes_are_masked(pg: Engine, sql: str, expected: str):
    exc = _error(pg, sql)
    assert driver_line(exc) == expected


def test_a_raw_driver_error_is_recognised_and_masked(pg: Engine):
    """``COPY`` goes through the raw psycopg cursor: its errors are not SQLAlchemy's."""
    with pg.begin() as conn:
        conn.execute(text("CREATE TABLE t (k text PRIMARY KEY)"))
    with pytest.raises(Exception) as failed, pg.begin() as conn:
        cursor = conn.connection.driver_connection.cursor()
        with cursor, cursor.copy("COPY t (k) FROM STDIN") as copy:
            copy.write_row((EMAIL,))
            copy.write_row((EMAIL,))
    exc = failed.value
    assert not isinstance(exc, DBAPIError) and is_driver_error(exc)
    assert EMAIL in str(exc) and EMAIL not in driver_line(exc)
    assert error_text(exc) == 'DatabaseError: UniqueViolation: duplicate key value violates unique constraint "t_pkey"'


def test_single_quoted_values_are_masked():
    """MySQL and others quote values in single quotes."""
    exc = RuntimeError(f"Duplicate entry '{EMAIL}' for key 'PRIMARY'\nmore")
    assert driver_line(exc) == "Duplicate entry '<value>' for key '<value>'"
    assert scrub("call +1 415 555 0123 or mail a@b.co") == "call <number> or mail <email>"


def test_translated_raises_a_redacted_error_without_the_driver_exception(pg: Engine):
    with pytest.raises(DatabaseError) as failed, translated("push of audience x"), pg.begin() as conn:
        conn.execute(text("CREATE TABLE t (k text PRIMARY KEY)"))
        conn.execute(text(f"INSERT INTO t VALUES ('{EMAIL}'), ('{EMAIL}')"))
    exc = failed.value
    assert str(exc) == (
        "database error during push of audience x: UniqueViolation: "
        'duplicate key value violates unique constraint "t_pkey"'
    )
    assert exc.__suppress_context__  # the driver's exception (statement, DETAIL) is not printed with it


def test_translated_lets_other_errors_through():
    with pytest.raises(KeyError), translated("stage of audience x"):
        raise KeyError(EMAIL)


def test_a_warehouse_refusing_rows_fails_the_run_without_quoting_them(
    pg_database: ConnectionInfo, audiences_dir: Path, store: object, caplog: pytest.LogCaptureFixture
):
    """The warehouse destination's table refuses the new members: the push fails, and neither the run's
    error, the run record nor the log holds what Postgres quoted (the failing row)."""
    engine = engine_for(pg_database)
    ensure_schema(engine)
    people = People(engine_for(pg_database))
    old = [{"customer_id": f"cust-{i:03d}", "email": f"person.{i}@example.com"} for i in range(20)]
    new = [{"customer_id": f"new-{i:03d}", "email": f"newcomer.{i}@example.com"} for i in range(10)]

    def resolve(conn_id: str) -> ConnectionInfo:
        return ConnectionInfo(conn_id, "memory") if conn_id == "memory_default" else pg_database

    def runner() -> AudienceRunner:
        return AudienceRunner(engine, load_audiences(audiences_dir), "test_targets_v1", resolve)

    people.set(old)
    runner().run("tests/1", AS_OF)
    with engine.begin() as conn:
        for table in ("audience_test_targets_v1", "audience_test_targets_v1_holdout"):
            conn.execute(text(f"ALTER TABLE {table} ADD CONSTRAINT known_only CHECK (member_key LIKE 'cust-%')"))
    people.set(old + new)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(RunFailed) as failed:
        runner().run("tests/2", AS_OF)

    with engine.connect() as conn:
        sync_errors = conn.execute(select(state.sync.c.error).where(state.sync.c.error.is_not(None))).scalars().all()
    assert sync_errors and all("violates check constraint" in e and "known_only" in e for e in sync_errors)
    texts = [str(failed.value), *sync_errors, caplog.text]
    raw = {r["customer_id"] for r in new} | {r["email"] for r in new}
    assert not [v for v in raw if any(v in t for t in texts)]
    assert not [t for t in texts if "Failing row" in t]
