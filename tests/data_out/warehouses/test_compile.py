"""Compile-only: the SQL the product would send to BigQuery, Redshift and Snowflake, checked by an
independent parser (sqlglot) in that warehouse's dialect. BigQuery and Redshift are compiled by their own
SQLAlchemy dialects (sqlalchemy-bigquery, sqlalchemy-redshift); Snowflake's dialect cannot be installed
beside this project's test oracles (docs/warehouses.md), so its SQL is the Postgres-compiled statement
translated by sqlglot, which is also how an audience written for Postgres reaches it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import sqlglot
from sqlalchemy import delete, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.schema import CreateTable
from sqlglot import exp

from data_out.destinations.warehouse import WarehouseSettings, destination_tables, merge_new
from data_out.dialects import translate
from data_out.state import key_in

SQL = Path(__file__).resolve().parents[3] / "include" / "audiences" / "sql" / "cart_abandon_6h.sql"
NOW = dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC)
ROWS = [{"member_key": f"c{i}", "added_at": NOW} for i in range(3)]


def dialect(name: str) -> Dialect:
    """The dialect with its real DB-API (paramstyle included); nothing connects."""
    cls = make_url({"bigquery": "bigquery://", "redshift": "redshift+psycopg2://"}[name]).get_dialect()
    return cls(dbapi=cls.import_dbapi())


def tables(schema: str | None = "retention"):  # type: ignore[no-untyped-def]
    return destination_tables("cio_cart_abandon_6h_v1", WarehouseSettings(type="warehouse", db_schema=schema))


@pytest.mark.parametrize("name", ["bigquery", "redshift"])
def test_destination_ddl_parses_in_the_warehouse_dialect(name: str) -> None:
    for table in tables():
        ddl = str(CreateTable(table).compile(dialect=dialect(name)))
        tree = sqlglot.parse_one(ddl, read=name)
        assert isinstance(tree, exp.Create)
        types = {c.name: c.args["kind"].sql(name).upper() for c in tree.find_all(exp.ColumnDef)}
        instant = "added_at" if "member_key" in types else "applied_at"
        # a UTC instant: BigQuery's DATETIME would be a wall-clock time without a zone
        assert types[instant] == ("TIMESTAMP" if name == "bigquery" else "TIMESTAMP WITH TIME ZONE"), ddl


@pytest.mark.parametrize("name", ["bigquery", "redshift"])
def test_adds_are_a_merge_that_inserts_only_missing_keys(name: str) -> None:
    members = tables()[0]
    sql, params = merge_new(dialect(name), members, ROWS)
    tree = sqlglot.parse_one(_inline(sql, params, name), read=name)
    assert isinstance(tree, exp.Merge)
    assert tree.this.name == "audience_cio_cart_abandon_6h_v1"
    whens = tree.args["whens"].expressions
    assert [w.args.get("matched") for w in whens] == [False]  # only WHEN NOT MATCHED: never an update
    assert sorted(v for v in params.values() if isinstance(v, str)) == ["c0", "c1", "c2"]


def _inline(sql: str, params: dict[str, object], name: str) -> str:
    """Literal values in place of the driver's parameters, so a SQL parser can read the statement."""
    for key, value in sorted(params.items(), key=lambda kv: -len(kv[0])):  # param_10 before param_1
        if isinstance(value, list):  # BigQuery: IN UNNEST(one array parameter); elsewhere expanded
            literal = "[" + ", ".join(f"'{v}'" for v in value) + "]"
        elif isinstance(value, str):
            literal = f"'{value}'"
        else:
            literal = f"TIMESTAMP '{value:%Y-%m-%d %H:%M:%S}'"
        for style in (f"%({key}:STRING)s", f"%({key}:TIMESTAMP)s", f"%({key})s", f":{key}"):
            sql = sql.replace(style, literal)
    assert "%(" not in sql, sql
    return sql


@pytest.mark.parametrize("name", ["bigquery", "redshift"])
def test_removes_are_a_delete_by_key(name: str) -> None:
    members = tables()[0]
    stmt = delete(members).where(key_in(dialect(name), members.c.member_key, ["c1", "c2"]))
    compiled = stmt.compile(dialect=dialect(name), compile_kwargs={"render_postcompile": True})
    tree = sqlglot.parse_one(_inline(str(compiled), compiled.params, name), read=name)
    assert isinstance(tree, exp.Delete)


@pytest.mark.parametrize("name", ["bigquery", "redshift", "snowflake"])
def test_a_shipped_audience_query_reaches_the_warehouse_with_bound_windows(name: str) -> None:
    translated = translate(SQL.read_text(), "postgres", name if name != "redshift" else "redshift").sql
    tree = sqlglot.parse_one(translated.replace(":as_of", "x").replace(":cart_since", "y"), read=name)
    assert isinstance(tree, exp.Select)
    assert {"as_of", "cart_since"} <= set(text(translated).compile().params)  # still bound, never inlined
    if name != "snowflake":  # and SQLAlchemy turns them into the driver's own parameters
        compiled = str(text(translated).compile(dialect=dialect(name)))
        assert ":as_of" not in compiled and ":cart_since" not in compiled


def test_snowflake_merge_from_the_postgres_statement() -> None:
    members = tables()[0]
    sql, params = merge_new(postgresql.dialect(), members, ROWS)
    snowflake = sqlglot.transpile(_inline(sql, params, "postgres"), read="postgres", write="snowflake")[0]
    tree = sqlglot.parse_one(snowflake, read="snowflake")
    assert isinstance(tree, exp.Merge)
    assert tree.this.sql("snowflake") == "retention.audience_cio_cart_abandon_6h_v1 AS tgt"
