"""Airflow's face of the state database and of every other connection Data Out reads."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException
from sqlalchemy import Engine

from data_out.connections import ConnectionInfo, info_from_connection, state_engine_for
from data_out.errors import MISSING_CONNECTION_NEXT_STEP, ConfigurationError
from data_out.state import ensure_schema
from data_out.state.errors import translated, watch


class MissingConnection(ConfigurationError, AirflowNotFoundException, ValueError):
    """A connection Airflow does not have: a retry cannot help, adding it does."""

    next_step = MISSING_CONNECTION_NEXT_STEP


def connection_info(conn_id: str) -> ConnectionInfo:
    """Resolve an Airflow connection (env var, secrets backend or metadata DB) into plain data.

    Every text field is stripped of surrounding whitespace, and the password and credential extras are
    registered with ``redact`` so that any message echoing them is masked (``redact.scrub``).
    """
    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        raise MissingConnection(
            f"connection {conn_id!r} is not defined in Airflow; nothing was synced. Add it (Admin > Connections, "
            f"`airflow connections add {conn_id} ...`, or the environment variable AIRFLOW_CONN_{conn_id.upper()}) "
            "or correct the conn_id in the audience file, then clear the task"
        ) from None
    return info_from_connection(conn_id, conn)


class DataOutStateHook(BaseHook):
    """The state database (SQLite file or Postgres); creates and migrates its schema on first use."""

    conn_name_attr = "data_out_state_conn_id"
    default_conn_name = "data_out_state"
    conn_type = "postgres"  # or sqlite: a plain database connection, no type of its own
    hook_name = "Data Out state database"

    def __init__(self, data_out_state_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_out_state_conn_id = data_out_state_conn_id

    def get_conn(self) -> Engine:
        engine = watch(state_engine_for(connection_info(self.data_out_state_conn_id)), self.data_out_state_conn_id)
        with translated("opening the state database"):  # the first place a down database shows
            ensure_schema(engine)
        return engine
