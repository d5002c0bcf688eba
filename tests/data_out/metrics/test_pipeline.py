"""Webhook events in -> send tasks out to the warehouse log, Segment and a webhook, each exactly once."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pytest
from sqlalchemy import select, text

from data_out import state
from data_out.connections import ConnectionInfo, engine_for
from data_out.destinations.base import DestinationError
from data_out.metrics.pipeline import MetricsPipeline, Routing, send_log_table
from sandbox.standins import CREDENTIALS, serve
from tests.data_out.metrics.conftest import event

METRICS = ["sent", "delivered", "opened", "clicked", "bounced", "failed", "unsubscribed"]


@pytest.fixture
def world(receiver, tmp_path):  # type: ignore[no-untyped-def]
    wh = engine_for(ConnectionInfo("wh", "sqlite", host=str(tmp_path / "wh.db")))
    with serve(["segment", "webhook"]) as running:

        def resolve(conn_id: str) -> ConnectionInfo:
            name = conn_id.removeprefix("data_out_")
            creds = CREDENTIALS[name]
            return ConnectionInfo(
                conn_id,
                conn_id,
                host=running[name].url,
                password=str(creds["password"]),
                extra={"backoff_initial": 0.01, "max_attempts": 3},
            )

        routing = Routing(warehouse=METRICS, segment=["sent", "bounced", "unsubscribed"], webhook=["failed", "bounced"])
        yield MetricsPipeline(receiver.engine, routing, resolve), wh, running, receiver


def run_window(pipeline: MetricsPipeline, wh) -> None:  # type: ignore[no-untyped-def]
    start = state.utcnow() - dt.timedelta(hours=1)
    end = state.utcnow() + dt.timedelta(minutes=1)
    pipeline.write_send_log(wh, start, end)
    pipeline.route_segment(start, end)
    pipeline.route_webhook(start, end)
    pipeline.count_volumes(start, end)


def send_log(wh) -> list[dict]:  # type: ignore[no-untyped-def]
    table = send_log_table("cio_send_log")
    with wh.connect() as conn:
        return sorted((dict(r) for r in conn.execute(select(table)).mappings()), key=lambda r: r["dedupe_key"])


def test_events_become_tasks_routed_exactly_once_through_retries_and_replays(world):
    pipeline, wh, running, receiver = world
    events = [event(i, metric=METRICS[i % len(METRICS)]) for i in range(35)]
    for e in events:
        assert receiver.post(e).status_code == 200
    segment, webhook = running["segment"].standin, running["webhook"].standin
    segment.faults.lose_response = [1]  # the first Segment batch is applied, then its answer is lost
    run_window(pipeline, wh)

    by_metric = Counter(e["metric"] for e in events)
    log_rows = send_log(wh)
    assert len(log_rows) == 35 and Counter(r["status"] for r in log_rows) == by_metric
    assert segment.events == Counter(
        {
            "Customer.io Email Sent": by_metric["sent"],
            "Email Bounced": by_metric["bounced"],
            "Unsubscribed": by_metric["unsubscribed"],
        }
    )
    assert set(webhook.tasks) and webhook.task_deliveries == by_metric["failed"] + by_metric["bounced"]
    assert max(segment.applied.values()) == 2  # re-sent whole; Segment's messageId dedupe kept the counts exact

    for e in events:  # Customer.io retries the same events
        assert receiver.post(e).json()["status"] == "duplicate"
    run_window(pipeline, wh)  # and the DAG run is retried
    assert send_log(wh) == log_rows
    assert sum(segment.events.values()) == by_metric["sent"] + by_metric["bounced"] + by_metric["unsubscribed"]
    assert webhook.task_deliveries == by_metric["failed"] + by_metric["bounced"]

    with receiver.engine.connect() as conn:
        volumes = dict(((m, n) for _, m, n in conn.execute(select(state.metric_volume))))
    assert volumes == dict(by_metric)


def test_a_route_that_is_down_catches_up_on_the_next_run(world):
    pipeline, wh, running, receiver = world
    for i in range(12):
        receiver.post(event(100 + i, metric="failed"))
    webhook = running["webhook"].standin
    webhook.faults.down = True
    with pytest.raises(DestinationError):
        run_window(pipeline, wh)
    assert webhook.task_deliveries == 0
    webhook.faults.down = False
    run_window(pipeline, wh)
    assert webhook.task_deliveries == 12 and len(webhook.tasks) == 12


def test_segment_events_follow_the_spec_and_carry_no_raw_email(world):
    pipeline, wh, running, receiver = world
    receiver.post(event(1, metric="sent"))
    run_window(pipeline, wh)
    [track] = running["segment"].standin.tracks
    assert track["event"] == "Customer.io Email Sent" and track["userId"] == "c001"  # outside the spec: named as ours
    assert track["properties"]["email_id"] == "d00001" and track["properties"]["campaign_id"] == "101"
    assert "example.com" not in str(track).lower()
    with wh.connect() as conn:
        assert "example.com" not in str(conn.execute(text("SELECT * FROM cio_send_log")).all()).lower()


def test_every_segment_request_conforms_to_the_library_and_the_email_spec(world):
    """All ten metrics routed to Segment: each body against segment-analytics-python (sizes, message
    shapes), each event named from Segment's Email Events spec where the spec has it, with its property
    names and types, and a product-named event where it has none."""
    from data_out.metrics.events import METRICS as ALL
    from data_out.metrics.pipeline import SEGMENT_EMAIL_SPEC
    from tests.data_out.destinations.test_segment import check_request

    pipeline, wh, running, receiver = world
    pipeline.routing = Routing(warehouse=list(ALL), segment=list(ALL), webhook=[])
    for i, metric in enumerate(ALL):
        extra = {"href": "https://shop.example.net/cart?token=abc", "link_id": 7} if metric == "clicked" else {}
        receiver.post(event(200 + i, metric=metric, campaign_name="Cart", **extra))
    receiver.post({**event(300, metric="delivered"), "object_type": "sms"})
    run_window(pipeline, wh)
    segment = running["segment"].standin
    tracks = [m for body in segment.payloads for m in check_request(body)]
    by_metric = {t["properties"]["metric"]: t for t in tracks if t["properties"]["channel"] == "email"}
    assert set(by_metric) == set(ALL)
    for metric, track in by_metric.items():
        props = track["properties"]
        assert track["event"] == SEGMENT_EMAIL_SPEC.get(metric, f"Customer.io Email {metric.title()}")
        assert props["campaign_id"] == "101" and props["campaign_name"] == "Cart" and props["email_id"]
    assert set(SEGMENT_EMAIL_SPEC.values()) == {
        "Email Delivered",
        "Email Opened",
        "Email Link Clicked",
        "Email Bounced",
        "Email Marked as Spam",
        "Unsubscribed",
    }
    assert by_metric["clicked"]["properties"]["link_url"] == "https://shop.example.net/cart"
    [sms] = [t for t in tracks if t["properties"]["channel"] == "sms"]
    assert sms["event"] == "Customer.io SMS Delivered"  # the Email spec does not cover other channels
