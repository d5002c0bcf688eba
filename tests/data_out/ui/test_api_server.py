"""The pages served by a real ``airflow api-server``: registered in Airflow's UI, behind Airflow's login.

Starts the api-server (only) on a copy of the project's migrated metadata database, with SimpleAuthManager
and a user whose password the test chose, signs in through Airflow's own ``/auth/token``, and checks
what a browser would get: the plugin's views in ``/api/v2/plugins``, the pages refused without the token
and served with it (header or the UI's ``_token`` cookie), and the receiver still answering by signature.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.api_server import api_server as serve
from tests.support.api_server import request, sign_in

pytestmark = [pytest.mark.airflow, pytest.mark.timeout(240)]


@pytest.fixture
def api_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    env = {
        "AIRFLOW_CONN_DATA_OUT_STATE": json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "state.db")}),
        "AIRFLOW_CONN_DATA_OUT_CUSTOMERIO_WEBHOOK": json.dumps({"conn_type": "http", "password": "k" * 32}),
    }
    with serve(tmp_path, "alice", "viewer", env) as (api, password):
        yield api, password


def test_the_pages_are_registered_and_behind_airflows_login(api_server):
    api, password = api_server
    bearer = sign_in(api, "alice", password)
    token = bearer["Authorization"].removeprefix("Bearer ")

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
