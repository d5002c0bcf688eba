"""Redshift: the audience query runs in ``BEGIN READ ONLY`` under a transaction-local ``statement_timeout``.

Nothing here reaches Redshift: sqlalchemy-redshift's own dialect (with psycopg2, the driver it documents)
drives the machine's Postgres, whose protocol and these statements Redshift shares (Redshift's SQL
reference: ``BEGIN ... READ ONLY``, ``SET_CONFIG(parameter, value, is_local)``, ``statement_timeout`` in
milliseconds). What is checked is what the
dialect sends and that the database honours it; Redshift's own error for a timeout ("Query ... canceled on
user's request") is matched by the same code as Postgres' ("canceling statement due to statement timeout").
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import psycopg2
import pytest
import sqlglot
from sqlalchemy import Engine, create_engine, event, text
from sqlglot import exp

from data_out.connections import ConnectionInfo
from data_out.sources.base import SourceError
from data_out.sources.warehouse import SqlSource

pytestmark = pytest.mark.postgres


@pytest.fixture
def redshift(pg_database: ConnectionInfo) -> Iterator[tuple[Engine, list[str]]]:
    """An engine of the Redshift dialect over a fresh Postgres database, and the statements SQLAlchemy sends
    through it (psycopg2's own ``BEGIN READ ONLY`` is not among them: the refused ``nextval`` shows it)."""
    info = pg_database
    engine = create_engine(
        "redshift+psycopg2://",
        creator=lambda: psycopg2.connect(host=info.host, port=info.port, user=info.login, dbname=info.schema),
    )
    sent: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda conn, cur, statement, *a: sent.append(statement))
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE people (customer_id text)")
        conn.exec_driver_sql("INSERT INTO people VALUES ('c1'), ('c2')")
    yield engine, sent
    engine.dispose()


def _source(engine: Engine, sql: str, timeout: float = 60) -> SqlSource:
    return SqlSource(engine, sql, {}, ["customer_id"], "audience rs_v1", dt.timedelta(seconds=timeout))


def _read(source: SqlSource) -> list[str]:
    return [row["customer_id"] for batch in source.iter_batches(10) for row in batch]


def test_the_query_reads_under_a_timeout_that_ends_with_it(redshift: tuple[Engine, list[str]]) -> None:
    engine, sent = redshift
    sent.clear()
    assert sorted(_read(_source(engine, "SELECT customer_id FROM people", timeout=90))) == ["c1", "c2"]
    timeout = "SELECT set_config('statement_timeout', %(ms)s, true)"
    assert sent[0] == timeout  # before the query, in its transaction
    tree = sqlglot.parse_one(timeout.replace("%(ms)s", "'90000'"), read="redshift")
    assert [a.sql("redshift") for a in tree.find(exp.Anonymous).expressions] == [
        "'statement_timeout'",
        "'90000'",
        "TRUE",
    ]
    with engine.connect() as conn:  # the pooled connection is back to the server's default and read-write
        assert conn.execute(text("SHOW statement_timeout")).scalar_one() == "0"
        assert conn.execute(text("SHOW transaction_read_only")).scalar_one() == "off"


def test_a_write_is_refused_by_the_read_only_transaction(redshift: tuple[Engine, list[str]]) -> None:
    engine, _ = redshift
    source = _source(engine, "WITH gone AS (DELETE FROM people RETURNING customer_id) SELECT * FROM gone")
    with pytest.raises(SourceError, match="tried to change the database and was refused"):
        _read(source)
    source = _source(engine, "SELECT customer_id FROM people WHERE nextval('s') > 0")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE SEQUENCE s")
    with pytest.raises(SourceError, match="refused"):
        _read(source)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM people")).scalar_one() == 2


def test_a_query_past_its_timeout_is_cancelled(redshift: tuple[Engine, list[str]]) -> None:
    engine, _ = redshift
    with pytest.raises(SourceError, match="ran longer than its statement timeout"):
        _read(_source(engine, "SELECT customer_id FROM people, pg_sleep(5)", timeout=0.2))
