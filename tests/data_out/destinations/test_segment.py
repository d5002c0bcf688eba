"""Segment against Segment's own rules: its library (segment-analytics-python) as the oracle for message
shapes and batch sizes, its audience spec for audience events, and a stand-in that enforces the published
500 KB / 32 KB limits to the byte."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from pathlib import Path

import pytest
from segment.analytics import consumer as segment_consumer
from segment.analytics.client import Client as SegmentClient

from data_out.connections import ConnectionInfo, engine_for
from data_out.destinations.base import MemberRow, Op
from data_out.destinations.segment.batch import BATCH_BYTES, MAX_EVENT_BYTES, batch_bodies, encode_message
from data_out.destinations.segment.destination import SegmentDestination
from data_out.destinations.segment.settings import SegmentSettings
from data_out.engine.holdout import is_held_out
from data_out.state import ensure_schema
from sandbox.standins.base import Running
from sandbox.standins.segment import MAX_REQUEST, SegmentStandIn
from tests.conftest import People
from tests.data_out.destinations.cases import AUDIENCE, CASES
from tests.data_out.destinations.test_contract import SALT, Env, person

ORACLE = SegmentClient("oracle-write-key", send=False)


def library_message(ours: dict) -> dict:
    """The message segment-analytics-python builds from the same fields (it validates their types)."""
    common = {
        "user_id": ours["userId"],
        "message_id": ours["messageId"],
        "timestamp": dt.datetime.fromisoformat(ours["timestamp"]),
    }
    if ours["type"] == "track":
        ok, msg = ORACLE.track(event=ours["event"], properties=ours["properties"], **common)
    else:
        assert ours["type"] == "identify", ours["type"]
        ok, msg = ORACLE.identify(traits=ours["traits"], **common)
    assert ok
    return msg


def check_request(body: bytes) -> list[dict]:
    """One ``/v1/batch`` body against the library: its size limits, and each message as it would build it."""
    assert len(body) <= segment_consumer.BATCH_SIZE_LIMIT
    request = json.loads(body)
    assert set(request) == {"batch", "sentAt"}
    dt.datetime.fromisoformat(request["sentAt"])
    for ours in request["batch"]:
        assert len(json.dumps(ours).encode()) <= segment_consumer.MAX_MSG_SIZE
        theirs = library_message(ours)
        unknown = set(ours) - set(theirs)
        assert not unknown, f"fields the library does not send: {unknown}"
        assert {k: theirs[k] for k in ours} == ours  # same values, same types, same timestamp format
    return request["batch"]


def test_limits_are_the_librarys():
    assert BATCH_BYTES == segment_consumer.BATCH_SIZE_LIMIT
    assert MAX_EVENT_BYTES <= segment_consumer.MAX_MSG_SIZE and MAX_REQUEST >= BATCH_BYTES


def test_bodies_are_the_exact_json_and_stay_under_the_limit():
    messages = [
        {"type": "track", "userId": f"u{i}", "event": "E", "properties": {"x": "é" * (i % 50)}} for i in range(3000)
    ]
    encoded = [encode_message(m) for m in messages]
    bodies = list(batch_bodies(encoded, "2026-12-07T00:00:00.000+00:00", max_bytes=60_000))
    assert len(bodies) > 1 and sum(n for n, _ in bodies) == len(messages)
    done = 0
    for n, body in bodies:
        assert len(body) <= 60_000
        want = {"batch": messages[done : done + n], "sentAt": "2026-12-07T00:00:00.000+00:00"}
        assert body == json.dumps(want).encode()  # sized as sent, byte for byte
        done += n
    # each part is as full as it can be: the next message would not have fitted
    done = 0
    for n, body in bodies[:-1]:
        assert len(body) + len(b", ") + len(encoded[done + n]) > 60_000
        done += n


def make_env(tmp_path: Path, standin: SegmentStandIn, url: str) -> Env:
    engine = engine_for(ConnectionInfo("db", "sqlite", host=str(tmp_path / "db.sqlite")))
    ensure_schema(engine)
    return Env(CASES["segment"], standin, url, tmp_path, People(engine), engine)


def test_a_sync_of_10000_adds_in_one_run_is_accepted_under_500kb(tmp_path: Path):
    """The default batch of 2,000 members is 4,000 calls: more than one request's worth. Every request
    stays under the library's 475,000 bytes and the stand-in's exact 500,000, and all members arrive."""
    standin = SegmentStandIn()
    rows = [person(i) for i in range(10_000)]
    with Running(standin) as running:
        env = make_env(tmp_path, standin, running.url)
        env.write(batch_size=2_000)
        env.people.set(rows)
        env.run("t/1")
    assert env.last_sync()["status"] == "success"
    assert env.held() == env.expected(rows)
    assert len(env.held()) > 8_000
    assert standin.request_sizes and max(standin.request_sizes) <= BATCH_BYTES
    assert len(standin.request_sizes) > env.last_sync()["batches"]  # batches really needed several requests
    assert all(status == 200 for _, _, status in standin.log)


def test_every_request_of_a_full_scenario_conforms_to_the_library(tmp_path: Path):
    """Adds, removes, an identity change and a full resync (refreshes): every body, every message."""
    standin = SegmentStandIn()
    rows = [person(i) for i in range(40)]
    with Running(standin) as running:
        env = make_env(tmp_path, standin, running.url)
        env.write(batch_size=7)
        env.people.set(rows)
        env.run("t/1")
        rows = rows[5:] + [person(100 + i) for i in range(4)]
        rows[0] = {**rows[0], "email": "changed@example.com"}
        env.people.set(rows)
        env.run("t/2")
        env.run("t/3", mode="full_resync")
    assert env.held() == env.expected(rows)
    messages = [m for body in standin.payloads for m in check_request(body)]
    kinds = Counter((m["type"], m.get("event")) for m in messages)
    assert kinds[("track", "Audience Entered")] and kinds[("track", "Audience Exited")] and kinds[("identify", None)]


def test_audience_events_follow_segments_audience_spec(tmp_path: Path):
    standin = SegmentStandIn()
    conn = CASES["segment"].connection("")
    with Running(standin) as running:
        conn = CASES["segment"].connection(running.url)
        dest = SegmentDestination(AUDIENCE, SegmentSettings(type="segment", name="cdp"), conn)
        dest.push(Op.ADD, [MemberRow("m1", None, None, None, None, True)], "do-k1")
        dest.push(Op.REMOVE, [MemberRow("m1", None, None, None, None, False)], "do-k2")
    entered, exited = standin.tracks
    # the spec's properties, unchanged; Data Out's beside them
    assert entered["event"] == "Audience Entered" and exited["event"] == "Audience Exited"
    assert entered["properties"] == {"audience_key": AUDIENCE, AUDIENCE: True, "destination": "cdp", "holdout": True}
    assert exited["properties"]["audience_key"] == AUDIENCE and exited["properties"][AUDIENCE] is False
    assert standin.traits["m1"][AUDIENCE] is False


def test_a_resent_batch_carries_the_same_message_ids(tmp_path: Path):
    """Segment dedupes by messageId: a batch sent again (lost answer, crash, split after a 413) must
    carry the ids it carried the first time, or Segment counts every member's entry twice."""
    standin = SegmentStandIn()
    rows = [MemberRow(f"m{i}", None, None, None, None, False) for i in range(6)]
    with Running(standin) as running:
        dest = SegmentDestination(AUDIENCE, SegmentSettings(type="segment"), CASES["segment"].connection(running.url))
        dest.push(Op.ADD, rows, "do-key")
        dest.push(Op.ADD, rows[:3], "do-key~0")  # the first half of the same batch, after a split
        dest.push(Op.ADD, rows, "do-key")  # and the whole batch once more
    assert standin.events["Audience Entered"] == 6
    first, *again = [json.loads(b)["batch"] for b in standin.payloads]
    ids = {m["messageId"] for m in first}
    assert all({m["messageId"] for m in batch} <= ids for batch in again)


@pytest.mark.parametrize("held", [False, True])
def test_holdout_members_reach_segment_flagged(tmp_path: Path, held: bool):
    rows = [person(i) for i in range(60)]
    target = next(r for r in rows if is_held_out(SALT, r["customer_id"], 10) is held)
    standin = SegmentStandIn()
    with Running(standin) as running:
        env = make_env(tmp_path, standin, running.url)
        env.write(batch_size=100, include="all")
        env.people.set(rows)
        env.run("t/1")
    assert standin.traits[target["customer_id"]][f"{AUDIENCE}_holdout"] is held
