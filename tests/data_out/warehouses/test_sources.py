"""Sources on MariaDB and DuckDB (and the same checks on SQLite and Postgres): streamed reads, read-only,
the statement timeout, and SQL written in another dialect translated before it runs."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import text

from data_out.config import ConfigFileError, load_file
from data_out.connections import ConnectionInfo, engine_for
from data_out.sources.base import SourceError
from data_out.sources.warehouse import SqlSource, window_params
from tests.conftest import write_audience
from tests.data_out.warehouses.conftest import database

AS_OF = dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC)


def _people(info: ConnectionInfo, n: int = 30) -> None:
    with engine_for(info).begin() as conn:
        conn.execute(text("CREATE TABLE people (customer_id VARCHAR(64), email VARCHAR(400), seen_at TIMESTAMP)"))
        conn.execute(
            text("INSERT INTO people VALUES (:c, :e, :t)"),
            [
                {"c": f"c{i:03d}", "e": f"P{i}@Example.com", "t": AS_OF.replace(tzinfo=None) - dt.timedelta(hours=i)}
                for i in range(n)
            ],
        )


def _source(info: ConnectionInfo, sql: str, timeout: float = 60, dialect: str | None = None) -> SqlSource:
    return SqlSource(
        engine_for(info),
        sql,
        window_params(AS_OF, {"since": dt.timedelta(hours=10)}),
        ["customer_id"],
        label="audience t_v1 (test)",
        statement_timeout=dt.timedelta(seconds=timeout),
        dialect=dialect,
    )


def _keys(source: SqlSource, batch: int = 7) -> list[str]:
    return sorted(r["customer_id"] for rows in source.iter_batches(batch) for r in rows)


def test_reads_members_with_a_bound_time_window(warehouse: ConnectionInfo) -> None:
    _people(warehouse)
    sql = "SELECT customer_id, email FROM people WHERE seen_at >= :since AND seen_at <= :as_of"
    assert _keys(_source(warehouse, sql)) == [f"c{i:03d}" for i in range(11)]  # 0..10 hours ago


def test_a_write_is_refused_and_nothing_changes(warehouse: ConnectionInfo) -> None:
    _people(warehouse)
    engine = engine_for(warehouse)
    for sql in ("DELETE FROM people", "DROP TABLE people"):
        with pytest.raises(SourceError) as err:
            _keys(_source(warehouse, sql))
        assert "audience t_v1" in str(err.value)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM people")).scalar() == 30


@pytest.mark.parametrize("kind", ["mariadb", "duckdb"])
def test_a_query_past_its_statement_timeout_is_cancelled(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    info = database(kind, request, tmp_path)
    _people(info)
    slow = {
        "mariadb": "SELECT customer_id FROM people WHERE SLEEP(5) = 0",
        "duckdb": "SELECT customer_id FROM people, range(2000000000) r WHERE r.range = -1",
    }[kind]
    with pytest.raises(SourceError, match="statement timeout") as err:
        _keys(_source(info, slow, timeout=1))
    assert err.value.retryable is False
    # the pooled connection is back to normal: no read-only transaction, no time limit left behind
    engine = engine_for(info)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO people (customer_id) VALUES ('after')"))
        if kind == "mariadb":
            assert conn.execute(text("SELECT @@session.max_statement_time")).scalar() == 0
    assert "after" in _keys(_source(info, "SELECT customer_id FROM people"))


def test_mariadb_refuses_a_write_inside_a_select(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """START TRANSACTION READ ONLY is what refuses it (error 1792), not the single-SELECT check."""
    info = database("mariadb", request, tmp_path)
    _people(info)
    with engine_for(info).begin() as conn:
        conn.execute(text("CREATE TABLE log (n INT)"))
        conn.execute(
            text("CREATE FUNCTION note() RETURNS INT MODIFIES SQL DATA BEGIN INSERT INTO log VALUES (1); RETURN 1; END")
        )
    with pytest.raises(SourceError, match="tried to change the database"):
        _keys(_source(info, "SELECT customer_id FROM people WHERE note() = 1"))
    with engine_for(info).connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM log")).scalar() == 0


def test_sql_written_for_postgres_runs_on_mariadb_once_it_says_so(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    info = database("mariadb", request, tmp_path)
    _people(info)
    sql = "SELECT customer_id FROM people WHERE email ILIKE 'p1%@example.com' AND seen_at >= :since::timestamp"
    with pytest.raises(SourceError, match="query failed"):  # MariaDB has neither ILIKE nor ::
        _keys(_source(info, sql))
    assert _keys(_source(info, sql, dialect="postgres")) == ["c001", "c010"]


def test_a_query_that_does_not_parse_in_its_dialect_fails_validation(tmp_path: Path) -> None:
    d = tmp_path / "aud"
    write_audience(
        d,
        "t_v1",
        """
        name: t_v1
        owner: tests
        purpose: dialect check
        source: {conn_id: wh, dialect: snowflake, query: "SELEC customer_id FRM people"}
        destinations: [{type: memory}]
        """,
    )
    with pytest.raises(ConfigFileError, match="does not parse as snowflake SQL") as err:
        load_file(d / "t_v1.yaml")
    assert err.value.errors[0].field == "source.query"


@pytest.mark.parametrize(("kind", "cursor"), [("mariadb", "SSCursor"), ("postgres", "ServerCursor")])
def test_rows_come_through_a_server_side_cursor(
    kind: str, cursor: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """What keeps staging's memory flat (docs/warehouses.md): the driver does not fetch the whole result."""
    from sqlalchemy import event

    info = database(kind, request, tmp_path)
    _people(info)
    engine = engine_for(info)
    seen: list[str] = []

    def spy(conn, cur, statement, *args):  # type: ignore[no-untyped-def]
        if "FROM people" in statement:
            seen.append(type(cur).__name__)

    event.listen(engine, "before_cursor_execute", spy)
    try:
        assert len(_keys(_source(info, "SELECT customer_id FROM people"))) == 30
    finally:
        event.remove(engine, "before_cursor_execute", spy)
    assert seen == [cursor]
