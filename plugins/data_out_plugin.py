"""Airflow plugin: serves the Customer.io metrics receiver under ``/data-out`` on the api-server.

Customer.io reporting webhooks point at ``https://<airflow>/data-out/customerio``. The signing key is the
password of the ``data_out_customerio_webhook`` connection; events land in the state database.
"""

from __future__ import annotations

from functools import lru_cache

from airflow.plugins_manager import AirflowPlugin

from data_out.metrics.receiver import ReceiverSettings, create_app


@lru_cache(maxsize=1)
def _settings() -> ReceiverSettings:
    from airflow.models.connection import Connection

    from data_out.connections import ConnectionInfo, engine_for
    from data_out.state import ensure_schema

    def info(conn_id: str) -> ConnectionInfo:
        c = Connection.get_connection_from_secrets(conn_id)
        return ConnectionInfo(
            conn_id, c.conn_type or "", c.host, c.port, c.login, c.password, c.schema, c.extra_dejson or {}
        )

    engine = engine_for(info("data_out_state"))
    ensure_schema(engine)
    return ReceiverSettings(engine=engine, secret=info("data_out_customerio_webhook").password or "")


class DataOutPlugin(AirflowPlugin):
    name = "data_out"
    fastapi_apps = [{"app": create_app(_settings), "url_prefix": "/data-out", "name": "Data Out metrics receiver"}]
