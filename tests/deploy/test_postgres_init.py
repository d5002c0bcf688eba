"""deploy/postgres/initdb + ``data_out.state.migrate``: what the compose stack does to an empty Postgres, run for real.

The script runs against the machine's PostgreSQL exactly as the postgres image runs it (``psql`` as the
superuser, variables from the environment); then the state schema is migrated as the Data Out role, and
Airflow's role is shown to be an ordinary owner of its own database, not the superuser.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError, ProgrammingError

from data_out.state import SCHEMA_VERSION, migrate
from tests.deploy import ROOT

INIT_SCRIPT = ROOT / "deploy" / "postgres" / "initdb" / "10-databases.sh"

pytestmark = pytest.mark.postgres


@pytest.fixture
def cluster(pg_admin: Engine) -> Iterator[dict[str, str]]:
    """An empty server database, as POSTGRES_DB is on first start; everything is dropped afterwards."""
    if not shutil.which("psql"):
        pytest.fail("psql (the PostgreSQL client) is needed to run the postgres image's init script")
    tag = uuid.uuid4().hex[:10]
    names = {
        "POSTGRES_DB": f"do_test_{tag}_server",
        "AIRFLOW_DB_NAME": f"do_test_{tag}_airflow",
        "AIRFLOW_DB_USER": f"do_test_{tag}_af",
        "AIRFLOW_DB_PASSWORD": "airflow-db-password-1",
        "DATA_OUT_STATE_DB_NAME": f"do_test_{tag}_state",
        "DATA_OUT_STATE_DB_USER": f"do_test_{tag}_role",
        "DATA_OUT_STATE_DB_PASSWORD": 'it\'s a "quoted" password',
    }
    with pg_admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{names["POSTGRES_DB"]}"'))
    url = pg_admin.url
    env = {
        **os.environ,
        **names,
        "POSTGRES_USER": url.username or "postgres",
        "PGHOST": url.host or "127.0.0.1",
        "PGPORT": str(url.port or 5432),
        **({"PGPASSWORD": url.password} if url.password else {}),
    }
    yield env
    with pg_admin.connect() as conn:
        for db in (names["DATA_OUT_STATE_DB_NAME"], names["AIRFLOW_DB_NAME"], names["POSTGRES_DB"]):
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        for role in (names["DATA_OUT_STATE_DB_USER"], names["AIRFLOW_DB_USER"]):
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))


def _run_init(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(INIT_SCRIPT)], env=env, capture_output=True, text=True, timeout=120)


def test_init_script_then_migrate_as_the_state_role(
    cluster: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    done = _run_init(cluster)
    assert done.returncode == 0, done.stderr

    state = {
        "conn_type": "postgres",
        "host": cluster["PGHOST"],
        "port": int(cluster["PGPORT"]),
        "login": cluster["DATA_OUT_STATE_DB_USER"],
        "password": cluster["DATA_OUT_STATE_DB_PASSWORD"],
        "schema": cluster["DATA_OUT_STATE_DB_NAME"],
    }
    monkeypatch.setenv("AIRFLOW_CONN_DATA_OUT_STATE", json.dumps(state))
    assert migrate.main([]) == 0
    assert f"schema version {SCHEMA_VERSION}" in capsys.readouterr().out
    engine, version = migrate.migrate()
    engine.dispose()
    assert version == SCHEMA_VERSION

    # the Data Out role cannot reach Airflow's metadata database
    url = engine.url.set(database=cluster["AIRFLOW_DB_NAME"])
    outsider = create_engine(url)
    with pytest.raises(OperationalError, match="permission denied"):
        outsider.connect().close()
    outsider.dispose()


def _as(cluster: dict[str, str], user: str, password: str, database: str) -> Engine:
    return create_engine(
        URL.create(
            "postgresql+psycopg",
            username=user,
            password=password,
            host=cluster["PGHOST"],
            port=int(cluster["PGPORT"]),
            database=database,
        )
    )


def test_airflow_connects_as_an_ordinary_role_that_owns_only_its_database(cluster: dict[str, str]) -> None:
    done = _run_init(cluster)
    assert done.returncode == 0, done.stderr
    user, password = cluster["AIRFLOW_DB_USER"], cluster["AIRFLOW_DB_PASSWORD"]
    airflow = _as(cluster, user, password, cluster["AIRFLOW_DB_NAME"])
    try:
        with airflow.begin() as conn:
            role = conn.execute(
                text(
                    "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls FROM pg_roles "
                    "WHERE rolname = current_user"
                )
            ).one()
            assert tuple(role) == (False, False, False, False, False), "Airflow's role has more than it needs"
            # what `airflow db migrate` does: create tables in its own database
            conn.execute(text("CREATE TABLE alembic_version_probe (version_num varchar(32) PRIMARY KEY)"))
            owner = conn.scalar(
                text("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()")
            )
            assert owner == user
        with (
            airflow.connect().execution_options(isolation_level="AUTOCOMMIT") as conn,
            pytest.raises(ProgrammingError, match="permission denied to create database"),
        ):
            conn.execute(text("CREATE DATABASE do_test_never"))
    finally:
        airflow.dispose()
    for other in (cluster["DATA_OUT_STATE_DB_NAME"], cluster["POSTGRES_DB"]):
        outsider = _as(cluster, user, password, other)
        with pytest.raises(OperationalError, match="permission denied"):
            outsider.connect().close()
        outsider.dispose()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"DATA_OUT_STATE_DB_NAME": "AIRFLOW_DB_NAME"}, "must differ"),
        ({"DATA_OUT_STATE_DB_USER": "AIRFLOW_DB_USER"}, "must differ"),
        ({"AIRFLOW_DB_USER": "POSTGRES_USER"}, "superuser"),
        ({"AIRFLOW_DB_NAME": "POSTGRES_DB"}, "must differ"),
    ],
)
def test_init_script_refuses_shared_names_and_the_superuser(
    cluster: dict[str, str], change: dict[str, str], message: str
) -> None:
    ((target, source),) = change.items()
    done = _run_init({**cluster, target: cluster[source]})
    assert done.returncode == 1
    assert message in done.stderr
