"""The Customer.io webhook receiver over real HTTP: the status codes a sender expects, nothing lost or doubled."""

from __future__ import annotations

import json
import time

import pytest
import requests
from sqlalchemy import func, select

from data_out import state
from tests.data_out.metrics.conftest import event


def stored(receiver) -> int:  # type: ignore[no-untyped-def]
    with receiver.engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(state.metric_event))


def test_a_signed_event_is_stored_once_and_its_replay_acknowledged(receiver):
    r = receiver.post(event(1))
    assert (r.status_code, r.json()["status"]) == (200, "stored")
    again = receiver.post(event(1))
    assert (again.status_code, again.json()["status"]) == (200, "duplicate")  # 2xx: the sender stops retrying
    assert stored(receiver) == 1
    with receiver.engine.connect() as conn:
        row = conn.execute(select(state.metric_event)).mappings().one()
    assert row["customer_id"] == "c001" and len(row["email_sha256"]) == 64
    assert "Example.com" not in json.dumps({k: str(v) for k, v in row.items()})  # no raw email stored


def test_bad_signature_and_stale_timestamp_are_refused(receiver):
    assert receiver.post(event(2), secret="not-the-key").status_code == 401
    assert receiver.post(event(3), ts=int(time.time()) - 3600).status_code == 401
    missing = requests.post(f"{receiver.url}/customerio", json=event(4), timeout=10)
    assert missing.status_code == 401
    assert stored(receiver) == 0


def test_malformed_bodies_are_400_with_the_fields(receiver):
    r = receiver.post(b"{not json")
    assert r.status_code == 400 and r.json()["fields"] == ["body is not JSON"]
    bad = event(5)
    bad["metric"] = "teleported"
    del bad["event_id"]
    r = receiver.post(bad)
    assert r.status_code == 400 and set(r.json()["fields"]) == {"metric", "event_id"}
    assert stored(receiver) == 0


def test_a_50_mb_body_is_refused_without_being_stored(receiver):
    huge = b'{"event_id": "big", "pad": "' + b"x" * (50 * 1024 * 1024) + b'"}'
    try:
        r = receiver.post(huge)
        assert r.status_code == 413
    except requests.ConnectionError:
        pass  # the server may close the connection before the client finished sending; either way refused
    assert stored(receiver) == 0
    assert receiver.post(event(6)).status_code == 200  # and it still serves the next sender


def test_query_strings_are_dropped_from_links(receiver):
    receiver.post(event(7, metric="clicked", href="https://shop.example.com/cart?email=a@b.co&t=secret", link_id=9))
    with receiver.engine.connect() as conn:
        assert conn.scalar(select(state.metric_event.c.href)) == "https://shop.example.com/cart"


@pytest.mark.parametrize("segment", ["jane@example.com", "jane%40example.com"])
def test_an_email_in_a_link_path_is_masked(receiver, segment: str):
    receiver.post(event(8, metric="clicked", href=f"https://shop.example.com/unsubscribe/{segment}/confirm", link_id=9))
    with receiver.engine.connect() as conn:
        assert conn.scalar(select(state.metric_event.c.href)) == "https://shop.example.com/unsubscribe/<email>/confirm"
