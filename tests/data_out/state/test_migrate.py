"""``python -m data_out.state.migrate``: the deploy step that brings the state database to this code's schema."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, insert, inspect, select

from data_out.state import SCHEMA_VERSION, migrate, schema_version, utcnow

ROOT = Path(__file__).resolve().parents[2]


def _sqlite_conn(path: Path) -> str:
    return json.dumps({"conn_type": "sqlite", "host": str(path)})


@pytest.fixture
def state_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A not-yet-existing SQLite state database behind the ``data_out_state`` connection."""
    path = tmp_path / "state.db"
    monkeypatch.setenv("AIRFLOW_CONN_DATA_OUT_STATE", _sqlite_conn(path))
    return path


def _versions(path: Path) -> list[int]:
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            return list(conn.scalars(select(schema_version.c.version).order_by(schema_version.c.version)))
    finally:
        engine.dispose()


def test_creates_the_schema_and_prints_its_version(state_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert migrate.main([]) == 0

    out = capsys.readouterr().out
    assert f"schema version {SCHEMA_VERSION}" in out
    assert "data_out_state" in out and str(state_file) in out
    tables = set(inspect(create_engine(f"sqlite:///{state_file}")).get_table_names())
    assert {"do_schema_version", "do_run", "do_sync"} <= tables
    assert _versions(state_file) == list(range(1, SCHEMA_VERSION + 1))


def test_running_it_again_changes_nothing(state_file: Path) -> None:
    assert migrate.main([]) == 0
    assert migrate.main([]) == 0
    assert _versions(state_file) == list(range(1, SCHEMA_VERSION + 1))


def test_other_connection_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    path = tmp_path / "other.db"
    monkeypatch.setenv("AIRFLOW_CONN_STAGING_STATE", _sqlite_conn(path))
    assert migrate.main(["--conn-id", "staging_state"]) == 0
    assert "staging_state" in capsys.readouterr().out
    assert _versions(path)[-1] == SCHEMA_VERSION


def test_a_state_database_newer_than_the_code_fails_the_deploy(state_file: Path, capsys) -> None:
    assert migrate.main([]) == 0
    engine = create_engine(f"sqlite:///{state_file}")
    with engine.begin() as conn:
        conn.execute(insert(schema_version).values(version=SCHEMA_VERSION + 1, applied_at=utcnow()))
    engine.dispose()

    assert migrate.main([]) == 1
    assert "newer than this code" in capsys.readouterr().err


def test_a_missing_or_unusable_connection_is_one_clear_line(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_DATA_OUT_NOWHERE", raising=False)
    assert migrate.main(["--conn-id", "data_out_nowhere"]) == 1
    assert "data_out_nowhere" in capsys.readouterr().err

    monkeypatch.setenv("AIRFLOW_CONN_DATA_OUT_HTTPISH", json.dumps({"conn_type": "http", "host": "example.com"}))
    assert migrate.main(["--conn-id", "data_out_httpish"]) == 1
    assert "use 'sqlite' or 'postgres'" in capsys.readouterr().err


def test_runs_as_a_module_the_way_the_init_container_calls_it(tmp_path: Path) -> None:
    """``python -m data_out.state.migrate`` with plugins/ on PYTHONPATH, as the image sets it."""
    path = tmp_path / "state.db"
    env = {
        **os.environ,
        "AIRFLOW_CONN_DATA_OUT_STATE": _sqlite_conn(path),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT / "include")]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "data_out.state.migrate"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert f"schema version {SCHEMA_VERSION}" in done.stdout
    assert _versions(path)[-1] == SCHEMA_VERSION


def test_a_state_database_that_is_down_is_one_clear_line(monkeypatch: pytest.MonkeyPatch, capsys):
    down = {"conn_type": "postgres", "host": "127.0.0.1", "port": 1, "login": "postgres", "schema": "nowhere"}
    monkeypatch.setenv("AIRFLOW_CONN_DATA_OUT_STATE", json.dumps(down))
    assert migrate.main([]) == 1
    err = capsys.readouterr().err
    assert err.startswith("data_out.state.migrate: state database") and "unavailable during the schema migration" in err
    assert "Traceback" not in err and "[SQL" not in err
