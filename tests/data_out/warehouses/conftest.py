"""The four SQL databases tested for real here: SQLite, Postgres, MariaDB (127.0.0.1:3306) and DuckDB."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from data_out import connections
from data_out.connections import ConnectionInfo

MARIADB_ADMIN_URL = os.environ.get("DATA_OUT_TEST_MARIADB_URL", "mysql://root@127.0.0.1:3306/test")
KINDS = ["sqlite", "postgres", "mariadb", "duckdb"]


@pytest.fixture(scope="session")
def mariadb_admin() -> Engine:
    """The machine's MariaDB. Tests that need it fail (never skip) when it is down (.ci/run starts it)."""
    engine = create_engine(MARIADB_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        engine.connect().close()
    except Exception as exc:  # pragma: no cover - environment problem, reported loudly
        pytest.fail(f"MariaDB is required at {MARIADB_ADMIN_URL} (start it, or set DATA_OUT_TEST_MARIADB_URL): {exc}")
    return engine


@pytest.fixture
def mariadb_database(mariadb_admin: Engine) -> Iterator[ConnectionInfo]:
    """A fresh MariaDB database for one test, dropped afterwards."""
    name = f"do_test_{uuid.uuid4().hex[:12]}"
    with mariadb_admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    url = mariadb_admin.url
    info = ConnectionInfo("mdb", "mysql", host=url.host, port=url.port, login=url.username, schema=name)
    yield info
    connections.dispose(info)
    with mariadb_admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))


def database(kind: str, request: pytest.FixtureRequest, tmp_path: Path, conn_id: str = "wh") -> ConnectionInfo:
    """A fresh, empty database of ``kind`` reached through an Airflow-style connection."""
    if kind == "sqlite":
        return ConnectionInfo(conn_id, "sqlite", host=str(tmp_path / f"{conn_id}.sqlite"))
    if kind == "duckdb":
        return ConnectionInfo(conn_id, "duckdb", host=str(tmp_path / f"{conn_id}.duckdb"))
    info = request.getfixturevalue("pg_database" if kind == "postgres" else "mariadb_database")
    return ConnectionInfo(conn_id, info.conn_type, info.host, info.port, info.login, info.password, info.schema)


@pytest.fixture(params=KINDS)
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ConnectionInfo]:
    info = database(request.param, request, tmp_path)
    yield info
    connections.dispose(info)
