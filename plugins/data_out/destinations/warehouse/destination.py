"""Warehouse destination: a table of current members and one of holdout members per audience.

Analysts join these tables to orders to measure lift, and the holdout table is what paid media uses to
never retarget the holdout. Writes are exactly-once: each batch records its idempotency key in
``data_out_applied_batches`` in the same transaction as the member rows, so a replayed batch is a no-op.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import Connection, DateTime, Engine, String, Table, bindparam, func, literal, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.functions import Function

from data_out.connection_types import kind
from data_out.connections import ConnectionInfo, engine_for
from data_out.destinations import register
from data_out.destinations.base import (
    BatchResult,
    Destination,
    DestinationSettings,
    MemberRow,
    Op,
)
from data_out.destinations.warehouse.settings import WarehouseSettings
from data_out.destinations.warehouse.sql import (
    MERGE_BATCH_ROWS,
    MERGE_DIALECTS,
    delete_keys,
    insert_ignore,
    merge_new,
)
from data_out.destinations.warehouse.sql import destination_tables as _tables
from data_out.state import create_tables, utcnow


@register
class WarehouseDestination(Destination):
    type_name = "warehouse"
    pool = kind("warehouse").pool  # sized in deploy/pools.json
    settings_model = WarehouseSettings
    default_conn_id = kind("warehouse").conn_type
    max_batch_rows = 20_000
    activation = False  # internal: holds the holdout group too, in its own table

    settings: WarehouseSettings

    def __init__(self, audience: str, settings: DestinationSettings, connection: ConnectionInfo) -> None:
        super().__init__(audience, settings, connection)
        self.engine: Engine = engine_for(self.connection)
        self.members, self.holdout, self.applied = destination_tables(self.audience, self.settings)
        create_tables(self.engine, self.members.metadata)

    @property
    def batch_rows(self) -> int:
        """A MERGE carries its rows as parameters of one statement: BigQuery takes at most 10,000
        parameters and 1 MB of SQL text, so those warehouses get smaller batches."""
        rows = super().batch_rows
        return min(rows, MERGE_BATCH_ROWS) if self.engine.dialect.name in MERGE_DIALECTS else rows

    def _table_for(self, row: MemberRow) -> Table:
        if self.settings.include == "all":
            return self.holdout if row.in_holdout else self.members
        return self.holdout if self.settings.include == "holdout" else self.members

    def push(self, op: Op, rows: Sequence[MemberRow], idempotency_key: str) -> BatchResult:
        now = utcnow()
        with self.engine.begin() as conn:
            first_time = _insert_new(
                conn,
                self.applied,
                [{"idempotency_key": idempotency_key, "audience": self.audience, "rows": len(rows), "applied_at": now}],
            )
            if not first_time:
                return BatchResult()  # applied before a crash; acknowledge without applying twice
            by_table: dict[str, tuple[Table, list[str]]] = {}
            for row in rows:
                table = self._table_for(row)
                by_table.setdefault(table.name, (table, []))[1].append(row.member_key)
            for table, keys in by_table.values():
                self._write(conn, table, op, keys, now)
        return BatchResult(received=len(rows))

    def _write(self, conn: Connection, table: Table, op: Op, keys: list[str], now: dt.datetime) -> None:
        if op is Op.REMOVE:
            if conn.dialect.name == "postgresql":
                # primary-key lookups, in key order: from about 20,000 keys on, the planner would rather
                # scan the whole table, which at millions of members is the slower of the two
                conn.execute(text("SET LOCAL enable_seqscan = off"))
            conn.execute(delete_keys(conn.dialect, table, keys))
        elif conn.dialect.name == "postgresql":  # one statement with an array parameter, not one row each
            arr = bindparam("keys", keys, type_=postgresql.ARRAY(String))
            # a plain Function: ``func.unnest`` would resolve to sqlalchemy-bigquery's registered class,
            # which opts out of SQLAlchemy's statement cache (and warns) when that extra is installed
            keys_out: Function[str] = Function("unnest", arr, type_=String())
            rows = select(keys_out, literal(now, DateTime(timezone=True)))
            stmt = postgresql.insert(table).from_select(["member_key", "added_at"], rows)
            conn.execute(stmt.on_conflict_do_nothing())
        else:
            _insert_new(conn, table, [{"member_key": k, "added_at": now} for k in keys])

    def size(self) -> int:
        tables = {"all": (self.members, self.holdout), "holdout": (self.holdout,), "targeted": (self.members,)}
        with self.engine.connect() as conn:
            return sum(
                int(conn.scalar(select(func.count()).select_from(t)) or 0) for t in tables[self.settings.include]
            )


def destination_tables(audience: str, settings: WarehouseSettings) -> tuple[Table, Table, Table]:
    """The members table, the holdout table and the applied-batches ledger, in ``settings.db_schema``."""
    return _tables(audience, table=settings.table, holdout_table=settings.holdout_table, db_schema=settings.db_schema)


def _insert_new(conn: Connection, table: Table, rows: list[dict[str, object]]) -> int:
    """Add the rows not yet present; how many were added.

    Counted from ``RETURNING`` where the database has it: psycopg reports ``rowcount`` -1 for
    ``INSERT ... ON CONFLICT DO NOTHING``, and a replay check that reads -1 as "added" applies twice.
    """
    if conn.dialect.name in MERGE_DIALECTS:
        sql, params = merge_new(conn.dialect, table, rows)
        return max(conn.exec_driver_sql(sql, params).rowcount, 0)
    stmt = insert_ignore(conn.dialect, table)
    if conn.dialect.name in {"postgresql", "sqlite", "duckdb"}:
        keys = [c for c in table.primary_key.columns]
        return len(conn.execute(stmt.returning(*keys), rows).all())
    # MySQL/MariaDB: INSERT IGNORE's affected rows are the rows added (one execution, not executemany)
    return max(conn.execute(stmt, rows[0] if len(rows) == 1 else rows).rowcount, 0)
