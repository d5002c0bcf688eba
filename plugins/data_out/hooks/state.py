"""Airflow's face of the state database and of every other connection Data Out reads."""

from __future__ import annotations

import re
from typing import Any, TypeVar

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException
from sqlalchemy import Engine

from data_out.connections import ConnectionInfo, state_engine_for
from data_out.redact import register_secret
from data_out.state import ensure_schema
from data_out.state_errors import translated, watch

T = TypeVar("T")

#: extras that hold credentials (``developer_token``, ``client_secret``, ``api_key``, ``refresh_token``)
_SECRET_EXTRA = re.compile(r"token|secret|password|passwd|key", re.IGNORECASE)


class MissingConnection(AirflowNotFoundException, ValueError):
    """A connection Airflow does not have: a retry cannot help (``ValueError`` fails the task), adding it does."""


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
    extra = {k: _stripped(v) for k, v in (conn.extra_dejson or {}).items()}
    info = ConnectionInfo(
        conn_id=conn_id,
        conn_type=conn.conn_type or "",
        host=_stripped(conn.host),
        port=conn.port,
        login=_stripped(conn.login),
        password=_stripped(conn.password),
        schema=_stripped(conn.schema),
        extra=extra,
    )
    register_secret(info.password)
    for key, value in extra.items():
        if _SECRET_EXTRA.search(key):
            register_secret(value)
    return info


def _stripped(value: T) -> T:
    """A value without the whitespace a paste leaves around it.

    A token pasted with its trailing newline is refused by ``requests`` in an error that quotes the
    header, token and all; nothing a connection holds means anything by surrounding whitespace.
    """
    return value.strip() if isinstance(value, str) else value  # type: ignore[return-value]


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
