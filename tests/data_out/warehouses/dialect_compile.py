"""The statements the product sends to a warehouse, compiled by that warehouse's own SQLAlchemy dialect.

Imported by the compile-only tests for the dialects installed in the test environment (BigQuery,
Redshift), and run as a script under ``.venv-dialects/bin/python`` for those that cannot be installed
there (Snowflake, Databricks: ``make dialects``, docs/development.md). That environment has SQLAlchemy and
the dialects but not Airflow or pydantic, so the destination's statement builders are loaded from
``destinations/warehouse/sql.py`` by its path: importing ``data_out.destinations`` would import every
destination. Nothing here connects: each dialect is given its DB-API module only for its parameter style.

As a script: reads a JSON request on stdin (``request()``) and writes ``{dialect name: statements}``.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

PLUGINS = Path(__file__).resolve().parents[3] / "plugins"
URLS = {
    "bigquery": "bigquery://",
    "redshift": "redshift+psycopg2://",
    "snowflake": "snowflake://",
    "databricks": "databricks://",
}


def warehouse_sql() -> Any:
    """``data_out/destinations/warehouse/sql.py``, without the package's ``__init__`` (it needs only
    SQLAlchemy and ``data_out.state``, which needs only SQLAlchemy)."""
    if str(PLUGINS) not in sys.path:
        sys.path.insert(0, str(PLUGINS))
    name = "data_out.destinations.warehouse.sql"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, PLUGINS / "data_out" / "destinations" / "warehouse" / "sql.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dialect(name: str) -> Any:
    """The dialect with its real DB-API (paramstyle included)."""
    from sqlalchemy.engine import make_url

    cls = make_url(URLS[name]).get_dialect()
    return cls(dbapi=cls.import_dbapi())


def compile_all(name: str, request: dict[str, Any]) -> dict[str, Any]:
    """The audience query as the connection receives it, and the destination's DDL, MERGE and DELETE."""
    from importlib.metadata import version

    from sqlalchemy import text
    from sqlalchemy.schema import CreateTable

    wsql = warehouse_sql()
    d = dialect(name)
    members, holdout, applied = wsql.destination_tables(request["audience"], db_schema=request["db_schema"])
    rows = [{"member_key": k, "added_at": request["now"]} for k in request["keys"]]
    merge_sql, merge_params = wsql.merge_new(d, members, rows)
    removed = wsql.delete_keys(d, members, request["keys"][1:])
    delete = removed.compile(dialect=d, compile_kwargs={"render_postcompile": True})
    query = text(request["queries"][name]).bindparams(**request["params"]).compile(dialect=d)
    stored = d.denormalize_name(members.name) if d.requires_name_normalize else members.name
    return {
        "sqlalchemy": version("sqlalchemy"),
        "dialect": type(d).__module__.split(".")[0],
        "paramstyle": d.paramstyle,
        "query": {"sql": str(query), "params": dict(query.params)},
        "ddl": [str(CreateTable(t).compile(dialect=d)).strip() for t in (members, holdout, applied)],
        "merge": {"sql": merge_sql, "params": merge_params},
        "delete": {"sql": str(delete), "params": dict(delete.params)},
        # Snowflake stores unquoted names upper-case; its dialect reports them lower-case again
        "stored_name": stored,
        "reported_name": d.normalize_name(stored) if d.requires_name_normalize else stored,
    }


def encode(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return {"$datetime": value.isoformat()}
    raise TypeError(type(value).__name__)


def decode(obj: dict[str, Any]) -> Any:
    return dt.datetime.fromisoformat(obj["$datetime"]) if set(obj) == {"$datetime"} else obj


def main() -> None:
    request = json.loads(sys.stdin.read(), object_hook=decode)
    out = {name: compile_all(name, request) for name in request["dialects"]}
    if any(m.split(".")[0] in {"airflow", "pydantic"} for m in sys.modules):  # the builders stayed pure
        raise SystemExit("the statement builders imported Airflow or pydantic")
    json.dump(out, sys.stdout, default=encode)


if __name__ == "__main__":
    main()
