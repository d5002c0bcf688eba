"""Airflow plugin: the Customer.io metrics receiver and the Data Out pages, on the api-server.

Customer.io reporting webhooks point at ``https://<airflow>/data-out/customerio``. The signing key is the
password of the ``data_out_customerio_webhook`` connection, read again every few seconds (a rotated key
takes effect without a restart); events land in the state database. See docs/receiver.md. The receiver
is authenticated by that signature alone (Customer.io has no Airflow user).

The pages (``data_out.ui``) are served under ``/data-out-ui`` and shown inside Airflow's UI: a "Data Out"
entry in the navigation and a "Health" tab on every DAG (meaningful on audience DAGs; Airflow 3.3 offers
no way to limit a DAG tab to some DAGs, so other DAGs get a short note). Every page requires a signed-in
Airflow user, checked by Airflow's auth manager. See docs/ui.md.
"""

from __future__ import annotations

from functools import lru_cache

from airflow.plugins_manager import AirflowPlugin
from sqlalchemy import Engine

from data_out.connections import ConnectionInfo, info_from_connection
from data_out.metrics.receiver import SigningKey, create_app
from data_out.ui.app import HEALTH_HREF
from data_out.ui.app import URL_PREFIX as UI_PREFIX
from data_out.ui.app import create_app as create_ui_app

SIGNING_KEY_CONN_ID = "data_out_customerio_webhook"
STATE_CONN_ID = "data_out_state"


def _info(conn_id: str) -> ConnectionInfo:
    from airflow.models.connection import Connection

    return info_from_connection(conn_id, Connection.get_connection_from_secrets(conn_id))


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
        {"app": create_app(signing_key, _state_engine), "url_prefix": "/data-out", "name": "Data Out metrics receiver"},
        {"app": create_ui_app(_state_engine), "url_prefix": UI_PREFIX, "name": "Data Out pages"},
    ]
    external_views = [
        {
            "name": "Data Out",
            "href": UI_PREFIX + "/",
            "destination": "nav",
            "url_route": "data-out",
            "nav_top_level": True,
        },
        {"name": "Health", "href": HEALTH_HREF, "destination": "dag", "url_route": "data-out-health"},
    ]
