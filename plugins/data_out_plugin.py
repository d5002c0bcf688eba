"""Airflow plugin: serves the Customer.io metrics receiver under ``/data-out`` on the api-server.

Customer.io reporting webhooks point at ``https://<airflow>/data-out/customerio``. The signing key is the
password of the ``data_out_customerio_webhook`` connection, read again every few seconds (a rotated key
takes effect without a restart); events land in the state database. See docs/receiver.md.
"""

from __future__ import annotations

from functools import lru_cache

from airflow.plugins_manager import AirflowPlugin
from sqlalchemy import Engine

from data_out.connections import ConnectionInfo
from data_out.metrics.receiver import SigningKey, create_app

SIGNING_KEY_CONN_ID = "data_out_customerio_webhook"
STATE_CONN_ID = "data_out_state"


def _info(conn_id: str) -> ConnectionInfo:
    from airflow.models.connection import Connection

    c = Connection.get_connection_from_secrets(conn_id)
    return ConnectionInfo(
        conn_id, c.conn_type or "", c.host, c.port, c.login, c.password, c.schema, c.extra_dejson or {}
    )


def _signing_key() -> str | None:
    return _info(SIGNING_KEY_CONN_ID).password


@lru_cache(maxsize=1)
def _state_engine() -> Engine:
    """Built on the first signed request, never at import (the api-server must start without the database)."""
    from data_out.connections import engine_for
    from data_out.state import ensure_schema

    engine = engine_for(_info(STATE_CONN_ID))
    ensure_schema(engine)
    return engine


signing_key = SigningKey(_signing_key, source=f"the password of connection {SIGNING_KEY_CONN_ID!r}")


class DataOutPlugin(AirflowPlugin):
    name = "data_out"
    fastapi_apps = [
        {"app": create_app(signing_key, _state_engine), "url_prefix": "/data-out", "name": "Data Out metrics receiver"}
    ]
