"""Who may see the pages: a signed-in Airflow user, checked by Airflow's own auth manager.

FastAPI apps of plugins are mounted on the api-server without Airflow's authentication, so each route
of this app declares the dependencies the core API uses (``airflow.api_fastapi.core_api.security``):
the JWT comes from the ``Authorization: Bearer`` header or from the ``_token`` cookie the Airflow UI
sets, and the configured auth manager (SimpleAuthManager, FAB, Keycloak, ...) validates it and decides.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends


def signed_in() -> Any:
    """Any signed-in user: the overview and the member lookup (Airflow's ``requires_authenticated``)."""
    from airflow.api_fastapi.core_api.security import requires_authenticated

    return Depends(requires_authenticated())


def may_read_dag() -> Any:
    """A user who may read the runs of the DAG in the path (``{dag_id}``): the Health tab."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag

    return Depends(requires_access_dag("GET", DagAccessEntity.RUN))


def user_dependency() -> Any:
    """The signed-in user object itself (its name is recorded with each lookup)."""
    from airflow.api_fastapi.core_api.security import get_user

    return Depends(get_user)


def user_name(user: Any) -> str:
    name = user.get_name() if hasattr(user, "get_name") else None
    return str(name or user.get_id())
