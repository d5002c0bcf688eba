"""Engines come from the connection type's Airflow SQL hook, not from URLs built here."""

from __future__ import annotations

import subprocess
import sys

import pytest

from data_out.connections import SQL_HOOKS, ConnectionInfo, UnsupportedConnection, dispose, engine_for


def test_postgres_is_resolved_by_postgres_hook_with_its_extras() -> None:
    """``sqlalchemy_query`` is PostgresHook's extra: it reaches the URL only through the hook."""
    info = ConnectionInfo(
        "pg_app",
        "postgres",
        host="127.0.0.1",
        port=5432,
        login="postgres",
        schema="postgres",
        extra={"sqlalchemy_query": {"application_name": "data_out_test"}},
    )
    engine = engine_for(info)
    try:
        assert engine.url.drivername == "postgresql+psycopg"
        assert engine.url.query == {"application_name": "data_out_test"}
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW application_name").scalar() == "data_out_test"
    finally:
        dispose(info)


def test_mysql_is_resolved_by_mysql_hook_and_its_client_choice() -> None:
    info = ConnectionInfo(
        "my", "mysql", host="127.0.0.1", port=3306, login="root", schema="test", extra={"client": "pymysql"}
    )
    engine = engine_for(info)
    try:
        assert engine.url.drivername == "mysql+pymysql"  # MySqlHook's "client" extra picks the driver
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT 1").scalar() == 1
    finally:
        dispose(info)


def test_the_same_database_shares_one_engine() -> None:
    """The state database and a source on it must be one engine: the in-database staging path needs it."""
    a = ConnectionInfo("data_out_state", "postgres", host="127.0.0.1", port=5432, login="postgres", schema="postgres")
    b = ConnectionInfo(
        "data_out_warehouse", "postgres", host="127.0.0.1", port=5432, login="postgres", schema="postgres"
    )
    assert engine_for(a) is engine_for(b)


@pytest.mark.parametrize(
    ("conn_type", "message"),
    [
        ("http", "whose hook HttpHook is not a SQL"),
        ("acme", r"provider is not installed; pip install 'data-out-airflow\[acme\]'"),
        ("no_such_type", "which no installed Airflow provider serves"),
    ],
)
def test_connections_that_are_not_a_usable_sql_database(
    conn_type: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(SQL_HOOKS, "acme", ("acme_provider.hooks.sql.AcmeSqlHook", "acme"))  # not installed
    with pytest.raises(UnsupportedConnection, match=message) as err:
        engine_for(ConnectionInfo("wh_conn", conn_type, host="h", password="s3cret-value"))
    assert "wh_conn" in str(err.value)
    assert "s3cret-value" not in str(err.value)


def test_the_pure_modules_do_not_import_airflow() -> None:
    code = (
        "import sys; import data_out.connections, data_out.dialects, data_out.sources.warehouse; "
        "print(any(m == 'airflow' or m.startswith('airflow.') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
