"""Membership from a SQL query against a warehouse (SQLite or Postgres through an Airflow connection).

Rows are streamed with a server-side cursor, so an audience of millions never sits in memory.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from data_out.redact import driver_line
from data_out.sources.base import Row, SourceError


class SqlSource:
    def __init__(
        self,
        engine: Engine,
        sql: str,
        params: dict[str, object],
        required_columns: Sequence[str],
        label: str,
    ) -> None:
        self.engine = engine
        self.sql = sql
        self.params = params
        self.required_columns = list(required_columns)
        self.label = label  # e.g. "audience cio_cart_abandon_6h_v1, include/audiences/sql/cart.sql"

    def iter_batches(self, batch_size: int) -> Iterator[list[Row]]:
        try:
            with self.engine.connect() as conn:
                result = conn.execution_options(stream_results=True, yield_per=batch_size).execute(
                    text(self.sql), self.params
                )
                if not result.returns_rows:  # DELETE, UPDATE, DDL...: never committed, the connection rolls back
                    raise SourceError(
                        f"{self.label}: the query returns no rows (it is not a SELECT); "
                        "an audience query must be a SELECT of its members"
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
        except SQLAlchemyError as exc:
            raise query_failed(self.label, exc) from None


def query_failed(label: str, exc: SQLAlchemyError) -> SourceError:
    """A driver message can quote a row value ("invalid input syntax for type integer: ..."): only its
    first line is kept, the value masked (``redact.driver_line``)."""
    detail = driver_line(exc)
    return SourceError(f"{label}: the query failed: {detail}")


def window_params(as_of: dt.datetime, windows: dict[str, dt.timedelta]) -> dict[str, object]:
    """Bound parameters for a source query: ``as_of`` and ``as_of - window`` for each window.

    Naive UTC datetimes truncated to the second: compares correctly against Postgres ``timestamp``
    columns and against SQLite's ISO-8601 text timestamps alike.
    """
    base = as_of.astimezone(dt.UTC).replace(tzinfo=None, microsecond=0)
    params: dict[str, object] = {"as_of": base}
    params.update({name: base - delta for name, delta in windows.items()})
    return params
