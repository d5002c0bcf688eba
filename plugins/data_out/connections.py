"""Connections as plain data, and SQLAlchemy engines resolved from them through Airflow's SQL hooks.

A source, the warehouse destination and the state database are Airflow connections. Every type but
``sqlite`` is resolved through the connection type's common.sql ``DbApiHook`` (Postgres, MySQL/MariaDB,
DuckDB, Snowflake, BigQuery, Redshift, Databricks...): the hook builds the URL and the credentials
(IAM tokens, key pairs, service accounts), never this module. ``sqlite`` is the one exception: Airflow's
``SqliteHook`` re-reads its connection from Airflow by id (it ignores the one handed to it) and builds
its URL from Airflow's URI serialisation, while the embedded state database needs nothing but the file
path in ``host``, so that URL is built here. ``redshift`` takes its connections from the hook but not its
engine: ``RedshiftSQLHook.get_sqlalchemy_engine`` builds a Postgres-dialect engine, and Redshift's SQL
(MERGE, no ``ON CONFLICT``) is sqlalchemy-redshift's dialect's.

Airflow is imported only inside the resolver: the pure modules stay importable without it. Engines
are cached for the life of the process.
"""

from __future__ import annotations

import importlib
import json
import re
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_fixed

from data_out.engine.shards import register_sqlite
from data_out.errors import ConfigurationError
from data_out.redact import register_secret

SQLITE_BUSY_TIMEOUT_MS = 60_000

#: connection type -> (the SQL hook class, the package extra that installs it). Listed where the type's
#: registered hook is not its SQL hook (``databricks``, ``google_cloud_platform``) or to name the extra in
#: the error; any other type is looked up in Airflow's providers manager.
SQL_HOOKS: dict[str, tuple[str, str]] = {
    "postgres": ("airflow.providers.postgres.hooks.postgres.PostgresHook", ""),
    "mysql": ("airflow.providers.mysql.hooks.mysql.MySqlHook", "mysql"),
    "duckdb": ("airflow.providers.duckdb.hooks.duckdb.DuckDBHook", "duckdb"),
    "snowflake": ("airflow.providers.snowflake.hooks.snowflake.SnowflakeHook", ""),  # no extra yet: see docs
    "gcpbigquery": ("airflow.providers.google.cloud.hooks.bigquery.BigQueryHook", "bigquery"),
    "google_cloud_platform": ("airflow.providers.google.cloud.hooks.bigquery.BigQueryHook", "bigquery"),
    "redshift": ("airflow.providers.amazon.aws.hooks.redshift_sql.RedshiftSQLHook", "redshift"),
    "databricks": ("airflow.providers.databricks.hooks.databricks_sql.DatabricksSqlHook", "databricks"),
}

#: connection type -> the SQLAlchemy dialect that drives the DB-API connections its hook's ``get_conn``
#: returns. The engine is built over ``get_conn`` (``creator``), not from the hook's own engine: the hook keeps
#: the credentials (IAM tokens, fetched again for each new connection), the dialect decides the SQL.
HOOK_CONNECTION_DIALECTS: dict[str, str] = {
    # RedshiftSQLHook.get_conn returns a redshift_connector connection (its extras are driver arguments)
    "redshift": "redshift+redshift_connector",
}


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

    def cache_key(self) -> tuple[Any, ...]:
        return (
            self.conn_id,
            (self.conn_type or "").lower(),
            self.host,
            self.port,
            self.login,
            self.password,
            self.schema,
            json.dumps(dict(self.extra), sort_keys=True, default=str),
        )


#: extras that hold credentials (``developer_token``, ``client_secret``, ``api_key``, ``refresh_token``)
_SECRET_EXTRA = re.compile(r"token|secret|password|passwd|key", re.IGNORECASE)
T = TypeVar("T")


def info_from_connection(conn_id: str, conn: Any) -> ConnectionInfo:
    """Plain data from an Airflow ``Connection`` (the task SDK's or the api-server's), stripped of the whitespace
    a paste leaves around a value, with the password and credential extras registered with ``redact`` so
    that any message echoing them is masked (``redact.scrub``)."""
    extra = {k: _stripped(v) for k, v in (conn.extra_dejson or {}).items()}
    info = ConnectionInfo(
        conn_id=conn_id,
        conn_type=conn.conn_type or "",
        host=_stripped(conn.host),
        port=conn.port,
        login=_stripped(conn.login),
        password=_stripped(conn.password),
        schema=_stripped(conn.schema),
        extra=extra,
    )
    register_secret(info.password)
    for key, value in extra.items():
        if _SECRET_EXTRA.search(key):
            register_secret(value)
    return info


def _stripped(value: T) -> T:
    """A value without the whitespace a paste leaves around it.

    A token pasted with its trailing newline is refused by ``requests`` in an error that quotes the
    header, token and all; nothing a connection holds means anything by surrounding whitespace.
    """
    return value.strip() if isinstance(value, str) else value  # type: ignore[return-value]


class UnsupportedConnection(ConfigurationError, ValueError):
    """A connection Data Out cannot use as it is (its type, a missing provider); the message says what to set."""


_lock = threading.Lock()
_by_connection: dict[tuple[Any, ...], Engine] = {}
_by_url: dict[str, Engine] = {}


def engine_for(conn: ConnectionInfo) -> Engine:
    """The engine of a connection: one per connection (and one per URL) for the life of the process."""
    key = conn.cache_key()
    with _lock:
        engine = _by_connection.get(key)
        if engine is None:
            engine = _by_connection[key] = _resolve(conn)
        return engine


def state_engine_for(conn: ConnectionInfo) -> Engine:
    """The state database's engine: Postgres, or SQLite for the embedded default (its SQL is written for
    those two: arrays, ``ON CONFLICT``, ``COPY``), whatever the warehouses are."""
    if (conn.conn_type or "").lower() not in {"sqlite", "postgres", "postgresql"}:
        raise UnsupportedConnection(
            f"connection {conn.conn_id!r} has type {conn.conn_type!r}; the state database must be of type "
            "'postgres' (production) or 'sqlite' (embedded): use 'sqlite' or 'postgres'"
        )
    return engine_for(conn)


def dispose(conn: ConnectionInfo) -> None:
    """Close the pooled connections of ``conn``'s engine and forget it (a test's database is dropped)."""
    with _lock:
        engine = _by_connection.pop(conn.cache_key(), None)
        if engine is not None:
            engine.dispose()
            for url, cached in list(_by_url.items()):
                if cached is engine:
                    del _by_url[url]


def _resolve(conn: ConnectionInfo) -> Engine:
    kind = (conn.conn_type or "").lower()
    if kind == "sqlite":
        if not conn.host:
            raise UnsupportedConnection(
                f"connection {conn.conn_id!r} is sqlite but has no host: set host to the database file path"
            )
        return _shared(URL.create("sqlite", database=conn.host), None)
    hook = sql_hook(conn)
    over_connections = HOOK_CONNECTION_DIALECTS.get(kind)
    if over_connections:
        dialect_url = make_url(f"{over_connections}://")
        # one call of get_conn per pooled connection: a new IAM token each time, never a URL with a password
        return create_engine(dialect_url, creator=hook.get_conn, **engine_kwargs(dialect_url.get_backend_name()))
    if _builds_own_engine(hook):
        # the hook adds what a URL cannot carry (key pairs, service-account credentials, OAuth)
        return hook.get_sqlalchemy_engine(engine_kwargs(hook.dialect_name))
    try:
        url: URL = hook.sqlalchemy_url
    except NotImplementedError:
        url = make_url(hook.get_uri())
    return _shared(url, None)


def sql_hook(conn: ConnectionInfo) -> Any:
    """The connection type's common.sql ``DbApiHook``, handed this connection (no second look-up)."""
    kind = (conn.conn_type or "").lower()
    try:
        from airflow.providers.common.sql.hooks.sql import DbApiHook
        from airflow.sdk import Connection
    except ImportError as exc:  # pragma: no cover - the package depends on both
        raise UnsupportedConnection(f"connection {conn.conn_id!r}: Airflow's common.sql provider is missing") from exc
    path, extra = SQL_HOOKS.get(kind, ("", ""))
    if not path:
        path = _registered_hook(kind)
    if not path:
        raise UnsupportedConnection(
            f"connection {conn.conn_id!r} has type {conn.conn_type!r}, which no installed Airflow provider "
            "serves as a SQL database; use a SQL connection type (postgres, mysql, duckdb, snowflake, gcpbigquery, "
            "redshift, databricks, sqlite) and install its provider (docs/warehouses.md)"
        )
    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except ImportError:
        hint = f"pip install 'data-out-airflow[{extra}]'" if extra else "install the connection type's provider"
        raise UnsupportedConnection(
            f"connection {conn.conn_id!r} has type {conn.conn_type!r} but its Airflow provider is not installed; "
            f"{hint} (docs/warehouses.md)"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, DbApiHook)):
        raise UnsupportedConnection(
            f"connection {conn.conn_id!r} has type {conn.conn_type!r}, whose hook {name} is not a SQL (DbApiHook) "
            "hook; use the SQL connection type of that warehouse"
        )
    airflow_conn = Connection(
        conn_id=conn.conn_id,
        conn_type=kind,
        host=conn.host,
        port=conn.port,
        login=conn.login,
        password=conn.password,
        schema=conn.schema,
        extra=json.dumps(dict(conn.extra)) if conn.extra else None,
    )
    kwargs: dict[str, Any] = {cls.conn_name_attr: conn.conn_id, "connection": airflow_conn}
    if kind == "duckdb":
        # DuckDBHook reads its connection from Airflow by id; its ``database`` argument (the file) wins
        if not conn.host:
            raise UnsupportedConnection(
                f"connection {conn.conn_id!r} is duckdb but has no host: set host to the database file path"
            )
        kwargs["database"] = conn.host
    return cls(**kwargs)


def _registered_hook(kind: str) -> str:
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    info = ProvidersManagerTaskRuntime().hooks.get(kind)
    return getattr(info, "hook_class_name", "") if info else ""


def _builds_own_engine(hook: Any) -> bool:
    from airflow.providers.common.sql.hooks.sql import DbApiHook

    return type(hook).get_sqlalchemy_engine is not DbApiHook.get_sqlalchemy_engine


def engine_kwargs(dialect: str | None) -> dict[str, Any]:
    """``hide_parameters``: a driver error must never echo member keys or hashes into logs."""
    if dialect in {"sqlite", "duckdb"}:  # embedded: the driver's own pool, no network to ping
        return {"hide_parameters": True}
    return {"pool_pre_ping": True, "pool_size": 2, "max_overflow": 2, "hide_parameters": True}


def _shared(url: URL, dialect: str | None) -> Engine:
    """One engine per URL: a state database and a source on the same database share one pool, and the
    in-database staging path recognises them as the same database."""
    rendered = url.render_as_string(hide_password=False)
    engine = _by_url.get(rendered)
    if engine is None:
        engine = _by_url[rendered] = _create(url, dialect)
    return engine


def _locked(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


def _set_wal(cur: sqlite3.Cursor) -> None:
    """Switch the file to WAL, waiting as a busy timeout would: SQLite answers a journal-mode change that
    meets another connection's lock with "database is locked" at once, without its busy handler (several
    first tasks opening a new state file together)."""
    for attempt in Retrying(
        retry=retry_if_exception(_locked),
        stop=stop_after_delay(SQLITE_BUSY_TIMEOUT_MS / 1000),
        wait=wait_fixed(0.05),
        reraise=True,
    ):
        with attempt:
            cur.execute("PRAGMA journal_mode=WAL")


def _create(url: URL, dialect: str | None) -> Engine:
    if url.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, hide_parameters=True)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: sqlite3.Connection, _record: object) -> None:
            # WAL lets readers and one writer work at once (parallel audiences on one file);
            # autocommit off in the driver so SQLAlchemy's BEGIN is the only transaction control.
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            _set_wal(cur)
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()
            register_sqlite(dbapi_conn)  # the planner's shard hash, as Postgres computes it natively

        return engine
    return create_engine(url, **engine_kwargs(dialect or url.get_backend_name()))
