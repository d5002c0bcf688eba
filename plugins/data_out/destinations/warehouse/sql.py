"""The warehouse destination's statements: its tables, and how rows are added and removed, per dialect.

Built with SQLAlchemy Core and nothing else (``data_out.state`` is SQLAlchemy only too), so the SQL the
destination sends can be compiled by dialects that cannot be installed beside Airflow: the side
environment of ``make dialects`` loads this file by its path (docs/development.md).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    TIMESTAMP,
    Column,
    DateTime,
    Delete,
    Insert,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    literal,
    select,
    union_all,
)
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.engine import Dialect

from data_out.state import key_in

#: a point in time, UTC. BigQuery's and Databricks' dialects make DateTime a wall-clock type without a zone
#: (DATETIME, TIMESTAMP_NTZ) whatever its ``timezone``; their TIMESTAMP is an instant
INSTANT = DateTime(timezone=True).with_variant(TIMESTAMP(timezone=True), "bigquery", "databricks")
#: warehouses whose primary keys are not enforced: rows are added with MERGE ... WHEN NOT MATCHED
MERGE_DIALECTS = frozenset({"snowflake", "bigquery", "redshift", "databricks"})
MERGE_BATCH_ROWS = 1_000
LEDGER = "data_out_applied_batches"


def destination_tables(
    audience: str, *, table: str | None = None, holdout_table: str | None = None, db_schema: str | None = None
) -> tuple[Table, Table, Table]:
    """The members table, the holdout table and the applied-batches ledger, in ``db_schema``."""
    md = MetaData(schema=db_schema)
    base = table or f"audience_{audience}"

    def members(name: str) -> Table:
        return Table(
            name,
            md,
            Column("member_key", String(256), primary_key=True),
            Column("added_at", INSTANT, nullable=False),
        )

    applied = Table(
        LEDGER,
        md,
        Column("idempotency_key", String(80), primary_key=True),
        Column("audience", String(64), nullable=False),
        Column("rows", Integer, nullable=False),
        Column("applied_at", INSTANT, nullable=False),
    )
    return members(base), members(holdout_table or f"{base}_holdout"), applied


def insert_ignore(dialect: Dialect, table: Table) -> Insert:
    """An INSERT whose rows already present (by primary key) are skipped, not an error: replays are no-ops."""
    if dialect.name == "sqlite":
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(table).on_conflict_do_nothing()
    if dialect.name in {"postgresql", "duckdb"}:  # DuckDB takes Postgres' ON CONFLICT DO NOTHING
        return postgresql.insert(table).on_conflict_do_nothing()
    if dialect.name in {"mysql", "mariadb"}:
        return mysql.insert(table).prefix_with("IGNORE")
    raise NotImplementedError(f"{dialect.name} adds rows with merge_new")


def merge_new(
    dialect: Dialect, table: Table, rows: list[dict[str, object]]
) -> tuple[str, dict[str, object] | tuple[object, ...]]:
    """``MERGE INTO table USING (rows) ... WHEN NOT MATCHED THEN INSERT`` for warehouses that do not enforce
    primary keys (Snowflake, BigQuery, Redshift, Databricks): the driver's SQL and its parameters, by name or,
    for a positional paramstyle (redshift_connector's ``%s``), in the order of the placeholders."""
    columns = list(rows[0])
    source = union_all(
        *[
            select(*[literal(row[c], table.c[c].type).label(c) for c in columns])
            for row in rows  # one SELECT per row: every one of these warehouses takes UNION ALL as a source
        ]
    ).subquery("src")
    compiled = select(source).compile(dialect=dialect)
    src_sql = str(compiled).split("FROM", 1)[1].strip()  # "(SELECT ... UNION ALL ...) AS src"
    prep = dialect.identifier_preparer
    target = prep.format_table(table)
    keys = [c.name for c in table.primary_key.columns]
    on = " AND ".join(f"tgt.{prep.quote(k)} = src.{prep.quote(k)}" for k in keys)
    names = ", ".join(prep.quote(c) for c in columns)
    values = ", ".join(f"src.{prep.quote(c)}" for c in columns)
    sql = f"MERGE INTO {target} AS tgt USING {src_sql} ON {on} WHEN NOT MATCHED THEN INSERT ({names}) VALUES ({values})"
    if compiled.positional:
        return sql, tuple(compiled.params[name] for name in compiled.positiontup or ())
    return sql, dict(compiled.params)


def delete_keys(dialect: Any, table: Table, keys: list[str]) -> Delete:
    """Remove these members: ``DELETE ... WHERE member_key IN (...)`` (Postgres: ``= ANY(:keys)``)."""
    return delete(table).where(key_in(dialect, table.c.member_key, keys))
