"""Provider metadata: registers Data Out's connection types with Airflow (entry point in pyproject.toml)."""

from __future__ import annotations

from typing import Any

from data_out.connection_types import http_kinds


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "data-out-airflow",
        "name": "Data Out for Airflow",
        "description": "Audience sync from the warehouse and Customer.io to ad platforms, the CDP and webhooks.",
        "connection-types": [{"connection-type": k.conn_type, "hook-class-name": k.hook} for k in http_kinds()],
    }
