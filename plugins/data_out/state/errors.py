"""State-database faults, told apart from every other database error and explained in one sentence.

When the state database drops the connection, goes down, fills its disk or turns read-only mid-run,
the driver raises a SQLAlchemy error whose text is a statement dump and a link: useless to the person
paged, and indistinguishable from a warehouse error raised by the same driver. ``watch`` marks the
errors raised by the state engine's own connections (a SQLAlchemy ``handle_error`` listener), and
``translated`` turns the marked ones into a ``StateDatabaseError`` that names the database (never its
password), carries the first line of the driver's message scrubbed of anything identifier-like, and
says what happens next. Retrying is always safe: state only ever advances by committed transactions,
so nothing past the last committed batch was marked as synced. Every other database error leaves
``translated`` as a ``DatabaseError`` carrying the driver's first line with its quoted values masked
(``redact.driver_line``): the rest of the driver's text can quote a member's row.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from data_out.errors import STATE_DATABASE_NEXT_STEP, RetryableError
from data_out.redact import driver_line, is_driver_error, scrub

_MARK = "_data_out_state_database"
_LABELS: weakref.WeakKeyDictionary[Engine, str] = weakref.WeakKeyDictionary()
#: longest ``error_text`` (callers cut it further for their columns)
ERROR_TEXT_LIMIT = 4000
#: SQLSTATEs of refused writes that are not OperationalErrors: read-only transaction, no privilege
_REFUSED_SQLSTATES = {"25006", "42501"}


class StateDatabaseError(RetryableError):
    """The state database was unreachable or refused a write. Retryable: nothing uncommitted was recorded."""

    next_step = STATE_DATABASE_NEXT_STEP


class DatabaseError(Exception):
    """Any other database error, its text cut to what is safe to log (``redact.driver_line``).

    The driver's own exception would put the failing row (Postgres' ``DETAIL``) into the task log,
    the run record and the failure email.
    """


def describe(engine: Engine) -> str:
    """The database an engine points at, without login or password (e.g. ``postgresql://db:5432/state``)."""
    url = engine.url
    if url.get_backend_name() == "sqlite":
        return f"sqlite:///{url.database}"
    port = f":{url.port}" if url.port else ""
    return f"{url.get_backend_name()}://{url.host or 'localhost'}{port}/{url.database or ''}"


def watch(engine: Engine, conn_id: str | None = None) -> Engine:
    """Mark errors raised by ``engine``'s connections as state-database errors (idempotent).

    ``conn_id`` names the Airflow connection in messages, next to the database it points at.
    """
    if conn_id:
        _LABELS[engine] = f"{conn_id} ({describe(engine)})"
    if not event.contains(engine, "handle_error", _mark):
        event.listen(engine, "handle_error", _mark)
    return engine


def _mark(ctx: ExceptionContext) -> None:
    if ctx.is_pre_ping:  # a stale pooled connection: the pool reconnects by itself
        return
    engine = ctx.engine
    exc = ctx.sqlalchemy_exception
    if engine is not None and exc is not None:
        setattr(exc, _MARK, _LABELS.get(engine) or describe(engine))


def _is_outage(exc: DBAPIError) -> bool:
    """Unreachable, lost, full, locked or read-only: retrying later helps. Integrity errors are bugs."""
    if isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated:
        return True
    return getattr(exc.orig, "sqlstate", None) in _REFUSED_SQLSTATES


def state_fault(exc: BaseException) -> str | None:
    """The state database ``exc`` came from, if it is an outage of the state database; else None."""
    if isinstance(exc, DBAPIError) and _is_outage(exc):
        return getattr(exc, _MARK, None)
    return None


def message(exc: DBAPIError, database: str, during: str | None = None) -> str:
    """Where, what the driver said (first line, quoted values masked), and what happens next."""
    when = f" during {during}" if during else ""
    return (
        f"state database {database} unavailable{when}: {_driver_summary(exc)}; "
        "nothing past the last committed batch was marked as synced. Airflow retries the task; "
        "once the database is back, clear the task to retry at once"
    )


def explain(exc: BaseException) -> str | None:
    """The operator-facing sentence for a state-database outage, or None for any other error."""
    database = state_fault(exc)
    if database is None:
        return None
    assert isinstance(exc, DBAPIError)
    return message(exc, database)


def error_text(exc: BaseException) -> str:
    """One line for a run record, a log line or an alert email: an outage explained, a driver's text redacted."""
    explained = explain(exc)
    if explained is not None:
        return f"StateDatabaseError: {explained}"
    if is_driver_error(exc):
        return f"DatabaseError: {_driver_summary(exc)}"
    return scrub(f"{type(exc).__name__}: {exc}", limit=ERROR_TEXT_LIMIT)


def _driver_summary(exc: BaseException) -> str:
    """The driver's error type and its redacted first line."""
    return f"{type(getattr(exc, 'orig', None) or exc).__name__}: {driver_line(exc)}"


@contextmanager
def translated(during: str) -> Iterator[None]:
    """Raise a ``StateDatabaseError`` in place of a state-database outage, a ``DatabaseError`` in place of
    any other database error; let every other error through.

    The driver's exception is dropped from the chain (``from None``): its text is summarised in the new
    one, and its statement dump and ``DETAIL`` (which can quote a member's row) must not reach the log.
    """
    try:
        yield
    except Exception as exc:
        if not is_driver_error(exc):
            raise
        database = state_fault(exc)
        if database is None:
            raise DatabaseError(f"database error during {during}: {_driver_summary(exc)}") from None
        assert isinstance(exc, DBAPIError)
        raise StateDatabaseError(message(exc, database, during)) from None
