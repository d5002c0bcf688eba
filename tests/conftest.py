"""Shared fixtures: state databases (SQLite file and a fresh Postgres database), connections, audiences."""

from __future__ import annotations

import os
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# The same project-local Airflow the Makefile prepares, also when pytest is run by hand (before any
# test module imports airflow and reads its configuration).
_ROOT = Path(__file__).resolve().parents[1]
for _key, _value in {
    "AIRFLOW_HOME": _ROOT / ".airflow",
    "AIRFLOW__CORE__DAGS_FOLDER": _ROOT / "dags",
    "AIRFLOW__CORE__PLUGINS_FOLDER": _ROOT / "plugins",
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
}.items():
    os.environ.setdefault(_key, str(_value))

from sqlalchemy import Engine, create_engine, text

from data_out import connections
from data_out.connections import ConnectionInfo, engine_for
from data_out.state import ensure_schema

# Registers the "memory" destination before any audience file is validated.
from tests.support import memory_destination

PG_ADMIN_URL = os.environ.get("DATA_OUT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def pg_admin() -> Engine:
    """The machine's PostgreSQL. Tests that need it fail (never skip) when it is down."""
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        engine.connect().close()
    except Exception as exc:  # pragma: no cover - environment problem, reported loudly
        pytest.fail(f"PostgreSQL is required at {PG_ADMIN_URL} (start it, or set DATA_OUT_TEST_PG_URL): {exc}")
    return engine


@pytest.fixture
def pg_database(pg_admin: Engine) -> Iterator[ConnectionInfo]:
    """A fresh, empty Postgres database for one test, dropped afterwards."""
    name = f"do_test_{uuid.uuid4().hex[:12]}"
    with pg_admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = pg_admin.url
    info = ConnectionInfo("pg", "postgres", host=url.host, port=url.port, login=url.username, schema=name)
    yield info
    connections.dispose(info)
    with pg_admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def airflow_conn(info: ConnectionInfo) -> str:
    """The JSON form of an ``AIRFLOW_CONN_*`` variable for a database connection."""
    import json

    return json.dumps(
        {"conn_type": info.conn_type, "host": info.host, "port": info.port, "login": info.login, "schema": info.schema}
    )


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> ConnectionInfo:
    """State and warehouse on the same kind of database: runs each test on SQLite and on Postgres."""
    if request.param == "sqlite":
        return ConnectionInfo("db", "sqlite", host=str(tmp_path / "db.sqlite"))
    return request.getfixturevalue("pg_database")


@pytest.fixture
def store() -> Iterator[memory_destination.MemoryStore]:
    memory_destination.STORE.__init__()  # type: ignore[misc]
    yield memory_destination.STORE


@pytest.fixture
def resolver(backend: ConnectionInfo) -> Callable[[str], ConnectionInfo]:
    def resolve(conn_id: str) -> ConnectionInfo:
        if conn_id == "memory_default":
            return ConnectionInfo(conn_id, "memory")
        return backend

    return resolve


@pytest.fixture
def state_engine(backend: ConnectionInfo) -> Engine:
    engine = engine_for(backend)
    ensure_schema(engine)
    return engine


PEOPLE_DDL = """
CREATE TABLE people (
    customer_id VARCHAR(64),
    email VARCHAR(400),
    phone VARCHAR(64),
    in_audience INTEGER NOT NULL DEFAULT 1,
    bought INTEGER NOT NULL DEFAULT 0
)
"""


class People:
    """The test warehouse's source table: set rows, and the audience's SQL selects them."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS people"))
            conn.execute(text(PEOPLE_DDL))

    def set(self, rows: list[dict]) -> None:
        with self.engine.begin() as conn:
            conn.execute(text("DELETE FROM people"))
            if rows:
                full = [{"email": None, "phone": None, "in_audience": 1, "bought": 0, **r} for r in rows]
                conn.execute(
                    text(
                        "INSERT INTO people (customer_id, email, phone, in_audience, bought) "
                        "VALUES (:customer_id, :email, :phone, :in_audience, :bought)"
                    ),
                    full,
                )


@pytest.fixture
def people(backend: ConnectionInfo) -> People:
    return People(engine_for(backend))


def write_audience(directory: Path, name: str, body: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(textwrap.dedent(body).lstrip(), encoding="utf-8")
    return path


@pytest.fixture
def audiences_dir(tmp_path: Path) -> Path:
    """A directory with one memory-destination audience, one warehouse audience and a suppression."""
    d = tmp_path / "audiences"
    write_audience(
        d,
        "test_targets_v1",
        """
        name: test_targets_v1
        owner: tests
        purpose: targeting audience under test
        source:
          conn_id: db
          query: SELECT customer_id, email, phone FROM people WHERE in_audience = 1
        identifiers: {email: email, phone: phone, default_region: US}
        holdout: {percent: 20, salt: test-salt}
        exclusions: [test_buyers_v1]
        destinations:
          - type: memory
          - type: warehouse
            conn_id: db
    """,
    )
    write_audience(
        d,
        "test_buyers_v1",
        """
        name: test_buyers_v1
        owner: tests
        purpose: suppression under test
        source:
          conn_id: db
          query: SELECT customer_id, email, phone FROM people WHERE bought = 1
        destinations:
          - type: warehouse
            conn_id: db
    """,
    )
    return d
