"""Membership from a SQL query against a warehouse (any SQL database an Airflow connection reaches).

Rows are streamed with a server-side cursor, so an audience of millions never sits in memory.

An audience query is trusted to read, never to write: it runs read-only and under a time limit
(``read_only``). On Postgres the transaction is ``READ ONLY`` with a ``statement_timeout`` and is
always rolled back, so writes, DDL, ``nextval``/``setval`` and writing functions are refused, and what
read-only mode lets through but a rollback undoes (large objects) never lands. On SQLite the
connection is ``PRAGMA query_only`` for the read (reset afterwards: the pooled connection may be the
state database's) and a progress handler cancels a statement past the limit. What neither mode can
stop (signalling other sessions, reading server files) is stopped by the read-only role described in
``docs/sources.md``. MySQL/MariaDB run the query in ``START TRANSACTION READ ONLY`` under
``max_statement_time`` / ``max_execution_time``; Redshift in ``BEGIN READ ONLY`` (psycopg2's read-only
session, or the statement itself with redshift_connector) under a transaction-local
``statement_timeout``; DuckDB's transaction is rolled back and a timer interrupts it past the limit;
the rest per ``read_only`` and ``docs/warehouses.md``.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeGuard, cast

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from data_out.dialects import QueryProblem, single_select_problem, translate, wants_aware_timestamps
from data_out.redact import driver_line
from data_out.sources.base import QueryShapeError, Row, SourceError

#: how long one statement of an audience query may run unless the audience says otherwise
DEFAULT_STATEMENT_TIMEOUT = dt.timedelta(minutes=15)
#: SQLite calls the progress handler every this many virtual-machine instructions
_SQLITE_PROGRESS_STEPS = 10_000
#: Postgres: read_only_sql_transaction, insufficient_privilege, query_canceled (the timeout)
_PG_READ_ONLY, _PG_DENIED, _PG_CANCELED = "25006", "42501", "57014"
#: syntax_error, feature_not_supported: what Postgres answers a data-changing statement inside a subquery
#: or a cursor ("DECLARE CURSOR must not contain data-modifying statements in WITH")
_PG_NOT_IN_A_CURSOR = {"42601", "0A000"}
#: MySQL/MariaDB error numbers: a write in a READ ONLY transaction; max_statement_time (MariaDB) and
#: max_execution_time (MySQL) exceeded; a privilege the account lacks (table, column, database)
_MYSQL_READ_ONLY = 1792
_MYSQL_TIMEOUTS = {1969, 3024}
_MYSQL_DENIED = {1142, 1143, 1044}
_WRITES = re.compile(r"\b(DELETE\s+FROM|INSERT\s+INTO|UPDATE\s+\S+\s+SET|MERGE\s+INTO|TRUNCATE)\b", re.I)
#: large objects: the one write read-only mode allows, looked for after an in-database read
_LARGE_OBJECTS = "SELECT count(*) FROM pg_largeobject_metadata"


class SqlSource:
    def __init__(
        self,
        engine: Engine,
        sql: str,
        params: dict[str, object],
        required_columns: Sequence[str],
        label: str,
        statement_timeout: dt.timedelta = DEFAULT_STATEMENT_TIMEOUT,
        dialect: str | None = None,
    ) -> None:
        """``dialect``: what the SQL is written in (``source.dialect``); it is translated for ``engine``'s
        dialect here, before anything runs, and a query that cannot be fails at once, naming the reason."""
        self.engine = engine
        self.label = label  # e.g. "audience cio_cart_abandon_6h_v1, include/audiences/sql/cart.sql"
        try:
            self.sql = translate(sql, dialect, engine.dialect.name).sql
        except QueryProblem as exc:
            raise SourceError(
                f"{label}: {exc}; nothing was run. Fix the query or source.dialect in the audience file "
                f"(the connection speaks {engine.dialect.name})",
                retryable=False,
            ) from None
        if wants_aware_timestamps(engine.dialect.name):
            params = {k: v.replace(tzinfo=dt.UTC) if _naive(v) else v for k, v in params.items()}
        self.params = params
        self.required_columns = list(required_columns)
        self.statement_timeout = statement_timeout

    def iter_batches(self, batch_size: int) -> Iterator[list[Row]]:
        try:
            with self.engine.connect() as conn, read_only(conn, self) as refresh:
                result = conn.execution_options(stream_results=True, yield_per=batch_size).execute(
                    text(self.sql), self.params
                )
                if not result.returns_rows:  # DELETE, UPDATE, DDL...: never committed, the connection rolls back
                    raise QueryShapeError(
                        f"{self.label}: the query returns no rows (it is not a SELECT); "
                        "an audience query must be a SELECT of its members",
                        retryable=False,
                    )
                columns = list(result.keys())
                missing = [c for c in self.required_columns if c not in columns]
                if missing:
                    raise QueryShapeError(
                        f"{self.label}: the query returns columns {columns} but not {missing}; "
                        "select them (or alias them) or change the column names in the audience file"
                    )
                for part in result.mappings().partitions(batch_size):
                    # RowMapping is keyed by column objects as well as names; sources read it by name only
                    yield cast("list[Row]", list(part))
                    refresh()  # the limit is per fetch, as Postgres' is per statement of the cursor
        except SQLAlchemyError as exc:
            raise query_failed(self.label, exc, self.statement_timeout) from None


def _naive(value: object) -> TypeGuard[dt.datetime]:
    return isinstance(value, dt.datetime) and value.tzinfo is None


@contextmanager
def read_only(conn: Connection, source: SqlSource) -> Iterator[Any]:
    """Run what follows on ``conn`` read-only, each statement limited to ``source.statement_timeout``.

    ``conn`` is a connection of its own (nothing else on it): the whole transaction is made read-only
    where the database has such a mode, and rolled back at the end, whatever happened. Yields a callable
    that restarts the clock of a limit kept here (SQLite, DuckDB), as Postgres' is per statement.
    """
    seconds = max(source.statement_timeout.total_seconds(), 0.001)
    name = conn.dialect.name
    if name == "postgresql":
        conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        conn.execute(text("SELECT set_config('statement_timeout', :ms, true)"), {"ms": str(int(seconds * 1000))})
        with _rolled_back(conn):
            yield lambda: None
        return
    if name == "redshift":
        with _redshift_read_only(conn, seconds):
            yield lambda: None
        return
    if name == "sqlite":
        with _sqlite_read_only(conn, seconds) as refresh:
            yield refresh
        return
    if name in {"mysql", "mariadb"}:
        with _mysql_read_only(conn, source, seconds):
            yield lambda: None
        return
    if name == "duckdb":
        with _interrupt_after(conn, seconds) as refresh, _rolled_back(conn):
            yield refresh
        return
    if name == "snowflake":
        conn.exec_driver_sql(f"ALTER SESSION SET STATEMENT_TIMEOUT_IN_SECONDS = {max(int(seconds), 1)}")
        try:
            with _rolled_back(conn):
                yield lambda: None
        finally:
            _reset(conn, "ALTER SESSION UNSET STATEMENT_TIMEOUT_IN_SECONDS")
        return
    # BigQuery, Databricks and the rest: no read-only transaction the driver exposes; only the connection's
    # role keeps the query from writing (docs/warehouses.md). The transaction is still never committed.
    with _rolled_back(conn):
        yield lambda: None


@contextmanager
def _redshift_read_only(conn: Connection, seconds: float) -> Iterator[None]:
    """Redshift documents ``BEGIN ... READ ONLY`` but not ``SET TRANSACTION``, so the transaction is opened
    read-only: by psycopg2's read-only session where the driver has one (SQLAlchemy resets it when the
    connection goes back to the pool), otherwise by ``BEGIN READ ONLY`` itself (``_begin_read_only``). The
    timeout is transaction-local (``set_config(..., true)``, as on Postgres), so the rollback ends it."""
    with _rolled_back(conn):
        try:
            conn.execution_options(postgresql_readonly=True)
        except NotImplementedError:  # redshift_connector: no read-only session
            _begin_read_only(conn)
        conn.execute(
            text("SELECT set_config('statement_timeout', :ms, true)"), {"ms": str(max(int(seconds * 1000), 1))}
        )
        yield


def _begin_read_only(conn: Connection) -> None:
    """Open the transaction with ``BEGIN READ ONLY`` on a driver without a read-only session.

    redshift_connector sends ``begin transaction`` before a statement whenever the server reports no open
    transaction and autocommit is off, so a ``BEGIN READ ONLY`` sent as a statement would come second,
    inside a read-write transaction already open (Postgres answers it with a warning and ignores it). Sent
    with autocommit on, it is the transaction's own BEGIN; with autocommit off again the driver sees the
    transaction open and adds none, and the rollback at the end (the driver's ``rollback``) closes it."""
    raw = driver_connection(conn)
    previous = raw.autocommit
    raw.autocommit = True
    try:
        conn.exec_driver_sql("BEGIN READ ONLY")
    finally:
        raw.autocommit = previous


@contextmanager
def _rolled_back(conn: Connection) -> Iterator[None]:
    try:
        yield
    finally:
        conn.rollback()  # never commit what read-only mode let through


def _reset(conn: Connection, statement: str) -> None:
    """Restore a session setting; a connection that cannot be restored never goes back to the pool."""
    try:
        conn.exec_driver_sql(statement)
    except Exception:  # noqa: BLE001
        conn.invalidate()


def driver_connection(conn: Connection) -> Any:
    """The driver's own connection under ``conn`` (sqlite3, psycopg, DuckDB...), for what SQLAlchemy does not
    wrap: progress handlers, interrupts, COPY. ``Any``: its type is the driver's, one per dialect."""
    raw = conn.connection.driver_connection
    if raw is None:  # SQLAlchemy's type allows it for a detached connection, which a live Connection never holds
        raise RuntimeError("the database connection was closed under this statement")
    return raw


@contextmanager
def _sqlite_read_only(conn: Connection, seconds: float) -> Iterator[Any]:
    raw = driver_connection(conn)
    deadline = [time.monotonic() + seconds]

    def refresh() -> None:
        deadline[0] = time.monotonic() + seconds

    raw.execute("PRAGMA query_only = ON")
    raw.set_progress_handler(lambda: int(time.monotonic() > deadline[0]), _SQLITE_PROGRESS_STEPS)
    try:
        yield refresh
    finally:
        try:
            raw.set_progress_handler(None, 0)
            conn.rollback()
            raw.execute("PRAGMA query_only = OFF")
        except Exception:  # noqa: BLE001 - never hand a query-only connection back to the pool
            conn.invalidate()


@contextmanager
def _mysql_read_only(conn: Connection, source: SqlSource, seconds: float) -> Iterator[None]:
    """``START TRANSACTION READ ONLY`` refuses writes to tables. DDL, though, commits implicitly on MySQL
    and MariaDB (ending that transaction), so a query that is not one SELECT is refused before it runs."""
    problem = single_select_problem(source.sql, conn.dialect.name)
    if problem:
        raise SourceError(f"{source.label}: {problem}; nothing was run. {_WRITE_FIX}", retryable=False)
    mariadb = bool(getattr(conn.dialect, "is_mariadb", False))
    conn.exec_driver_sql("START TRANSACTION READ ONLY")
    if mariadb:  # seconds, any statement
        conn.exec_driver_sql(f"SET SESSION max_statement_time = {seconds:.3f}")
    else:  # MySQL: milliseconds, SELECT statements
        conn.exec_driver_sql(f"SET SESSION max_execution_time = {max(int(seconds * 1000), 1)}")
    try:
        with _rolled_back(conn):
            yield
    finally:
        _reset(conn, f"SET SESSION {'max_statement_time' if mariadb else 'max_execution_time'} = DEFAULT")


@contextmanager
def _interrupt_after(conn: Connection, seconds: float) -> Iterator[Any]:
    """DuckDB has no statement timeout: a timer interrupts the connection once the limit has passed."""
    raw = driver_connection(conn)
    timer: list[threading.Timer] = []
    fired = threading.Event()

    def fire() -> None:
        fired.set()
        raw.interrupt()

    def refresh() -> None:
        if timer:
            timer[0].cancel()
            timer.clear()
        if not fired.is_set():
            timer.append(threading.Timer(seconds, fire))
            timer[0].daemon = True
            timer[0].start()

    refresh()
    try:
        yield refresh
    finally:
        if timer:
            timer[0].cancel()


@contextmanager
def read_only_section(conn: Connection, source: SqlSource) -> Iterator[None]:
    """Postgres only: a read-only, time-limited subtransaction inside ``conn``'s read-write transaction.

    For the in-database staging path (``engine/stage_sql.py``), whose transaction must write the state it
    computes: the statements that evaluate the audience query run in a ``SAVEPOINT`` made read-only
    (Postgres restores read-write mode when it is released). Large objects are the one write read-only
    mode allows that a release would keep: their count is compared and a change refuses the run,
    which rolls the whole transaction back. A refused write or a timeout comes out as ``SourceError``.
    """
    seconds = max(source.statement_timeout.total_seconds(), 0.001)
    try:
        before_timeout = conn.execute(text("SELECT current_setting('statement_timeout')")).scalar_one()
        objects = conn.execute(text(_LARGE_OBJECTS)).scalar_one()
        with conn.begin_nested():
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            conn.execute(text("SELECT set_config('statement_timeout', :ms, true)"), {"ms": str(int(seconds * 1000))})
            yield
        conn.execute(text("SELECT set_config('statement_timeout', :v, true)"), {"v": before_timeout})
        if conn.execute(text(_LARGE_OBJECTS)).scalar_one() != objects:
            raise SourceError(
                f"{source.label}: the query created large objects (lo_create, lo_import, lo_from_bytea...); "
                "nothing was staged or kept. " + _WRITE_FIX,
                retryable=False,
            )
    except SQLAlchemyError as exc:
        if not (_is_refused_write(exc) or _is_timeout(exc)):
            raise  # the caller tells a state-database outage from a failed query
        raise query_failed(source.label, exc, source.statement_timeout) from None


_WRITE_FIX = (
    "Audience queries run read-only: an audience query must be a SELECT of its members, without "
    "data-changing statements or side-effecting functions (nextval, setval, lo_*, pg_terminate_backend...); "
    "fix it, then clear the stage task"
)


def _is_refused_write(exc: SQLAlchemyError) -> bool:
    """Refused by read-only mode, or by Postgres' rule that a cursor or subquery holds no DELETE/INSERT/...
    (the query is read through one, so such a query fails as a syntax error before it can write)."""
    orig = getattr(exc, "orig", None)
    state = _sqlstate(orig)
    if state == _PG_READ_ONLY:
        return True
    if state in _PG_NOT_IN_A_CURSOR and _WRITES.search(str(getattr(exc, "statement", "") or "")):
        return True
    if _mysql_code(orig) == _MYSQL_READ_ONLY:
        return True
    return getattr(orig, "sqlite_errorname", None) == "SQLITE_READONLY"


def _mysql_code(orig: Any) -> int | None:
    """The server's error number of a MySQL/MariaDB driver error (``args[0]``)."""
    if type(orig).__module__.split(".")[0] not in {"MySQLdb", "pymysql", "mysql"}:
        return None
    args = getattr(orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _sqlstate(orig: Any) -> str | None:
    """The SQLSTATE of a Postgres-protocol driver error: psycopg's ``sqlstate``, psycopg2's ``pgcode``."""
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


def _is_timeout(exc: SQLAlchemyError) -> bool:
    orig = getattr(exc, "orig", None)
    if _sqlstate(orig) == _PG_CANCELED:  # Redshift: "Query (150) canceled on user's request"
        return "statement timeout" in str(orig) or "canceled on user's request" in str(orig)
    if _mysql_code(orig) in _MYSQL_TIMEOUTS:
        return True
    if type(orig).__name__ == "InterruptException":  # DuckDB, interrupted by _interrupt_after
        return True
    return getattr(orig, "sqlite_errorname", None) == "SQLITE_INTERRUPT"


def query_failed(label: str, exc: SQLAlchemyError, timeout: dt.timedelta = DEFAULT_STATEMENT_TIMEOUT) -> SourceError:
    """A driver message can quote a row value ("invalid input syntax for type integer: ..."): only its
    first line is kept, the value masked (``redact.driver_line``). A refused write or a timeout is
    terminal: running the same query again cannot help."""
    detail = driver_line(exc)
    if _is_refused_write(exc):
        return SourceError(
            f"{label}: the query tried to change the database and was refused ({detail}); "
            f"nothing was changed. {_WRITE_FIX}",
            retryable=False,
        )
    if _is_timeout(exc):
        return SourceError(
            f"{label}: the query ran longer than its statement timeout ({_duration(timeout)}) and was cancelled; "
            "make it faster, or raise source.statement_timeout in the audience file, then clear the stage task",
            retryable=False,
        )
    orig = getattr(exc, "orig", None)
    if _sqlstate(orig) == _PG_DENIED or _mysql_code(orig) in _MYSQL_DENIED:
        return SourceError(
            f"{label}: the query failed: {detail}. The source connection's role lacks a privilege. Audience "
            "queries may only read: remove what the role may not do from the query, or, if it reads a table the "
            "role cannot, grant the role SELECT on it (the read-only role in docs/sources.md); then clear the "
            "stage task",
            retryable=False,
        )
    return SourceError(f"{label}: the query failed: {detail}")


def _duration(value: dt.timedelta) -> str:
    seconds = int(value.total_seconds())
    return f"{seconds // 60}m" if seconds >= 60 and seconds % 60 == 0 else f"{value.total_seconds():g}s"


def window_params(as_of: dt.datetime, windows: dict[str, dt.timedelta]) -> dict[str, object]:
    """Bound parameters for a source query: ``as_of`` and ``as_of - window`` for each window.

    Naive UTC datetimes truncated to the second: compares correctly against Postgres ``timestamp``
    columns and against SQLite's ISO-8601 text timestamps alike.
    """
    base = as_of.astimezone(dt.UTC).replace(tzinfo=None, microsecond=0)
    params: dict[str, object] = {"as_of": base}
    params.update({name: base - delta for name, delta in windows.items()})
    return params
