"""Connection types are registered with Airflow and resolve to plain connection data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_out.connection_types import KINDS, http_kinds, pools
from data_out.destinations import REGISTRY
from data_out.destinations.google.hook import GoogleHook
from data_out.destinations.google_ads.hook import GoogleAdsHook
from data_out.destinations.http import ApiSession
from data_out.destinations.tiktok.hook import TikTokHook
from data_out.provider import get_provider_info

ROOT = Path(__file__).resolve().parents[3]
HOOKS = [k.hook_class() for k in http_kinds()]


def test_every_http_destination_has_a_registered_connection_type():
    types = {c["connection-type"] for c in get_provider_info()["connection-types"]}
    shipped = [
        cls for cls in REGISTRY.values() if cls.__module__.startswith("data_out.") and cls.type_name != "warehouse"
    ]
    assert (
        types == {h.conn_type for h in HOOKS} == {f"data_out_{c.type_name}" for c in shipped} | {"data_out_customerio"}
    )
    assert {cls.default_conn_id for cls in shipped} <= types


def test_pools_file_defines_exactly_the_pools_the_destinations_name():
    """``airflow pools import deploy/pools.json`` must create every pool a push task names, and no other."""
    defined = set(json.loads((ROOT / "deploy" / "pools.json").read_text()))
    shipped = [cls for cls in REGISTRY.values() if cls.__module__.startswith("data_out.")]
    assert defined == pools() == {cls.pool for cls in shipped}


def test_every_shipped_destination_has_one_connection_kind():
    shipped = {cls.type_name: cls for cls in REGISTRY.values() if cls.__module__.startswith("data_out.")}
    assert set(shipped) == {name for name, k in KINDS.items() if k.pooled}
    for name, cls in shipped.items():
        assert (cls.pool, cls.default_conn_id) == (KINDS[name].pool, KINDS[name].conn_type)


def test_airflow_discovers_the_provider():
    from airflow.providers_manager import ProvidersManager

    assert "data-out-airflow" in ProvidersManager().providers


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_resolves_its_connection_and_describes_its_form(monkeypatch, hook):
    conn = {
        "conn_type": hook.conn_type,
        "host": "http://127.0.0.1:9",
        "password": "s3cret",
        "login": "client-id",
        "extra": {"timeout": 5, "app_secret": "as-9f8e", "refresh_token": "rt-1", "verify": False},
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{hook.default_conn_name.upper()}", json.dumps(conn))
    made = hook()
    info = made.info
    assert (info.conn_type, info.host, info.password, info.extra["timeout"]) == (
        hook.conn_type,
        conn["host"],
        "s3cret",
        5,
    )
    session = made.get_conn()  # HttpHook's session: base URL from the connection, no extra as a header
    assert made.base_url == conn["host"]
    assert isinstance(session, ApiSession)  # refuses redirects to another host
    assert session.verify is False  # HttpHook's session extras (verify, proxies, cert) apply
    # HttpHook sends unknown extras as headers: none of Data Out's (they hold app secrets and refresh tokens)
    assert not {"timeout", "app_secret"} & set(session.headers) and "as-9f8e" not in json.dumps(dict(session.headers))
    ui = hook.get_ui_field_behaviour()
    assert ui["relabeling"]["host"] == "Base URL"
    assert ("login" in ui["hidden_fields"]) != ("login" in ui["relabeling"])  # hidden, or labelled for its use


@pytest.mark.parametrize("hook", [GoogleHook, GoogleAdsHook])
def test_google_forms_ask_for_a_credential_that_renews(hook):
    ui = hook.get_ui_field_behaviour()
    assert "client id" in ui["relabeling"]["login"] and "service account key" in ui["relabeling"]["password"]
    assert "refresh_token" in ui["placeholders"]["extra"]


def test_secrets_are_stripped_and_registered_when_read(monkeypatch):
    """A token pasted with its newline is sent as the token (``requests`` would refuse the header and quote
    it in its error), and every secret read is masked wherever a message echoes it."""
    from data_out.destinations.base import MemberRow, Op
    from data_out.destinations.tiktok.destination import TikTokDestination
    from data_out.destinations.tiktok.settings import TikTokSettings
    from data_out.redact import scrub
    from tests.support.recorder import Answer, recording

    token, dev_token = "tiktok-token-5e4d3c2b", "dev-token-77aa"
    with recording(lambda seen: Answer(200, {"code": 0, "message": "OK", "data": {}})) as vendor:
        conn = {
            "conn_type": "data_out_tiktok",
            "host": f" {vendor.url}\n",
            "password": f"{token}\n",
            "extra": {"developer_token": f" {dev_token}\r\n", "max_attempts": 1},
        }
        monkeypatch.setenv("AIRFLOW_CONN_DATA_OUT_TIKTOK", json.dumps(conn))
        info = TikTokHook().info
        assert (info.password, info.host, info.extra["developer_token"]) == (token, vendor.url, dev_token)
        settings = TikTokSettings(type="tiktok", advertiser_id="7000000001", segment_id="s1")
        TikTokDestination("a_v1", settings, info).push(
            Op.ADD, [MemberRow("k", "a" * 64, None, None, None, False)], "k1"
        )
    assert [s.headers["Access-Token"] for s in vendor.seen] == [token]
    assert scrub(f"refused {token} and {dev_token}") == "refused <secret> and <secret>"
