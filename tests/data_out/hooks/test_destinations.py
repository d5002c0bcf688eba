"""Connection types are registered with Airflow and resolve to plain connection data."""

from __future__ import annotations

import json

import pytest

from data_out.destinations import REGISTRY
from data_out.hooks import destinations as hooks
from data_out.provider import get_provider_info

HOOKS = [
    hooks.MetaHook,
    hooks.GoogleHook,
    hooks.GoogleAdsHook,
    hooks.TikTokHook,
    hooks.SegmentHook,
    hooks.WebhookHook,
    hooks.CustomerIOHook,
]


def test_every_http_destination_has_a_registered_connection_type():
    types = {c["connection-type"] for c in get_provider_info()["connection-types"]}
    shipped = [
        cls for cls in REGISTRY.values() if cls.__module__.startswith("data_out.") and cls.type_name != "warehouse"
    ]
    assert (
        types == {h.conn_type for h in HOOKS} == {f"data_out_{c.type_name}" for c in shipped} | {"data_out_customerio"}
    )
    assert {cls.default_conn_id for cls in shipped} <= types


def test_airflow_discovers_the_provider():
    from airflow.providers_manager import ProvidersManager

    assert "data-out-airflow" in ProvidersManager().providers


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_resolves_its_connection_and_describes_its_form(monkeypatch, hook):
    conn = {"conn_type": hook.conn_type, "host": "http://127.0.0.1:9", "password": "s3cret", "extra": {"timeout": 5}}
    monkeypatch.setenv(f"AIRFLOW_CONN_{hook.default_conn_name.upper()}", json.dumps(conn))
    info = hook().get_conn()
    assert (info.conn_type, info.host, info.password, info.extra["timeout"]) == (
        hook.conn_type,
        conn["host"],
        "s3cret",
        5,
    )
    ui = hook.get_ui_field_behaviour()
    assert ui["relabeling"]["host"] == "Base URL"
    assert ("login" in ui["hidden_fields"]) != ("login" in ui["relabeling"])  # hidden, or labelled for its use


@pytest.mark.parametrize("hook", [hooks.GoogleHook, hooks.GoogleAdsHook])
def test_google_forms_ask_for_a_credential_that_renews(hook):
    ui = hook.get_ui_field_behaviour()
    assert "client id" in ui["relabeling"]["login"] and "service account key" in ui["relabeling"]["password"]
    assert "refresh_token" in ui["placeholders"]["extra"]
