"""Compile-only: the SQL the product would send to BigQuery, Redshift, Snowflake and Databricks, compiled by
each warehouse's own SQLAlchemy dialect and read back by an independent parser (sqlglot) in that dialect.

BigQuery and Redshift's dialects are installed here. Snowflake's cannot be installed beside this project's
test oracles (docs/warehouses.md "Not installed here"), so Snowflake and Databricks compile in the side
environment ``.venv-dialects`` that ``make test`` builds (``make dialects``): ``dialect_compile.py`` runs
there with the product's own statement builders. Nothing connects to a warehouse."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
import sqlglot
from sqlglot import exp

import data_out.destinations.warehouse.sql  # noqa: F401 - imported first: dialect_compile reuses the module
from data_out.dialects import translate
from data_out.sources.warehouse import window_params
from tests.data_out.warehouses import dialect_compile

ROOT = Path(__file__).resolve().parents[3]
SQL = ROOT / "include" / "audiences" / "sql" / "cart_abandon_6h.sql"
SIDE_PYTHON = ROOT / ".venv-dialects" / "bin" / "python"
NOW = dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC)
IN_PROCESS = ["bigquery", "redshift"]
SIDE = ["snowflake", "databricks"]
ALL = IN_PROCESS + SIDE
TABLE = "audience_cio_cart_abandon_6h_v1"
#: each DB-API module's declared paramstyle (PEP 249): BigQuery, psycopg2, snowflake.connector (client-side
#: binding, its default), databricks.sql (native parameters)
PARAMSTYLE = {"bigquery": "pyformat", "redshift": "pyformat", "snowflake": "pyformat", "databricks": "named"}


def request() -> dict[str, Any]:
    """The shipped audience written for Postgres (``source.dialect: postgres``), as ``SqlSource`` translates
    it for each connection, with its bound windows; and three members to add, two to remove."""
    return {
        "audience": "cio_cart_abandon_6h_v1",
        "db_schema": "retention",
        "keys": ["c0", "c1", "c2"],
        "now": NOW,
        "queries": {name: translate(SQL.read_text(), "postgres", name).sql for name in ALL},
        "params": window_params(NOW, {"cart_since": dt.timedelta(hours=6)}),
    }


@pytest.fixture(scope="module")
def compiled() -> dict[str, dict[str, Any]]:
    req = request()
    out = {name: dialect_compile.compile_all(name, req) for name in IN_PROCESS}
    if not SIDE_PYTHON.exists():
        pytest.fail(f"{SIDE_PYTHON} is missing: run `make dialects` (make test builds it)")
    side = subprocess.run(
        [str(SIDE_PYTHON), str(Path(dialect_compile.__file__))],
        input=json.dumps({**req, "dialects": SIDE}, default=dialect_compile.encode),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert side.returncode == 0, side.stderr
    out.update(json.loads(side.stdout, object_hook=dialect_compile.decode))
    return out


def _inline(sql: str, params: dict[str, object]) -> str:
    """Literal values in place of the driver's parameters, so a SQL parser can read the statement."""
    for key, value in sorted(params.items(), key=lambda kv: -len(kv[0])):  # param_10 before param_1
        if isinstance(value, list):  # BigQuery: IN UNNEST(one array parameter); elsewhere expanded
            literal = "[" + ", ".join(f"'{v}'" for v in value) + "]"
        elif isinstance(value, str):
            literal = f"'{value}'"
        else:
            literal = f"TIMESTAMP '{value:%Y-%m-%d %H:%M:%S}'"
        for style in (f"%({key}:STRING)s", f"%({key}:TIMESTAMP)s", f"%({key}:DATETIME)s", f"%({key})s"):
            sql = sql.replace(style, literal)
        sql = sql.replace(f":`{key}`", literal)  # Databricks' named style, quoted
        sql = re.sub(rf":{key}\b", literal, sql)
    assert "%(" not in sql and not re.search(r":`?[A-Za-z_]", sql), sql
    return sql


def test_the_side_environment_compiles_with_the_same_sqlalchemy(compiled: dict[str, dict[str, Any]]) -> None:
    assert {compiled[name]["dialect"] for name in SIDE} == {"snowflake", "databricks"}  # the real dialects
    assert {compiled[name]["sqlalchemy"] for name in SIDE} == {sqlalchemy.__version__}


#: a UTC instant, as each warehouse's documentation names it (TIMESTAMP_NTZ or DATETIME would lose the zone)
INSTANT = {
    "bigquery": "TIMESTAMP",
    "redshift": "TIMESTAMP WITH TIME ZONE",
    "snowflake": "TIMESTAMP_TZ",
    "databricks": "TIMESTAMP",
}


@pytest.mark.parametrize("name", ALL)
def test_destination_ddl_parses_in_the_warehouse_dialect(name: str, compiled: dict[str, dict[str, Any]]) -> None:
    ddl = compiled[name]["ddl"]
    assert len(ddl) == 3  # members, holdout, the applied-batches ledger
    for statement in ddl:
        tree = sqlglot.parse_one(statement, read=name)
        assert isinstance(tree, exp.Create), statement
        instant = "added_at" if "member_key" in statement else "applied_at"
        declared = re.search(rf"\b{instant}\W* (.+?) NOT NULL", statement)
        assert declared and declared.group(1) == INSTANT[name], statement


@pytest.mark.parametrize("name", ALL)
def test_adds_are_a_merge_that_inserts_only_missing_keys(name: str, compiled: dict[str, dict[str, Any]]) -> None:
    merge = compiled[name]["merge"]
    tree = sqlglot.parse_one(_inline(merge["sql"], merge["params"]), read=name)
    assert isinstance(tree, exp.Merge)
    assert tree.this.name == TABLE
    whens = tree.args["whens"].expressions
    assert [w.args.get("matched") for w in whens] == [False]  # only WHEN NOT MATCHED: never an update
    assert sorted(v for v in merge["params"].values() if isinstance(v, str)) == ["c0", "c1", "c2"]
    assert all(v == NOW for v in merge["params"].values() if not isinstance(v, str))  # aware UTC, not naive


@pytest.mark.parametrize("name", ALL)
def test_removes_are_a_delete_by_key(name: str, compiled: dict[str, dict[str, Any]]) -> None:
    removed = compiled[name]["delete"]
    tree = sqlglot.parse_one(_inline(removed["sql"], removed["params"]), read=name)
    assert isinstance(tree, exp.Delete)
    assert tree.this.name == TABLE
    where = tree.args["where"].this
    keys = where.expressions if isinstance(where, exp.In) and where.expressions else where.find_all(exp.Literal)
    assert sorted(k.name for k in keys if k.name.startswith("c")) == ["c1", "c2"]


@pytest.mark.parametrize("name", ALL)
def test_a_shipped_audience_query_reaches_the_warehouse_with_bound_windows(
    name: str, compiled: dict[str, dict[str, Any]]
) -> None:
    query = compiled[name]["query"]
    assert compiled[name]["paramstyle"] == PARAMSTYLE[name]
    assert set(query["params"]) == {"as_of", "cart_since"}  # still bound, never inlined...
    marker = {"pyformat": "%(as_of", "named": ":`as_of`"}[PARAMSTYLE[name]]
    assert marker in query["sql"]  # ...in the driver's own style
    assert ":as_of" not in query["sql"]
    tree = sqlglot.parse_one(_inline(query["sql"], query["params"]), read=name)
    assert isinstance(tree, exp.Select)
    assert {t.name for t in tree.find_all(exp.Table)} == {"customers", "carts", "orders"}


def test_snowflake_names_are_unquoted_so_stored_upper_case(compiled: dict[str, dict[str, Any]]) -> None:
    """Snowflake stores an unquoted name upper-case and a quoted one as written: the dialect leaves the
    product's lower-case names unquoted (analysts query them without quotes) and reports them back
    lower-case, which is what ``create_all(checkfirst=True)`` compares."""
    snowflake = compiled["snowflake"]
    assert (snowflake["stored_name"], snowflake["reported_name"]) == (TABLE.upper(), TABLE)
    statements = [(ddl, {}) for ddl in snowflake["ddl"]]
    statements += [(snowflake[s]["sql"], snowflake[s]["params"]) for s in ("merge", "delete")]
    for statement, params in statements:
        tree = sqlglot.parse_one(_inline(statement, params), read="snowflake")
        assert not any(t.this.quoted for t in tree.find_all(exp.Table)), statement
    ledger = sqlglot.parse_one(snowflake["ddl"][2], read="snowflake")
    quoted = {c.name for c in ledger.find_all(exp.ColumnDef) if c.this.quoted}
    assert quoted == {"rows"}  # ROWS is reserved in Snowflake: that column is quoted, so stored lower-case


def test_databricks_tables_are_delta(compiled: dict[str, dict[str, Any]]) -> None:
    for statement in compiled["databricks"]["ddl"]:
        assert isinstance(sqlglot.parse_one(statement, read="databricks"), exp.Create)
        assert re.search(r"\)\s*USING DELTA\b", statement), statement
