"""The pages served by a real ``airflow api-server``: registered in Airflow's UI, behind Airflow's login.

Starts the api-server (only) on a copy of the project's migrated metadata database, with SimpleAuthManager
and a user whose password the test chose, signs in through Airflow's own ``/auth/token``, and checks
what a browser would get: the plugin's views in ``/api/v2/plugins``, the pages refused without the token
and served with it (header or the UI's ``_token`` cookie), and the receiver still answering by signature.
"""

from __future__ import annotations

import json
import secrets
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.airflow_processes import AirflowProcesses, clean_environ, free_port

pytestmark = [pytest.mark.airflow, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[3]
AIRFLOW_BIN = Path(sys.executable).with_name("airflow")
STARTUP_TIMEOUT = 120


def request(url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, headers=headers or {})  # noqa: S310 - loopback test URL
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def api_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    metadata = ROOT / ".airflow" / "airflow.db"
    if not metadata.is_file():
        pytest.fail(f"{metadata} is missing: run `make airflow-db` first (make test does)")
    shutil.copy(metadata, tmp_path / "airflow.db")
    password = secrets.token_urlsafe(16)
    (tmp_path / "passwords.json").write_text(json.dumps({"alice": password}), encoding="utf-8")
    port = free_port()
    env = clean_environ(
        {
            "AIRFLOW_HOME": str(tmp_path / "home"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "PYTHONPATH": f"{ROOT / 'plugins'}:{ROOT / 'include'}",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path / 'airflow.db'}",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "alice:viewer",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(tmp_path / "passwords.json"),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW_CONN_DATA_OUT_STATE": json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "state.db")}),
            "AIRFLOW_CONN_DATA_OUT_CUSTOMERIO_WEBHOOK": json.dumps({"conn_type": "http", "password": "k" * 32}),
        }
    )
    procs = AirflowProcesses(AIRFLOW_BIN, env, tmp_path / "logs", tmp_path / "home" / "logs")
    procs.start("api-server", "api-server", "--port", str(port), "--host", "127.0.0.1")
    api = f"http://127.0.0.1:{port}"
    try:
        with procs.tails_on_failure():
            procs.wait_for("the api-server", lambda: request(f"{api}/api/v2/monitor/health")[0] == 200, STARTUP_TIMEOUT)
            yield api, password
    finally:
        procs.stop()


def test_the_pages_are_registered_and_behind_airflows_login(api_server):
    api, password = api_server
    status, body = request(
        f"{api}/auth/token",
        data=json.dumps({"username": "alice", "password": password}).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert status == 201, body
    token = json.loads(body)["access_token"]
    bearer = {"Authorization": f"Bearer {token}"}

    status, body = request(f"{api}/api/v2/plugins", headers=bearer)
    assert status == 200, body
    plugin = next(p for p in json.loads(body)["plugins"] if p["name"] == "data_out")
    views = {v["destination"]: v for v in plugin["external_views"]}
    assert views["nav"]["href"] == "/data-out-ui/"
    assert views["dag"]["href"] == "/data-out-ui/dags/{DAG_ID}/health"

    assert request(f"{api}/data-out-ui/")[0] == 401
    assert request(f"{api}/data-out-ui/api/overview")[0] == 401
    assert request(f"{api}/data-out-ui/lookup", data=b"kind=email&value=a%40b.co")[0] == 401
    status, body = request(f"{api}/data-out-ui/api/overview", headers=bearer)
    assert status == 200, body
    assert {a["audience"] for a in json.loads(body)["audiences"]} >= {"cio_cart_abandon_6h_v1", "lapsed_75d_v1"}
    status, body = request(f"{api}/data-out-ui/", headers={"Cookie": f"_token={token}"})
    assert status == 200 and b'data-audience="lapsed_75d_v1"' in body
    status, _ = request(f"{api}/data-out-ui/dags/audience__lapsed_75d_v1/health", headers=bearer)
    assert status == 200
    # the receiver: still mounted, still answering by signature alone (a token does not replace it)
    status, _ = request(
        f"{api}/data-out/customerio",
        data=b"{}",
        headers={**bearer, "Content-Type": "application/json", "X-CIO-Timestamp": "1", "X-CIO-Signature": "0" * 64},
    )
    assert status == 401
