"""Connections as plain data, and SQLAlchemy engines built from them.

The state database, the warehouse source and the warehouse destination are all reached through
Airflow connections of type ``sqlite`` (``host`` is the file path, as in Airflow's own SQLite
hook) or ``postgres``. Engines are cached per URL for the life of the process.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL

from data_out.shards import register_sqlite

SQLITE_BUSY_TIMEOUT_MS = 60_000


@dataclass(frozen=True)
class ConnectionInfo:
    """The parts of an Airflow connection a destination needs, without importing Airflow."""

    conn_id: str
    conn_type: str
    host: str | None = None
    port: int | None = None
    login: str | None = None
    password: str | None = None
    schema: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


class UnsupportedConnection(ValueError):
    pass


def url_for(conn: ConnectionInfo) -> URL:
    """Translate an Airflow-style connection into a SQLAlchemy URL (psycopg 3 for Postgres)."""
    kind = (conn.conn_type or "").lower()
    if kind == "sqlite":
        if not conn.host:
            raise UnsupportedConnection(
                f"connection {conn.conn_id!r} is sqlite but has no host: set host to the database file path"
            )
        return URL.create("sqlite", database=conn.host)
    if kind in {"postgres", "postgresql"}:
        return URL.create(
            "postgresql+psycopg",
            username=conn.login or None,
            password=conn.password or None,
            host=conn.host or "127.0.0.1",
            port=conn.port or 5432,
            database=conn.schema or "postgres",
        )
    raise UnsupportedConnection(f"connection {conn.conn_id!r} has type {conn.conn_type!r}; use 'sqlite' or 'postgres'")


@lru_cache(maxsize=16)
def _engine(url: URL) -> Engine:
    if url.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, hide_parameters=True)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            # WAL lets readers and one writer work at once (parallel audiences on one file);
            # autocommit off in the driver so SQLAlchemy's BEGIN is the only transaction control.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()
            register_sqlite(dbapi_conn)  # the planner's shard hash, as Postgres computes it natively

        return engine
    # hide_parameters: a driver error must never echo member keys or hashes into logs
    return create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2, hide_parameters=True)


def engine_for(conn: ConnectionInfo) -> Engine:
    return _engine(url_for(conn))
