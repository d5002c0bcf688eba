"""What differs between the SQL databases a source or the warehouse destination can live in.

Audience SQL is written in one dialect (``source.dialect`` in the audience file; by default the SQL is
taken as portable and sent as written). Before a run the query is parsed in that dialect and, when the
connection speaks another, translated with sqlglot (a pure-Python SQL parser and transpiler that knows
Snowflake, BigQuery, Redshift, Databricks, MySQL, DuckDB, Postgres and SQLite): a query that does not
parse, or uses something the connection's dialect cannot express, fails before anything runs, with the
reason. sqlglot was chosen over ``EXPLAIN`` because validation must work offline (at DAG parse time
and in CI, with no warehouse credentials) and over the SQLAlchemy dialects' compilers because those
compile SQLAlchemy constructs, not a user's SQL text.

Time windows stay bound parameters (``:as_of``, ``:cart_since``...) in every dialect: SQLAlchemy turns
them into the driver's own style (``%s``, ``?``, ``%(name)s``, BigQuery's ``@name``), so translated SQL
keeps the ``:name`` form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: sqlglot loads only when a query is checked
    from sqlglot import exp

#: SQLAlchemy dialect name -> sqlglot dialect name
SQLGLOT_NAMES: dict[str, str] = {
    "postgresql": "postgres",
    "sqlite": "sqlite",
    "mysql": "mysql",
    "mariadb": "mysql",
    "duckdb": "duckdb",
    "snowflake": "snowflake",
    "bigquery": "bigquery",
    "redshift": "redshift",
    "databricks": "databricks",
}
#: what an audience file may name in ``source.dialect`` (sqlglot's names)
WRITTEN_IN = frozenset(SQLGLOT_NAMES.values())


class QueryProblem(ValueError):
    """The audience query cannot run on its connection; the message says why and what to change."""


@dataclass(frozen=True)
class Translated:
    sql: str
    changed: bool


def _parse(sql: str, dialect: str) -> list[exp.Expr]:
    import sqlglot
    from sqlglot.errors import ParseError, TokenError

    try:
        return [e for e in sqlglot.parse(sql, read=dialect) if e is not None]
    except (ParseError, TokenError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise QueryProblem(f"the query does not parse as {dialect} SQL ({first})") from None


def parse_problem(sql: str, written_in: str) -> str | None:
    """Why ``sql`` is not one SELECT in ``written_in`` (sqlglot's name), or ``None``. Offline."""
    from sqlglot import exp

    try:
        statements = _parse(sql, written_in)
    except QueryProblem as exc:
        return str(exc)
    if len(statements) != 1:
        return f"the query holds {len(statements)} statements; an audience query is one SELECT"
    if not isinstance(statements[0], exp.Query):
        return f"the query is a {statements[0].key.upper()} statement, not a SELECT"
    return None


def single_select_problem(sql: str, sqlalchemy_dialect: str) -> str | None:
    """For databases whose DDL commits implicitly (MySQL, MariaDB): refuse anything but one SELECT."""
    return parse_problem(sql, SQLGLOT_NAMES.get(sqlalchemy_dialect, sqlalchemy_dialect))


def translate(sql: str, written_in: str | None, sqlalchemy_dialect: str) -> Translated:
    """The query as the connection's dialect needs it; raises ``QueryProblem`` if it cannot be expressed.

    Without ``written_in`` the SQL is sent as written (the shipped audiences are portable SQL).
    """
    target = SQLGLOT_NAMES.get(sqlalchemy_dialect)
    if written_in is None or target is None or target == written_in:
        return Translated(sql, False)
    from sqlglot import exp
    from sqlglot.errors import ErrorLevel, UnsupportedError

    problem = parse_problem(sql, written_in)
    if problem:
        raise QueryProblem(problem)
    (tree,) = _parse(sql, written_in)
    for node in list(tree.find_all(exp.Placeholder)):
        if node.name:  # keep SQLAlchemy's :name binds, whatever the target's own parameter style
            node.replace(exp.var(f":{node.name}"))
    try:
        out = tree.sql(dialect=target, unsupported_level=ErrorLevel.RAISE, pretty=True)
    except UnsupportedError as exc:
        raise QueryProblem(f"the query cannot be written in {target} SQL: {exc}") from None
    return Translated(out, True)


#: identifier rules per SQLAlchemy dialect, for the docs and the destination's table names
UNQUOTED_CASE: dict[str, str] = {
    "snowflake": "upper",  # unquoted names are stored upper-case; SQLAlchemy's dialect reports them lower-case
    "postgresql": "lower",
    "redshift": "lower",
    "duckdb": "lower (case-insensitive, case kept)",
    "mysql": "as written (table names follow the file system's case rules)",
    "bigquery": "as written (column names case-insensitive, table names case-sensitive)",
}


def wants_aware_timestamps(sqlalchemy_dialect: str) -> bool:
    """BigQuery compares a ``TIMESTAMP`` column only with a ``TIMESTAMP`` parameter (a time zone-aware
    datetime); a naive one is sent as ``DATETIME`` and refused. Elsewhere naive UTC compares with both
    timestamp-without-zone columns and SQLite's ISO text."""
    return sqlalchemy_dialect == "bigquery"
