"""The pages over HTTP with Airflow's own auth manager (SimpleAuthManager, as configured in this project's
Airflow home): refused without a signed-in user, served with one, and a lookup never echoes what was entered."""

from __future__ import annotations

import json
import logging
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from data_out import state
from data_out.ui.app import create_app
from tests.data_out.ui.conftest import BUYERS, TARGETS


@pytest.fixture
def backend(tmp_path):  # type: ignore[no-untyped-def]
    """SQLite only: test_queries.py runs every query on Postgres too."""
    from data_out.connections import ConnectionInfo

    return ConnectionInfo("db", "sqlite", host=str(tmp_path / "db.sqlite"))


PAGES = [
    "/",
    "/api/overview",
    f"/dags/audience__{TARGETS}/health",
    f"/api/dags/audience__{TARGETS}/health",
    "/lookup",
]
RAW = "  Person.3@Example.COM "


@pytest.fixture
def client(synced, state_engine):  # type: ignore[no-untyped-def]
    return TestClient(create_app(lambda: state_engine, lambda: synced))


def lookups(engine) -> int:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(state.ui_lookup))


def test_every_page_and_endpoint_is_refused_without_a_signed_in_user(client, state_engine, auth_manager):
    for path in PAGES:
        assert client.get(path).status_code == 401, path
    for path in ("/lookup", "/api/lookup"):
        assert client.post(path, data={"kind": "email", "value": RAW}).status_code == 401, path
    # a token Airflow did not sign, and one that expired, are refused too
    assert client.get("/", headers={"Authorization": "Bearer not.a.jwt"}).status_code == 403
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    expired = auth_manager.generate_jwt(
        SimpleAuthManagerUser(username="x", role="viewer"), expiration_time_in_seconds=-60
    )
    assert client.get("/", cookies={"_token": expired}).status_code == 401
    assert lookups(state_engine) == 0


def test_a_signed_in_user_is_served_by_bearer_token_or_by_the_ui_cookie(client, token):
    for path in PAGES:
        assert client.get(path, headers={"Authorization": f"Bearer {token}"}).status_code == 200, path
    client.cookies.set("_token", token)  # what Airflow's UI sets at login; the iframe sends it along
    page = client.get("/")
    assert page.status_code == 200
    assert f'data-audience="{TARGETS}"' in page.text and f'data-audience="{BUYERS}"' in page.text
    overview = client.get("/api/overview").json()["audiences"]
    assert sorted(a["audience"] for a in overview) == [BUYERS, TARGETS]


def test_the_health_tab_asks_airflow_whether_the_user_may_read_the_dag(client, auth_manager):
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    # a signed-in user without a role: SimpleAuthManager grants no DAG access
    nobody = auth_manager.generate_jwt(SimpleAuthManagerUser(username="eve", role=None))
    client.cookies.set("_token", nobody)
    assert client.get("/").status_code == 200  # signed in is enough for the overview
    assert client.get(f"/dags/audience__{TARGETS}/health").status_code == 403
    assert client.get(f"/api/dags/audience__{TARGETS}/health").status_code == 403


def test_overview_filters(client, token):
    client.cookies.set("_token", token)
    names = lambda **q: [a["audience"] for a in client.get("/api/overview", params=q).json()["audiences"]]  # noqa: E731
    assert names(destination="memory") == [TARGETS]
    assert names(attention="true") == [TARGETS]  # its memory destination rejected a row in the last run
    assert names(owner="tests") == [BUYERS, TARGETS]
    assert names(tag="nothing-has-this") == []


def test_the_health_tab_shows_checks_with_thresholds_and_their_history(client, token, state_engine):
    checks = [("ok", False), ("breach", False), ("breach", True), ("ok", False)]
    with state_engine.begin() as conn:
        conn.execute(
            state.recon.insert(),
            [
                {
                    "recon_id": i,
                    "at": state.utcnow(),
                    "audience": TARGETS,
                    "destination": "memory",
                    "check": "destination_gap_pct",
                    "value": 9.5,
                    "threshold": 5.0,
                    "status": st,
                    "repaired": rep,
                    "detail": "acknowledged 10, destination reports 9",
                }
                for i, (st, rep) in enumerate(checks, 1)
            ],
        )
        conn.execute(
            state.alert_state.insert().values(
                audience=TARGETS, destination="memory", check="destination_gap_pct", open=True, since=state.utcnow()
            )
        )
    client.cookies.set("_token", token)
    page = client.get(f"/dags/audience__{TARGETS}/health").text
    history = page[page.index('id="check-history"') :]
    assert [e for e in ("recovered", "repaired", "breach") if f">{e}</span>" in history] == [
        "recovered",
        "repaired",
        "breach",
    ]
    assert "open: memory destination_gap_pct" in page
    checks_api = client.get(f"/api/dags/audience__{TARGETS}/health").json()["checks"]
    assert checks_api == [
        {
            "destination": "memory",
            "check": "destination_gap_pct",
            "latest": 9.5,
            "threshold": 5.0,
            "status": "ok",
            "at": checks_api[0]["at"],
            "measured": 4,
            "breaches": 2,
            "repaired": 1,
        }
    ]


def test_the_health_tab_of_a_dag_that_is_no_audience_says_so(client, token):
    client.cookies.set("_token", token)
    r = client.get("/dags/data_out_reconciliation/health")
    assert r.status_code == 404 and "not a Data Out audience" in r.text


def test_a_lookup_never_echoes_logs_or_stores_the_value(client, token, state_engine, caplog):
    client.cookies.set("_token", token)
    caplog.set_level(logging.DEBUG)
    page = client.post("/lookup", data={"kind": "email", "value": RAW})
    api = client.post("/api/lookup", data={"kind": "email", "value": RAW})
    too_long = client.post("/api/lookup", data={"kind": "email", "value": RAW + "x" * 600})
    assert page.status_code == 200 and api.status_code == 200 and too_long.status_code == 422
    assert page.headers["cache-control"] == "no-store"
    assert 'id="verdict"' in page.text and TARGETS in page.text
    found = [a["audience"] for a in api.json()["answers"] if a["member"]]
    assert found == [BUYERS, TARGETS]
    with state_engine.connect() as conn:
        stored = json.dumps([dict(r) for r in conn.execute(select(state.ui_lookup)).mappings()], default=str)
    assert '"username": "alice"' in stored
    for text in (page.text, api.text, too_long.text, caplog.text, stored):
        assert "person.3" not in text.lower()


def test_the_plugin_registers_the_pages_and_leaves_the_receiver_signature_only(monkeypatch, tmp_path, token):
    import data_out_plugin
    from data_out.metrics.receiver import signature
    from tests.data_out.metrics.conftest import event

    views = {v["destination"]: v for v in data_out_plugin.DataOutPlugin.external_views}
    assert views["nav"]["href"] == "/data-out-ui/" and views["nav"]["url_route"]
    assert views["dag"]["href"] == "/data-out-ui/dags/{DAG_ID}/health" and views["dag"]["url_route"]
    apps = {a["url_prefix"]: a["app"] for a in data_out_plugin.DataOutPlugin.fastapi_apps}
    assert set(apps) == {"/data-out", "/data-out-ui"}

    monkeypatch.setenv(
        "AIRFLOW_CONN_DATA_OUT_STATE", json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "s.db")})
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_DATA_OUT_CUSTOMERIO_WEBHOOK", json.dumps({"conn_type": "http", "password": "k" * 32})
    )
    data_out_plugin._state_engine.cache_clear()
    try:
        receiver, pages = TestClient(apps["/data-out"]), TestClient(apps["/data-out-ui"])
        raw = json.dumps(event(1)).encode()
        ts = str(int(time.time()))
        signed = {
            "X-CIO-Timestamp": ts,
            "X-CIO-Signature": signature("k" * 32, ts, raw),
            "Content-Type": "application/json",
        }
        assert receiver.post("/customerio", content=raw, headers=signed).status_code == 200  # no Airflow user needed
        unsigned = {**signed, "X-CIO-Signature": "0" * 64}
        assert receiver.post("/customerio", content=raw, headers=unsigned).status_code == 401
        assert (
            receiver.post(
                "/customerio", content=raw, headers={**unsigned, "Authorization": f"Bearer {token}"}
            ).status_code
            == 401
        )
        assert pages.get("/").status_code == 401
        assert pages.get("/", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    finally:
        data_out_plugin._state_engine.cache_clear()
