"""A state database with a few runs of the test audiences, and Airflow users with tokens from its auth manager."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine

from data_out.config import load_audiences
from data_out.engine.holdout import is_held_out
from data_out.engine.runner import AudienceRunner
from data_out.ui.catalog import Catalog, load_catalog
from tests.conftest import People

#: a person first seen in the third run whom the memory destination refuses (not held out, so it is sent)
REJECTED = next(f"c{i:04d}" for i in range(45, 99) if not is_held_out("test-salt", f"c{i:04d}", 20))
AS_OF = dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC)
TARGETS = "test_targets_v1"
BUYERS = "test_buyers_v1"


def person(i: int, **kw: object) -> dict:
    return {"customer_id": f"c{i:04d}", "email": f"  Person.{i}@Example.com ", "phone": f"+1 415 555 {i:04d}", **kw}


def run_all(audiences_dir: Path, resolver: Callable, engine: Engine, holder: str) -> None:
    loaded = load_audiences(audiences_dir)
    for name in (BUYERS, TARGETS):  # the suppression first, as the DAGs' asset schedule orders them
        AudienceRunner(engine, loaded, name, resolver).run(f"{holder}/{name}", AS_OF)


@pytest.fixture
def synced(audiences_dir: Path, resolver: Callable, state_engine: Engine, people: People, store) -> Catalog:  # type: ignore[no-untyped-def]
    """Three runs: 30 people, then 40 (two bought), then 35 and a newcomer the destination rejects."""
    people.set([person(i) for i in range(30)])
    run_all(audiences_dir, resolver, state_engine, "r1")
    people.set([person(i, bought=int(i in (3, 4))) for i in range(40)])
    run_all(audiences_dir, resolver, state_engine, "r2")
    store.reject[REJECTED] = "vendor says: invalid entry"
    people.set([person(i, bought=int(i in (3, 4))) for i in range(35)] + [person(int(REJECTED[1:]))])
    run_all(audiences_dir, resolver, state_engine, "r3")
    return load_catalog(audiences_dir)


@pytest.fixture(scope="session")
def auth_manager():  # type: ignore[no-untyped-def]
    """The auth manager Airflow is configured with (SimpleAuthManager in this project's Airflow home)."""
    from airflow.api_fastapi.app import create_auth_manager

    manager = create_auth_manager()
    manager.init()
    return manager


@pytest.fixture
def token(auth_manager) -> str:  # type: ignore[no-untyped-def]
    """A JWT of a signed-in viewer, as Airflow's login issues it."""
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return auth_manager.generate_jwt(SimpleAuthManagerUser(username="alice", role="viewer"))
