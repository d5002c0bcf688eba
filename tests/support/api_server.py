"""A real ``airflow api-server`` (only) for tests that go through Airflow's own HTTP API and login.

It runs on a copy of the project's migrated metadata database with SimpleAuthManager and one user whose
password the test chose, so a test signs in through Airflow's ``/auth/token`` as a browser would.
"""

from __future__ import annotations

import json
import secrets
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.airflow_processes import AirflowProcesses, clean_environ, free_port

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_BIN = Path(sys.executable).with_name("airflow")
STARTUP_TIMEOUT = 120


def request(url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """Status and body of one request; an HTTP error status is returned, not raised."""
    req = urllib.request.Request(url, data=data, headers=headers or {})  # noqa: S310 - loopback test URL
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@contextmanager
def api_server(tmp: Path, user: str, role: str, env: Mapping[str, str] | None = None) -> Iterator[tuple[str, str]]:
    """Serve the api-server; yield its base URL and ``user``'s password. Stopped, process group and all."""
    metadata = ROOT / ".airflow" / "airflow.db"
    if not metadata.is_file():
        pytest.fail(f"{metadata} is missing: run `make airflow-db` first (make test does)")
    shutil.copy(metadata, tmp / "airflow.db")
    password = secrets.token_urlsafe(16)
    (tmp / "passwords.json").write_text(json.dumps({user: password}), encoding="utf-8")
    port = free_port()
    environ = clean_environ(
        {
            "AIRFLOW_HOME": str(tmp / "home"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "PYTHONPATH": f"{ROOT / 'plugins'}:{ROOT / 'include'}",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp / 'airflow.db'}",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{user}:{role}",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(tmp / "passwords.json"),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            **(env or {}),
        }
    )
    procs = AirflowProcesses(AIRFLOW_BIN, environ, tmp / "logs", tmp / "home" / "logs")
    procs.start("api-server", "api-server", "--port", str(port), "--host", "127.0.0.1")
    base = f"http://127.0.0.1:{port}"
    try:
        with procs.tails_on_failure():
            procs.wait_for(
                "the api-server", lambda: request(f"{base}/api/v2/monitor/health")[0] == 200, STARTUP_TIMEOUT
            )
            yield base, password
    finally:
        procs.stop()


def sign_in(base: str, user: str, password: str) -> dict[str, str]:
    """The ``Authorization`` header of ``user``, from Airflow's own ``/auth/token``."""
    status, body = request(
        f"{base}/auth/token",
        data=json.dumps({"username": user, "password": password}).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert status == 201, body
    return {"Authorization": f"Bearer {json.loads(body)['access_token']}"}
