"""A ``redshift`` connection resolves to sqlalchemy-redshift's dialect over its hook's own connections.

The Amazon provider is not installed here, so a stand-in SQL hook is registered for the ``redshift`` type:
its ``get_conn`` returns a psycopg2 connection to the machine's Postgres (15, which has MERGE), and the
dialect is sqlalchemy-redshift's ``redshift+psycopg2`` instead of the ``redshift+redshift_connector``
the resolver uses with the real hook (whose ``get_conn`` returns a redshift_connector connection, which
cannot reach Postgres). Each test runs in psycopg2's paramstyle (``%(name)s``) and in redshift_connector's
(``%s``, positional), which psycopg2 also takes. What is checked: the engine speaks the Redshift dialect,
every pooled connection comes from ``get_conn``, the warehouse destination writes through MERGE (run for
real), and the source reads read-only under its timeout, also through the ``BEGIN READ ONLY`` path of a
driver without a read-only session (redshift_connector's case).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
from airflow.providers.common.sql.hooks.sql import DbApiHook
from sqlalchemy import Engine, create_engine, event, text

from data_out import connections
from data_out.connections import ConnectionInfo, engine_for
from data_out.destinations.base import MemberRow, Op
from data_out.destinations.warehouse.destination import WarehouseDestination
from data_out.destinations.warehouse.settings import WarehouseSettings
from data_out.sources.base import SourceError
from data_out.sources.warehouse import SqlSource

pytestmark = pytest.mark.postgres

#: every connection the stand-in hook handed out, in order
CONNECTIONS_MADE: list[Any] = []


class StandInRedshiftHook(DbApiHook):
    """Takes the place of ``RedshiftSQLHook``: a SQL hook whose ``get_conn`` makes a DB-API connection from
    the connection it was handed, and whose own engine would be Postgres' (as the provider's is)."""

    conn_name_attr = "redshift_conn_id"
    default_conn_name = "redshift_default"
    conn_type = "redshift"

    def get_conn(self) -> Any:
        c = self.connection
        raw = psycopg2.connect(host=c.host, port=c.port, user=c.login, dbname=c.schema)
        CONNECTIONS_MADE.append(raw)
        return raw

    def get_sqlalchemy_engine(self, engine_kwargs: Any = None) -> Engine:  # pragma: no cover - must not be used
        raise AssertionError("the resolver must not take the hook's Postgres-dialect engine")


@pytest.fixture(params=["pyformat", "format"])
def redshift(
    pg_database: ConnectionInfo, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[ConnectionInfo]:
    monkeypatch.setitem(connections.SQL_HOOKS, "redshift", (f"{__name__}.StandInRedshiftHook", "redshift"))
    monkeypatch.setitem(connections.HOOK_CONNECTION_DIALECTS, "redshift", "redshift+psycopg2")
    monkeypatch.setattr(connections, "create_engine", functools.partial(create_engine, paramstyle=request.param))
    CONNECTIONS_MADE.clear()
    pg = pg_database
    info = ConnectionInfo("rs", "redshift", pg.host, pg.port, pg.login, None, pg.schema)
    yield info
    connections.dispose(info)


def _statements(engine: Engine) -> list[str]:
    sent: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda conn, cur, statement, *a: sent.append(statement))
    return sent


def test_the_engine_speaks_redshift_over_the_hooks_connections(redshift: ConnectionInfo) -> None:
    engine = engine_for(redshift)
    assert engine.dialect.name == "redshift"
    assert engine.dialect.driver == "psycopg2"
    assert engine.pool.size() == 2 and engine.hide_parameters  # Data Out's pool settings, as for any engine
    with engine.connect() as a, engine.connect() as b:  # two at once: two connections from get_conn
        assert {a.connection.driver_connection, b.connection.driver_connection} == set(CONNECTIONS_MADE)
    assert len(CONNECTIONS_MADE) == 2
    with engine.connect() as c:  # pooled: no third call
        assert c.execute(text("SELECT 1")).scalar_one() == 1
    assert len(CONNECTIONS_MADE) == 2


def test_the_destination_writes_through_merge(redshift: ConnectionInfo) -> None:
    dest = WarehouseDestination("aud_v1", WarehouseSettings(type="warehouse"), redshift)
    sent = _statements(dest.engine)
    rows = [MemberRow(k, None, None, None, None, False) for k in ("a", "b")]
    assert dest.push(Op.ADD, rows, "add-1").received == 2
    writes = [s for s in sent if s.lstrip().upper().startswith(("MERGE", "INSERT"))]
    assert len(writes) == 2 and all(s.startswith("MERGE INTO ") for s in writes)  # ledger, then members
    assert not any("ON CONFLICT" in s or "RETURNING" in s for s in sent)
    assert not dest.push(Op.ADD, rows, "add-1").received  # a replay: the ledger's MERGE added nothing
    assert dest.push(Op.ADD, [rows[1], MemberRow("c", None, None, None, None, False)], "add-2").received == 2
    dest.push(Op.REMOVE, [rows[0]], "remove-1")
    with dest.engine.connect() as conn:
        assert sorted(conn.scalars(text("SELECT member_key FROM audience_aud_v1"))) == ["b", "c"]
        assert conn.execute(text("SELECT count(*) FROM data_out_applied_batches")).scalar_one() == 3
    assert dest.size() == 2


def _source(engine: Engine, sql: str, timeout: float = 60) -> SqlSource:
    return SqlSource(engine, sql, {}, ["customer_id"], "audience rs_v1", dt.timedelta(seconds=timeout))


def _read(source: SqlSource) -> list[str]:
    return [row["customer_id"] for batch in source.iter_batches(10) for row in batch]


@pytest.mark.parametrize("session", ["read-only session", "no read-only session"])
def test_the_source_reads_read_only_under_its_timeout(
    redshift: ConnectionInfo, monkeypatch: pytest.MonkeyPatch, session: str
) -> None:
    engine = engine_for(redshift)
    if session == "no read-only session":  # as sqlalchemy-redshift's redshift_connector dialect (Postgres' base)

        def no_session(dbapi_conn: Any, value: bool) -> None:
            raise NotImplementedError

        monkeypatch.setattr(engine.dialect, "set_readonly", no_session)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE people (customer_id text)")
        conn.exec_driver_sql("INSERT INTO people VALUES ('c1'), ('c2')")
        conn.exec_driver_sql("CREATE SEQUENCE s")
    sent = _statements(engine)
    probe = "SELECT customer_id FROM people WHERE current_setting('transaction_read_only') = 'on'"
    probe += " AND current_setting('statement_timeout') = '90s'"
    assert sorted(_read(_source(engine, probe, timeout=90))) == ["c1", "c2"]  # both settings hold for the query
    ms = "%s" if engine.dialect.paramstyle == "format" else "%(ms)s"
    timeout = f"SELECT set_config('statement_timeout', {ms}, true)"
    assert sent[:2] == (["BEGIN READ ONLY", timeout] if session == "no read-only session" else [timeout, probe])
    with pytest.raises(SourceError, match="tried to change the database and was refused"):  # by read-only mode
        _read(_source(engine, "SELECT customer_id FROM people WHERE nextval('s') > 0"))
    with pytest.raises(SourceError, match="ran longer than its statement timeout"):
        _read(_source(engine, "SELECT customer_id FROM people, pg_sleep(5)", timeout=0.2))
    with engine.connect() as conn:  # nothing written; the pooled connection is back to read-write, no timeout
        assert conn.execute(text("SELECT count(*) FROM people")).scalar_one() == 2
        assert conn.execute(text("SHOW transaction_read_only")).scalar_one() == "off"
        assert conn.execute(text("SHOW statement_timeout")).scalar_one() == "0"
        assert conn.execute(text("SELECT nextval('s')")).scalar_one() == 1  # read-write again
    assert all(not raw.autocommit for raw in CONNECTIONS_MADE)
