"""The Assets Data Out emits: URIs Airflow accepts as they are, and schedules read from audience files."""

from __future__ import annotations

import warnings

import pytest
from airflow.sdk import Asset

from data_out import api
from data_out.asset_names import PIPELINE_ASSETS, audience_uri
from data_out.assets import MESSAGE_METRICS, audience_asset, audience_schedule
from data_out.config import load_audiences
from tests.conftest import write_audience


def test_uris_are_kept_as_written_without_warnings():
    """Airflow normalises URIs of known schemes and warns on some forms; ours must round-trip unchanged."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assets = [audience_asset("cio_cart_abandon_6h_v1"), MESSAGE_METRICS]
    assert [a.uri for a in assets] == [
        "x-data-out://audience/cio_cart_abandon_6h_v1",
        PIPELINE_ASSETS["message_metrics"],
    ]
    # the plain-name form is not a URI to Airflow: a scheme may not contain "_"
    assert Asset("data_out://audience/x").normalized_uri is None
    assert audience_asset("a_v1") == Asset(audience_uri("a_v1"), group="data-out")


@pytest.mark.parametrize(
    ("status", "schedule", "expected"),
    [
        ("active", '"@hourly"', "@hourly"),
        ("active", "asset:message_metrics", [MESSAGE_METRICS]),
        ("paused", "asset:message_metrics", None),
    ],
)
def test_audience_schedule(tmp_path, status, schedule, expected):
    write_audience(
        tmp_path,
        "sched_v1",
        f"""
        name: sched_v1
        owner: tests
        purpose: schedule forms
        status: {status}
        schedule: {schedule}
        source: {{query: "SELECT 1 AS customer_id"}}
        destinations: [{{type: warehouse}}]
        """,
    )
    result = load_audiences(tmp_path)
    assert result.errors == []
    assert audience_schedule(result.audiences["sched_v1"].config) == expected


def test_the_public_api_is_small_and_documented():
    assert sorted(api.__all__) == sorted(
        [
            "AudienceSyncTaskGroup",
            "MESSAGE_METRICS",
            "FinishRunOperator",
            "PlanDestinationOperator",
            "PushDestinationOperator",
            "StageAudienceOperator",
            "add_audience_sync_tasks",
            "audience_asset",
        ]
    )
    for name in api.__all__:
        obj = getattr(api, name)
        if callable(obj):
            assert obj.__doc__ and len(obj.__doc__) > 40, name
