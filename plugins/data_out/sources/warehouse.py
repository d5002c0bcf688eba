"""Membership from a SQL query against a warehouse (SQLite or Postgres through an Airflow connection).

Rows are streamed with a server-side cursor, so an audience of millions never sits in memory.

An audience query is trusted to read, never to write: it runs read-only and under a time limit
(``read_only``). On Postgres the transaction is ``READ ONLY`` with a ``statement_timeout`` and is
always rolled back, so writes, DDL, ``nextval``/``setval`` and writing functions are refused, and what
read-only mode lets through but a rollback undoes (large objects) never lands. On SQLite the
connection is ``PRAGMA query_only`` for the read (reset afterwards: the pooled connection may be the
state database's) and a progress handler cancels a statement past the limit. What neither mode can
stop (signalling other sessions, reading server files) is stopped by the read-only role described in
``docs/sources.md``.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from data_out.redact import driver_line
from data_out.sources.base import Row, SourceError

#: how long one statement of an audience query may run unless the audience says otherwise
DEFAULT_STATEMENT_TIMEOUT = dt.timedelta(minutes=15)
#: SQLite calls the progress handler every this many virtual-machine instructions
_SQLITE_PROGRESS_STEPS = 10_000
#: Postgres: read_only_sql_transaction, insufficient_privilege, query_canceled (the timeout)
_PG_READ_ONLY, _PG_DENIED, _PG_CANCELED = "25006", "42501", "57014"
#: syntax_error, feature_not_supported: what Postgres answers a data-changing statement inside a subquery
#: or a cursor ("DECLARE CURSOR must not contain data-modifying statements in WITH")
_PG_NOT_IN_A_CURSOR = {"42601", "0A000"}
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
    ) -> None:
        self.engine = engine
        self.sql = sql
        self.params = params
        self.required_columns = list(required_columns)
        self.label = label  # e.g. "audience cio_cart_abandon_6h_v1, include/audiences/sql/cart.sql"
        self.statement_timeout = statement_timeout

    def iter_batches(self, batch_size: int) -> Iterator[list[Row]]:
        try:
            with self.engine.connect() as conn, read_only(conn, self) as refresh:
                result = conn.execution_options(stream_results=True, yield_per=batch_size).execute(
                    text(self.sql), self.params
                )
                if not result.returns_rows:  # DELETE, UPDATE, DDL...: never committed, the connection rolls back
                    raise SourceError(
                        f"{self.label}: the query returns no rows (it is not a SELECT); "
                        "an audience query must be a SELECT of its members",
                        retryable=False,
                    )
                columns = list(result.keys())
                missing = [c for c in self.required_columns if c not in columns]
                if missing:
                    raise SourceError(
                        f"{self.label}: the query returns columns {columns} but not {missing}; "
                        "select them (or alias them) or change the column names in the audience file"
                    )
                for part in result.mappings().partitions(batch_size):
                    yield list(part)
                    refresh()  # the limit is per fetch, as Postgres' is per statement of the cursor
        except SQLAlchemyError as exc:
            raise query_failed(self.label, exc, self.statement_timeout) from None


@contextmanager
def read_only(conn: Connection, source: SqlSource) -> Iterator[Any]:
    """Run what follows on ``conn`` read-only, each statement limited to ``source.statement_timeout``.

    ``conn`` is a connection of its own (nothing else on it): the whole transaction is made read-only
    and rolled back at the end, whatever happened. Yields a callable that restarts SQLite's clock.
    """
    seconds = max(source.statement_timeout.total_seconds(), 0.001)
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        conn.execute(text("SELECT set_config('statement_timeout', :ms, true)"), {"ms": str(int(seconds * 1000))})
        try:
            yield lambda: None
        finally:
            conn.rollback()  # never commit what read-only mode let through
        return
    if conn.dialect.name != "sqlite":  # pragma: no cover - engine_for builds only these two
        raise SourceError(f"{source.label}: {conn.dialect.name} sources are not supported", retryable=False)
    raw = conn.connection.driver_connection
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
def read_only_section(conn: Connection, source: SqlSource) -> Iterator[None]:
    """Postgres only: a read-only, time-limited subtransaction inside ``conn``'s read-write transaction.

    For the in-database staging path (``staging_sql.py``), whose transaction must write the state it
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
    state = getattr(orig, "sqlstate", None)
    if state == _PG_READ_ONLY:
        return True
    if state in _PG_NOT_IN_A_CURSOR and _WRITES.search(str(getattr(exc, "statement", "") or "")):
        return True
    return getattr(orig, "sqlite_errorname", None) == "SQLITE_READONLY"


def _is_timeout(exc: SQLAlchemyError) -> bool:
    orig = getattr(exc, "orig", None)
    if getattr(orig, "sqlstate", None) == _PG_CANCELED:
        return "statement timeout" in str(orig)
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
    if getattr(getattr(exc, "orig", None), "sqlstate", None) == _PG_DENIED:
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
