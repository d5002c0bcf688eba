"""Create or upgrade the Data Out state schema: ``python -m data_out.state.migrate [--conn-id data_out_state]``.

Every task already calls ``ensure_schema`` on first use; a deployment runs this once, before any worker
starts, so that the first tasks do not race to create tables, and so that a state database newer than
the deployed code fails the deploy step instead of every task. The connection is resolved through Airflow
(``AIRFLOW_CONN_*`` variable, secrets backend or metadata database), exactly as tasks resolve it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from airflow.sdk.exceptions import AirflowNotFoundException
from sqlalchemy import Engine, func, select

from data_out.connections import UnsupportedConnection, state_engine_for
from data_out.hooks.state import DataOutStateHook, connection_info
from data_out.state import ensure_schema, errors, schema_version


def current_version(engine: Engine) -> int | None:
    """The highest schema version recorded in the state database, or None before the first migration."""
    with engine.connect() as conn:
        return conn.scalar(select(func.max(schema_version.c.version)))


def migrate(conn_id: str = DataOutStateHook.default_conn_name) -> tuple[Engine, int]:
    """Bring the state database behind ``conn_id`` to this code's schema; return it and its version."""
    engine = errors.watch(state_engine_for(connection_info(conn_id)), conn_id)
    with errors.translated("the schema migration"):  # a database that is down: one clear line
        ensure_schema(engine)
        version = current_version(engine)
    if version is None:  # ensure_schema always records a version; None means it did not run
        raise RuntimeError(f"no schema version recorded in {conn_id!r} after migrating")
    return engine, version


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_out.state.migrate", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--conn-id",
        default=DataOutStateHook.default_conn_name,
        help="Airflow connection of the state database (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        engine, version = migrate(args.conn_id)
    except (AirflowNotFoundException, UnsupportedConnection, RuntimeError, errors.StateDatabaseError) as exc:
        # One clear line for the deploy log: a missing or wrong connection, or a newer schema, is not a bug.
        print(f"data_out.state.migrate: {exc}", file=sys.stderr)
        return 1
    where = engine.url.render_as_string(hide_password=True)
    print(f"data_out state database {args.conn_id} ({where}): schema version {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
