"""The sync engine end to end without Airflow, on SQLite and on the real Postgres."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text

from data_out import state
from data_out.config import load_audiences
from data_out.destinations import destination_class
from data_out.engine import lease
from data_out.engine.holdout import is_held_out
from data_out.engine.runner import AudienceRunner, RunFailed, SizeMismatch
from data_out.identity import normalize_email, sha256_hex
from tests.conftest import write_audience
from tests.support.memory_destination import MemoryDestination

AS_OF = dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC)
TARGETS = "test_targets_v1"


def person(i: int, **kw: object) -> dict:
    return {"customer_id": f"c{i:04d}", "email": f"  Person.{i}@Example.com ", "phone": None, **kw}


def run(
    audiences_dir: Path, resolver, engine: Engine, holder: str, name: str = TARGETS, override: str | None = None
) -> int:
    runner = AudienceRunner(engine, load_audiences(audiences_dir), name, resolver)
    return runner.run(holder, AS_OF, override_reason=override)


def expected_memory(rows: list[dict]) -> dict[str, str]:
    """member_key -> email hash the memory destination must hold: in audience, not bought, not held out."""
    out = {}
    for r in rows:
        if not r.get("in_audience", 1) or r.get("bought"):
            continue
        if is_held_out("test-salt", r["customer_id"], 20):
            continue
        email = normalize_email(r["email"])
        if email.ok:
            out[r["customer_id"]] = sha256_hex(email.value)
    return out


def held(store) -> dict[str, str]:
    return {k: row.email_sha256 for k, row in store.audience("aud-1").items()}


def last_sync(engine: Engine, destination: str = "memory") -> dict:
    s = state.sync
    with engine.connect() as conn:
        return dict(
            conn.execute(select(s).where(s.c.destination == destination).order_by(s.c.id.desc()).limit(1))
            .mappings()
            .one()
        )


def warehouse_keys(engine: Engine, table: str) -> set[str]:
    with engine.connect() as conn:
        return {r for (r,) in conn.execute(text(f"SELECT member_key FROM {table}"))}


def test_first_run_then_unchanged_run(audiences_dir, resolver, state_engine, people, store):
    rows = [person(i) for i in range(40)] + [person(100 + i, bought=1) for i in range(5)]
    people.set(rows)
    run(audiences_dir, resolver, state_engine, "t/1")
    want = expected_memory(rows)
    assert held(store) == want
    assert 0 < len(want) < 40  # some held out, none of the buyers

    in_audience = {r["customer_id"] for r in rows if not r.get("bought")}
    holdouts = {k for k in in_audience if is_held_out("test-salt", k, 20)}
    assert warehouse_keys(state_engine, f"audience_{TARGETS}") == in_audience - holdouts
    assert warehouse_keys(state_engine, f"audience_{TARGETS}_holdout") == holdouts

    requests_before = len(store.requests)
    run(audiences_dir, resolver, state_engine, "t/2")
    assert len(store.requests) == requests_before  # nothing changed, nothing sent
    sync = last_sync(state_engine)
    assert (sync["planned_adds"], sync["planned_removes"], sync["status"]) == (0, 0, "success")
    with state_engine.connect() as conn:
        assert conn.scalar(select(state.run.c.recomputed).order_by(state.run.c.id.desc()).limit(1)) == 0


def test_membership_and_identifier_changes(audiences_dir, resolver, state_engine, people, store):
    rows = [person(i) for i in range(30)]
    people.set(rows)
    run(audiences_dir, resolver, state_engine, "t/1")
    sent_before = held(store)

    rows = [r for r in rows if r["customer_id"] not in {"c0000", "c0001", "c0002"}]  # leave
    rows += [person(200 + i) for i in range(4)]  # join
    changed = [k for k in sent_before if k not in {"c0000", "c0001", "c0002"}][:2]
    for r in rows:
        if r["customer_id"] in changed:
            r["email"] = f"new.{r['customer_id']}@example.com"
    people.set(rows)
    run(audiences_dir, resolver, state_engine, "t/2")

    assert held(store) == expected_memory(rows)
    sync = last_sync(state_engine)
    assert sync["changed"] == len(changed)
    removed_hashes = {r.email_sha256 for op, _, batch in store.requests if op == "remove" for r in batch}
    assert {sent_before[k] for k in changed} <= removed_hashes  # old hashes were removed, not orphaned


@pytest.mark.parametrize("fault", ["fail_after_apply", "fail_before_apply"])
def test_failure_half_way_converges_without_double_apply(audiences_dir, resolver, state_engine, people, store, fault):
    rows = [person(i) for i in range(25)]
    people.set(rows)
    getattr(store, fault).add(3)  # the third request: batches 1-2 committed, 3 in doubt
    with pytest.raises(RunFailed, match="memory: failed"):
        run(audiences_dir, resolver, state_engine, "t/1")
    assert last_sync(state_engine)["status"] == "failed"

    run(audiences_dir, resolver, state_engine, "t/2")
    assert held(store) == expected_memory(rows)
    assert max(store.applied_keys.values()) == 1
    assert last_sync(state_engine)["resumed_batches"] >= 1


def test_guard_blocks_empty_source_until_overridden(audiences_dir, resolver, state_engine, people, store):
    rows = [person(i) for i in range(20)]
    people.set(rows)
    run(audiences_dir, resolver, state_engine, "t/1")
    before = held(store)
    people.set([])
    with pytest.raises(RunFailed, match="mass-removal guard"):
        run(audiences_dir, resolver, state_engine, "t/2")
    assert held(store) == before  # no removal pushed
    sync = last_sync(state_engine)
    assert sync["status"] == "guarded" and "no members" in sync["guard"]
    with state_engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(state.pending)) == 0

    run(audiences_dir, resolver, state_engine, "t/3", override="campaign ended")
    assert held(store) == {}
    assert "campaign ended" in last_sync(state_engine)["guard"]


def test_invalid_missing_duplicate_identifiers_are_counted(audiences_dir, resolver, state_engine, people, store):
    rows = [person(i) for i in range(10)]
    rows += [
        {"customer_id": "bad1", "email": "not-an-email", "phone": None},
        {"customer_id": "bad2", "email": None, "phone": "12"},
        {"customer_id": "c0003", "email": "dup@example.com", "phone": None},  # duplicate key
        {"customer_id": None, "email": "nokey@example.com", "phone": None},
    ]
    people.set(rows)
    run(audiences_dir, resolver, state_engine, "t/1")
    with state_engine.connect() as conn:
        r = conn.execute(select(state.run).order_by(state.run.c.id.desc()).limit(1)).mappings().one()
    assert r["duplicate_keys"] == 1
    assert r["missing_keys"] == 1
    assert r["identifier_issues"]["email_invalid"] == 1
    assert r["identifier_issues"]["email_missing"] == 1
    assert r["identifier_issues"]["phone_invalid"] == 1
    unmatchable = {k for k in ("bad1", "bad2") if not is_held_out("test-salt", k, 20)}
    assert last_sync(state_engine)["unmatchable"] == len(unmatchable)
    assert not {"bad1", "bad2"} & set(held(store))


def test_rejected_rows_are_recorded_hashed(audiences_dir, resolver, state_engine, people, store):
    rows = [person(i) for i in range(12)]
    people.set(rows)
    target = next(iter(expected_memory(rows)))
    store.reject[target] = "vendor says: invalid entry"
    run(audiences_dir, resolver, state_engine, "t/1")
    with state_engine.connect() as conn:
        rejects = conn.execute(select(state.reject)).mappings().all()
    assert [(r["member_key_sha256"], r["reason"]) for r in rejects] == [
        (hashlib.sha256(target.encode()).hexdigest(), "vendor says: invalid entry")
    ]
    assert last_sync(state_engine)["rejected"] == 1
    assert target not in held(store)


def test_holdout_assignment_is_stable_as_the_audience_grows(audiences_dir, resolver, state_engine, people, store):
    rows = [person(i) for i in range(50)]
    people.set(rows)
    run(audiences_dir, resolver, state_engine, "t/1")
    first = warehouse_keys(state_engine, f"audience_{TARGETS}_holdout")
    people.set(rows + [person(500 + i) for i in range(50)])
    run(audiences_dir, resolver, state_engine, "t/2")
    second = warehouse_keys(state_engine, f"audience_{TARGETS}_holdout")
    assert first <= second
    assert {k for k in second if k < "c0050"} == first


def test_two_runs_of_one_audience_never_interleave(state_engine):
    lease.acquire(state_engine, TARGETS, "dag/run-a")
    with pytest.raises(lease.LeaseHeld, match="run-a"):
        lease.acquire(state_engine, TARGETS, "dag/run-b")
    lease.acquire(state_engine, TARGETS, "dag/run-a")  # re-entrant for the same run's retries
    with pytest.raises(lease.LeaseHeld):
        lease.check(state_engine, TARGETS, "dag/run-b")
    lease.release(state_engine, TARGETS, "dag/run-a")
    lease.acquire(state_engine, TARGETS, "dag/run-b")


def test_an_expired_lease_can_be_taken_over(state_engine):
    lease.acquire(state_engine, TARGETS, "dag/crashed", ttl=dt.timedelta(seconds=-1))
    lease.acquire(state_engine, TARGETS, "dag/next")
    lease.check(state_engine, TARGETS, "dag/next")


def test_each_step_renews_the_lease_of_a_run_still_working(state_engine):
    """A run whose lease ran out while it worked (a long push) renews it at its next step, before any
    other run could take it: only a run that stopped working loses its audience."""
    lease.acquire(state_engine, TARGETS, "dag/slow", ttl=dt.timedelta(seconds=-1))
    lease.check(state_engine, TARGETS, "dag/slow")
    with pytest.raises(lease.LeaseHeld, match="dag/slow"):
        lease.acquire(state_engine, TARGETS, "dag/next")


def test_a_failing_source_fails_the_run_and_keeps_state(audiences_dir, resolver, state_engine, people, store):
    people.set([person(i) for i in range(10)])
    run(audiences_dir, resolver, state_engine, "t/1")
    before = held(store)
    with people.engine.begin() as conn:
        conn.execute(text("DROP TABLE people"))
    with pytest.raises(RunFailed, match="staging failed: SourceError: audience test_targets_v1"):
        run(audiences_dir, resolver, state_engine, "t/2")
    assert held(store) == before


def test_a_retried_start_closes_the_attempt_that_could_not_record_its_failure(audiences_dir, resolver, state_engine):
    """The first attempt died with the state database; the retry must not leave its run "running"."""
    runner = AudienceRunner(state_engine, load_audiences(audiences_dir), TARGETS, resolver)
    as_of = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    first = runner.start("dag/run-a", as_of)
    second = runner.start("dag/run-a", as_of)  # the same DAG run's retry (the lease is re-entrant)
    r = state.run
    with state_engine.connect() as conn:
        rows = dict(conn.execute(select(r.c.id, r.c.status).where(r.c.audience == TARGETS)).all())
    assert rows == {first: "failed", second: "running"}


def test_destinations_in_parallel_end_where_they_would_one_by_one(audiences_dir, resolver, state_engine, people, store):
    rows = [person(i) for i in range(40)] + [person(100 + i, bought=1) for i in range(5)]
    people.set(rows)
    runner = AudienceRunner(state_engine, load_audiences(audiences_dir), TARGETS, resolver)
    runner.run("t/parallel/1", AS_OF, parallel=2)
    people.set(rows[5:] + [person(300)])
    run_id = runner.run("t/parallel/2", AS_OF, parallel=2)
    want = expected_memory(rows[5:] + [person(300)])
    assert held(store) == want
    in_audience = {r["customer_id"] for r in rows[5:] + [person(300)] if not r.get("bought")}
    targeted = {k for k in in_audience if not is_held_out("test-salt", k, 20)}
    assert warehouse_keys(state_engine, f"audience_{TARGETS}") == targeted
    with state_engine.connect() as conn:
        statuses = conn.execute(select(state.sync.c.status).where(state.sync.c.run_id == run_id)).scalars().all()
    assert sorted(statuses) == ["success", "success"]


GUARDED = "guard_window_v1"


def guarded_runner(tmp_path: Path, resolver, engine: Engine, guard: str = "{}") -> AudienceRunner:
    write_audience(
        tmp_path / "guarded",
        GUARDED,
        f"""
        name: {GUARDED}
        owner: tests
        purpose: cumulative mass-removal guard
        source: {{conn_id: db, query: "SELECT customer_id, email, phone FROM people WHERE in_audience = 1"}}
        destinations: [{{type: memory}}]
        guard: {guard}
    """,
    )
    return AudienceRunner(engine, load_audiences(tmp_path / "guarded"), GUARDED, resolver)


def test_shrinks_in_a_row_add_up_within_the_guard_window(tmp_path, resolver, state_engine, people, store):
    """20 -> 14 (30% removed) -> 9 (36% of 14, but 55% of the 20 two runs ago): the second shrink trips a
    50% guard; once the larger size is older than the window, the same shrink passes."""
    runner = guarded_runner(tmp_path, resolver, state_engine)
    for holder, n in (("t/1", 20), ("t/2", 14)):
        people.set([person(i) for i in range(n)])
        runner.run(holder, AS_OF)
    people.set([person(i) for i in range(9)])
    with pytest.raises(RunFailed, match=r"55% fewer than the largest acknowledged size of the last 7 days \(20\)"):
        runner.run("t/3", AS_OF)
    assert len(held(store)) == 14  # nothing removed
    assert last_sync(state_engine)["status"] == "guarded"

    s = state.sync
    with state_engine.begin() as conn:  # the 20-member size is now eight days old
        eight_days_ago = state.utcnow() - dt.timedelta(days=8)
        conn.execute(s.update().where(s.c.audience == GUARDED).values(started_at=eight_days_ago))
    runner.run("t/4", AS_OF)
    assert len(held(store)) == 9


def test_an_override_lets_the_cumulative_shrink_through_and_becomes_the_new_baseline(
    tmp_path, resolver, state_engine, people, store
):
    runner = guarded_runner(tmp_path, resolver, state_engine, "{removal_window_days: 30}")
    for holder, n in (("t/1", 20), ("t/2", 14)):
        people.set([person(i) for i in range(n)])
        runner.run(holder, AS_OF)
    people.set([person(i) for i in range(9)])
    with pytest.raises(RunFailed, match="of the last 30 days"):
        runner.run("t/3", AS_OF)
    runner.run("t/4", AS_OF, override_reason="spring clean-up")
    assert len(held(store)) == 9 and "spring clean-up" in last_sync(state_engine)["guard"]
    people.set([person(i) for i in range(7)])  # 22% fewer than the approved 9, 65% fewer than the 20 before it
    runner.run("t/5", AS_OF)
    assert len(held(store)) == 7 and last_sync(state_engine)["guard"] == "passed"


def test_a_destination_far_smaller_than_acknowledged_fails_the_sync_until_a_full_resync(
    tmp_path, resolver, state_engine, people, store
):
    """The vendor holds far fewer members than state acknowledged (it answered batches from stored
    responses, or was emptied elsewhere): the sync must not say success, and says what to do."""
    runner = guarded_runner(tmp_path, resolver, state_engine)
    people.set([person(i) for i in range(10)])
    runner.run("t/1", AS_OF)
    store.audience("aud-1").clear()  # the destination lost what state believes it holds
    people.set([person(i) for i in range(11)])
    with pytest.raises(RunFailed, match=r"size_mismatch: .*reports 1 members .* but 11 are acknowledged"):
        runner.run("t/2", AS_OF)
    sync = last_sync(state_engine)
    assert sync["status"] == "size_mismatch"
    assert f"{GUARDED}/memory" in sync["error"] and "full_resync" in sync["error"]
    assert (sync["destination_size"], sync["acked_size"]) == (1, 11)

    runner.run("t/3", AS_OF, mode="full_resync")
    assert len(held(store)) == 11 and last_sync(state_engine)["status"] == "success"


def test_the_shortfall_threshold_is_a_drift_setting(tmp_path, resolver, state_engine, people, store):
    write_audience(
        tmp_path / "lenient",
        GUARDED,
        f"""
        name: {GUARDED}
        owner: tests
        purpose: a destination whose reported size lags
        source: {{conn_id: db, query: "SELECT customer_id, email, phone FROM people WHERE in_audience = 1"}}
        destinations: [{{type: memory, drift: {{min_reported_share: 0}}}}]
    """,
    )
    runner = AudienceRunner(state_engine, load_audiences(tmp_path / "lenient"), GUARDED, resolver)
    people.set([person(i) for i in range(10)])
    runner.run("t/1", AS_OF)
    store.audience("aud-1").clear()
    people.set([person(i) for i in range(11)])
    runner.run("t/2", AS_OF)
    assert last_sync(state_engine)["status"] == "success"


def test_syncs_of_a_dead_attempt_are_marked_superseded(audiences_dir, resolver, state_engine, people, store):
    """An attempt killed while planning leaves its sync "planning"; the next attempt marks it superseded,
    whether it is a retry of the same DAG run (a new start) or another run that took the lease over."""
    people.set([person(i) for i in range(6)])
    runner = AudienceRunner(state_engine, load_audiences(audiences_dir), TARGETS, resolver)
    first = runner.start("dag/run-a", AS_OF)
    dead = runner._open_sync(first, "memory", "incremental")  # killed while planning
    runner.run("dag/run-a", AS_OF)  # the task's retry
    second = runner.start("dag/run-a", AS_OF)
    orphan = runner._open_sync(second, "memory", "incremental")  # killed again; its lease then expires
    with state_engine.begin() as conn:
        conn.execute(state.lease.update().values(expires_at=state.utcnow() - dt.timedelta(minutes=1)))
    runner.run("dag/run-b", AS_OF)
    s = state.sync
    with state_engine.connect() as conn:
        statuses = dict(conn.execute(select(s.c.id, s.c.status).where(s.c.id.in_([dead, orphan]))).all())
        planning = conn.scalar(select(func.count()).where(s.c.status.in_(["planning", "resuming", "planned"])))
    assert statuses == {dead: "superseded", orphan: "superseded"}
    assert planning == 0


def test_the_push_task_fails_on_a_shortfall_and_the_alert_says_to_resync(
    tmp_path, resolver, state_engine, people, store
):
    """The push task itself fails (the finish task only mirrors failures its own tasks alerted on), with
    the sync recorded first; the failure email's next step is a full resync."""
    runner = guarded_runner(tmp_path, resolver, state_engine)
    people.set([person(i) for i in range(10)])
    runner.run("t/1", AS_OF)
    store.audience("aud-1").clear()
    run_id = runner.start("t/2", AS_OF)
    runner.stage(run_id, "t/2")
    plan = runner.plan(run_id, "memory", "t/2")
    with pytest.raises(SizeMismatch) as short:
        runner.push(plan.sync_id, "memory", "t/2")
    assert last_sync(state_engine)["status"] == "size_mismatch"
    assert '"mode": "full_resync"' in short.value.next_step and short.value.retryable


def test_a_retried_push_that_finds_the_size_caught_up_succeeds(tmp_path, resolver, state_engine, people, store):
    """A vendor whose count lags behind uploads: the push task fails, its retry reads the size again."""
    runner = guarded_runner(tmp_path, resolver, state_engine)
    people.set([person(i) for i in range(10)])
    runner.run("t/1", AS_OF)
    held_before = dict(store.audience("aud-1"))
    store.audience("aud-1").clear()  # not counted yet
    run_id = runner.start("t/2", AS_OF)
    runner.stage(run_id, "t/2")
    plan = runner.plan(run_id, "memory", "t/2")
    with pytest.raises(SizeMismatch):
        runner.push(plan.sync_id, "memory", "t/2")
    store.audience("aud-1").update(held_before)  # counted now
    runner.push(plan.sync_id, "memory", "t/2")  # Airflow's retry of the task
    assert last_sync(state_engine)["status"] == "success" and last_sync(state_engine)["error"] is None
    runner.finish(run_id, "t/2")


def test_a_lagging_destination_reporting_nothing_after_its_first_push_succeeds_and_records_it(
    tmp_path, resolver, state_engine, people, store, monkeypatch
):
    """Meta's and Google's counts lag hours to a day behind uploads: a new audience reads 0 right after
    its first push. By default that is no shortfall there; the size is recorded for reconciliation."""
    monkeypatch.setattr(MemoryDestination, "reported_size_is_live", False, raising=False)
    monkeypatch.setattr(MemoryDestination, "size", lambda self: 0)
    runner = guarded_runner(tmp_path, resolver, state_engine)
    people.set([person(i) for i in range(10)])
    runner.run("t/1", AS_OF)
    sync = last_sync(state_engine)
    assert sync["status"] == "success" and sync["error"] is None
    assert (sync["destination_size"], sync["acked_size"]) == (0, 10)


def test_a_live_destination_reporting_nothing_after_its_first_push_is_a_size_mismatch(
    tmp_path, resolver, state_engine, people, store, monkeypatch
):
    monkeypatch.setattr(MemoryDestination, "size", lambda self: 0)
    runner = guarded_runner(tmp_path, resolver, state_engine)
    people.set([person(i) for i in range(10)])
    with pytest.raises(RunFailed, match="size_mismatch"):
        runner.run("t/1", AS_OF)
    assert last_sync(state_engine)["status"] == "size_mismatch"


def test_an_explicit_shortfall_threshold_applies_to_a_lagging_destination(
    tmp_path, resolver, state_engine, people, store, monkeypatch
):
    monkeypatch.setattr(MemoryDestination, "reported_size_is_live", False, raising=False)
    monkeypatch.setattr(MemoryDestination, "size", lambda self: 0)
    write_audience(
        tmp_path / "strict",
        GUARDED,
        f"""
        name: {GUARDED}
        owner: tests
        purpose: a lagging destination checked anyway
        source: {{conn_id: db, query: "SELECT customer_id, email, phone FROM people WHERE in_audience = 1"}}
        destinations: [{{type: memory}}]
        drift: {{min_reported_share: 0.5}}
    """,
    )
    runner = AudienceRunner(state_engine, load_audiences(tmp_path / "strict"), GUARDED, resolver)
    people.set([person(i) for i in range(10)])
    with pytest.raises(RunFailed, match="size_mismatch"):
        runner.run("t/1", AS_OF)
    assert last_sync(state_engine)["status"] == "size_mismatch"


@pytest.mark.parametrize(
    ("kind", "live"),
    [("meta", False), ("google", False), ("google_ads", False), ("tiktok", False), ("warehouse", True)],
)
def test_vendors_whose_counts_lag_say_so(kind, live):
    assert destination_class(kind).reported_size_is_live is live
