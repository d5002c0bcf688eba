"""Push shards: the planner's key-hash assignment, and shards pushed in any order, failing and retried.

Every test runs on SQLite and on the real Postgres; the shard size is lowered so a few dozen members
make several shards.
"""

from __future__ import annotations

import datetime as dt
import random
import tempfile
from collections import defaultdict
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Column, MetaData, String, Table, insert, select, text

from data_out import state
from data_out.config import load_audiences
from data_out.connections import ConnectionInfo, engine_for
from data_out.destinations.base import DestinationError
from data_out.engine import lease, shards
from data_out.engine.holdout import is_held_out
from data_out.engine.runner import AudienceRunner, RunFailed
from data_out.engine.shards import key_hash, member_key_hash, shard_count, shard_of
from data_out.identity import normalize_email, sha256_hex
from data_out.state import ensure_schema
from tests.conftest import People, write_audience
from tests.support.memory_destination import STORE
from tests.support.strategies import failure, snapshot

AS_OF = dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC)
AUD = "shard_test_v1"
SHARDS = 4
AUDIENCE_YAML = f"""
    name: {AUD}
    owner: tests
    purpose: push shards
    source: {{conn_id: db, query: "SELECT customer_id, email, phone FROM people WHERE in_audience = 1"}}
    destinations: [{{type: memory, batch_size: 2, push_shards: {SHARDS}}}]
    guard: {{max_removal_share: 1, allow_empty_source: true}}
"""


def person(i: int, email: str | None = None) -> dict:
    return {"customer_id": f"c{i:04d}", "email": email or f"person.{i}@example.com"}


def email_hash(row: dict) -> str:
    return sha256_hex(normalize_email(row["email"]).value)


def held(store) -> dict[str, str]:
    return {k: row.email_sha256 for k, row in store.audience("aud-1").items()}


def sync_row(engine, sync_id: int) -> dict:
    with engine.connect() as conn:
        return dict(conn.execute(select(state.sync).where(state.sync.c.id == sync_id)).mappings().one())


@pytest.fixture
def runner(monkeypatch, tmp_path, resolver, state_engine) -> AudienceRunner:
    monkeypatch.setattr(shards, "ROWS_PER_SHARD", 5)  # 30 planned rows would make 6 shards; the audience caps 4
    write_audience(tmp_path / "aud", AUD, AUDIENCE_YAML)
    return AudienceRunner(state_engine, load_audiences(tmp_path / "aud"), AUD, resolver)


def synced_then_changed(runner: AudienceRunner, people, store) -> tuple[list[dict], list[dict]]:
    """A first sync of 40 members, then a change: 8 leave, 6 change their email, 10 join."""
    before = [person(i) for i in range(40)]
    people.set(before)
    runner.run("t/1", AS_OF)
    assert held(store) == {r["customer_id"]: email_hash(r) for r in before}
    after = [person(i, f"new.{i}@example.com") if i < 14 else person(i) for i in range(8, 40)]
    after += [person(100 + i) for i in range(10)]
    people.set(after)
    return before, after


def plan_run(runner: AudienceRunner, holder: str = "t/2"):  # type: ignore[no-untyped-def]
    run_id = runner.start(holder, AS_OF)
    runner.stage(run_id, holder)
    return run_id, runner.plan(run_id, "memory", holder)


def test_member_key_hash_is_the_same_in_python_and_in_sql(state_engine):
    keys = ["", "0", "c0001", "é✓ Ωmega", "key with 'quote'", "x" * 256, *(f"k{i}" for i in range(200))]
    t = Table("shard_keys", MetaData(), Column("k", String(256), primary_key=True))
    t.create(state_engine)
    with state_engine.begin() as conn:
        conn.execute(insert(t), [{"k": k} for k in keys])
        got = dict(conn.execute(select(t.c.k, member_key_hash(t.c.k))).all())
        mod = dict(conn.execute(select(t.c.k, member_key_hash(t.c.k) % 7)).all())
    assert got == {k: key_hash(k) for k in keys}
    assert mod == {k: shard_of(k, 7) for k in keys}
    assert len({shard_of(f"k{i}", 4) for i in range(200)}) == 4  # the hash spreads keys


def test_the_shard_count_follows_the_planned_rows_within_limits():
    assert shard_count(0, 32) == 1  # nothing to push is still one (bookkeeping) push task
    assert shard_count(200_000, 32) == 1
    assert shard_count(200_001, 32) == 2
    assert shard_count(10_000_000, 32) == 32
    assert shard_count(10_000_000, 3) == 3  # the audience's or the destination's limit
    assert shard_count(10_000_000, 1_000) == shards.MAX_PUSH_SHARDS < 1024  # far below max_map_length
    assert shard_count(30, 32, rows_per_shard=5) == 6


def test_every_members_rows_share_one_shard_and_removes_come_first(runner, people, store, state_engine):
    before, after = synced_then_changed(runner, people, store)
    _, plan = plan_run(runner)
    assert plan.shards == SHARDS
    assert (plan.removes, plan.adds, plan.changed) == (8 + 6, 10 + 6, 6)

    p, b = state.pending, state.batch
    with state_engine.connect() as conn:
        pending = conn.execute(select(p.c.member_key, p.c.op, p.c.batch_no).where(p.c.audience == AUD)).all()
        batches = conn.execute(
            select(b.c.batch_no, b.c.op, b.c.rows, b.c.shard, b.c.shards).where(b.c.audience == AUD)
        ).all()
    assert len(pending) == plan.removes + plan.adds and len(batches) == plan.batches

    member_shards: dict[str, set[int]] = defaultdict(set)
    for key, _, no in pending:
        member_shards[key].add(no % SHARDS)
    assert all(found == {shard_of(key, SHARDS)} for key, found in member_shards.items())
    changed = {r["customer_id"] for r in after if r["email"].startswith("new.")}
    assert {k for k, op, _ in pending if op == "remove"} & {k for k, op, _ in pending if op == "add"} == changed

    rows_in: dict[int, list[str]] = defaultdict(list)
    for _, op, no in pending:
        rows_in[no].append(op)
    by_shard: dict[int, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for no, op, rows, shard, n in batches:
        assert (shard, n) == (no % SHARDS, SHARDS)
        assert 0 < rows <= 2 and rows_in[no] == [op] * rows  # batch size respected, one op per batch
        by_shard[shard][op].append(no)
    assert set(by_shard) == set(range(SHARDS))
    for ops in by_shard.values():
        assert max(ops["remove"], default=-1) < min(ops["add"], default=1 << 30)  # removes first in a shard
    removes = [no for no, op, *_ in batches if op == "remove"]
    assert max(removes) < min(no for no, op, *_ in batches if op == "add")  # and overall, by number


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_shards_pushed_in_any_order_converge(runner, people, store, state_engine, seed):
    before, after = synced_then_changed(runner, people, store)
    old_hash = {r["customer_id"]: email_hash(r) for r in before}
    requests_before = len(store.requests)
    run_id, plan = plan_run(runner)
    order = random.Random(seed).sample(range(plan.shards), plan.shards)
    for i, shard in enumerate(order):
        runner.push(plan.sync_id, "memory", "t/2", shard=shard)
        status = sync_row(state_engine, plan.sync_id)["status"]
        assert status == ("success" if i == len(order) - 1 else "planned"), (i, status)
    assert runner.finish(run_id, "t/2")["status"] == "success"

    assert held(store) == {r["customer_id"]: email_hash(r) for r in after}
    sync = sync_row(state_engine, plan.sync_id)
    assert (sync["added"], sync["removed"], sync["batches"]) == (plan.adds, plan.removes, plan.batches)
    assert sync["shards_done"] == (1 << SHARDS) - 1 and sync["acked_size"] == sync["destination_size"] == len(after)
    # a member whose email changed lost the old hash before it gained the new one
    sent = [(op, r.member_key, r.email_sha256) for op, _, rows in store.requests[requests_before:] for r in rows]
    for r in after:
        key = r["customer_id"]
        if r["email"].startswith("new."):
            assert sent.index(("remove", key, old_hash[key])) < sent.index(("add", key, email_hash(r)))


@pytest.mark.parametrize("fault", ["fail_after_apply", "fail_before_apply"])
def test_a_failing_shard_fails_the_sync_until_its_retry_succeeds(runner, people, store, state_engine, fault):
    _, after = synced_then_changed(runner, people, store)
    run_id, plan = plan_run(runner)
    for shard in (0, 1):
        runner.push(plan.sync_id, "memory", "t/2", shard=shard)
    getattr(store, fault).add(len(store.requests) + 1)  # shard 2's first batch: applied or not, no answer
    with pytest.raises(DestinationError):
        runner.push(plan.sync_id, "memory", "t/2", shard=2)
    runner.push(plan.sync_id, "memory", "t/2", shard=3)  # a later shard succeeding does not hide it
    sync = sync_row(state_engine, plan.sync_id)
    assert sync["status"] == "failed" and sync["error"].startswith(f"push shard 2 of {SHARDS}: DestinationError")

    runner.push(plan.sync_id, "memory", "t/2", shard=2)  # Airflow's retry of the mapped task
    assert sync_row(state_engine, plan.sync_id)["status"] == "success"
    assert runner.finish(run_id, "t/2")["status"] == "success"
    assert held(store) == {r["customer_id"]: email_hash(r) for r in after}
    assert max(store.applied_keys.values()) == 1


def test_a_shard_that_never_finished_fails_the_run_and_the_next_run_resumes_it(runner, people, store, state_engine):
    _, after = synced_then_changed(runner, people, store)
    run_id, plan = plan_run(runner)
    store.fail_after_apply.add(len(store.requests) + 1)
    with pytest.raises(DestinationError):
        runner.push(plan.sync_id, "memory", "t/2", shard=1)
    for shard in (0, 2):  # shard 3's task never ran (say its worker was lost)
        runner.push(plan.sync_id, "memory", "t/2", shard=shard)
    with pytest.raises(RunFailed, match=r"memory: failed: push shard\(s\) 1, 3 of 4 did not finish; push shard 1"):
        runner.finish(run_id, "t/2")

    runner.run("t/3", AS_OF)  # the plan step pushes the leftover batches first, with their keys
    assert held(store) == {r["customer_id"]: email_hash(r) for r in after}
    assert max(store.applied_keys.values()) == 1
    with state_engine.connect() as conn:
        last = conn.execute(select(state.sync).order_by(state.sync.c.id.desc()).limit(1)).mappings().one()
    assert last["status"] == "success" and last["resumed_batches"] > 0 and last["removed"] + last["added"] > 0


def test_batches_planned_before_the_upgrade_are_resumed_after_it(audiences_dir, resolver, state_engine, people, store):
    """A state database from before shards: ``ensure_schema`` adds the columns, old batches become shard 0."""
    rows = [person(i) for i in range(12)]
    people.set(rows)
    runner = AudienceRunner(state_engine, load_audiences(audiences_dir), "test_targets_v1", resolver)
    run_id = runner.start("t/1", AS_OF)
    runner.stage(run_id, "t/1")
    runner.plan(run_id, "memory", "t/1")  # then the worker died; the upgrade is deployed
    lease.release(state_engine, "test_targets_v1", "t/1")
    with state_engine.begin() as conn:
        for table, cols in (("do_batch", ("shard", "shards")), ("do_sync", ("shards", "shards_done"))):
            for col in cols:
                conn.execute(text(f'ALTER TABLE {table} DROP COLUMN "{col}"'))
    ensure_schema(state_engine)
    with state_engine.connect() as conn:
        assert set(conn.execute(select(state.batch.c.shard, state.batch.c.shards)).all()) == {(0, 1)}

    runner.run("t/2", AS_OF)
    assert set(held(store)) == {k for k in (r["customer_id"] for r in rows) if not is_held_out("test-salt", k, 20)}
    assert max(store.applied_keys.values()) == 1


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(st.tuples(snapshot, st.randoms(use_true_random=False), failure), min_size=1, max_size=4))
def test_any_history_pushed_in_shards_in_any_order_converges(steps):
    """Random snapshots, shard orders and failure points: after each run (failed shards retried, as
    Airflow does) the destination holds exactly the desired members, and no batch is applied twice."""
    STORE.__init__()  # type: ignore[misc]
    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(shards, "ROWS_PER_SHARD", 3):
        db = ConnectionInfo("db", "sqlite", host=str(Path(tmp) / "db.sqlite"))
        engine = engine_for(db)
        ensure_schema(engine)
        people = People(engine)
        write_audience(Path(tmp) / "aud", AUD, AUDIENCE_YAML)
        runner = AudienceRunner(
            engine, load_audiences(Path(tmp) / "aud"), AUD, lambda c: db if c == "db" else ConnectionInfo(c, "memory")
        )
        for i, (members, rnd, fail) in enumerate(steps):
            people.set([{"customer_id": k, "email": f"{k}.{v}@example.com"} for k, v in members.items()])
            run_id, plan = plan_run(runner, f"p/{i}")
            if fail:
                getattr(STORE, fail[0]).add(len(STORE.requests) + fail[1])
            failed = []
            for shard in rnd.sample(range(plan.shards), plan.shards):
                try:
                    runner.push(plan.sync_id, "memory", f"p/{i}", shard=shard)
                except DestinationError:
                    failed.append(shard)
            STORE.fail_before_apply.clear()
            STORE.fail_after_apply.clear()
            for shard in failed:
                runner.push(plan.sync_id, "memory", f"p/{i}", shard=shard)
            runner.finish(run_id, f"p/{i}")
            want = {k: sha256_hex(f"{k}.{v}@example.com") for k, v in members.items()}
            assert {k: row.email_sha256 for k, row in STORE.audience("aud-1").items()} == want
        assert all(n == 1 for n in STORE.applied_keys.values())
