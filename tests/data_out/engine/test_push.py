"""The push loop: each batch's commit overlaps the next push on Postgres, in batch order, and a failed
commit leaves its batches pending for a rerun that converges exactly once.

Every test runs on SQLite (commit, then push the next) and on the real Postgres (overlapped).
"""

from __future__ import annotations

import datetime as dt
import gc
import threading

import pytest
from sqlalchemy import delete, func, select

from data_out import state
from data_out.config import load_audiences
from data_out.connections import ConnectionInfo, engine_for
from data_out.destinations.base import BatchResult, MemberRow, Op
from data_out.engine import push as push_step
from data_out.engine.lease import LeaseHeld
from data_out.engine.plan import Planner, idempotency_key
from data_out.engine.push import Pusher
from data_out.engine.runner import AudienceRunner, RunFailed
from data_out.identity import sha256_hex
from tests.conftest import write_audience
from tests.support.memory_destination import MemoryDestination

AS_OF = dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC)
AUD = "push_loop_v1"
AUDIENCE_YAML = f"""
    name: {AUD}
    owner: tests
    purpose: push loop
    source: {{conn_id: db, query: "SELECT customer_id, email, phone FROM people WHERE in_audience = 1"}}
    destinations: [{{type: memory, batch_size: 2}}]
"""
MEMBERS = [{"customer_id": f"c{i:03d}", "email": f"p{i}@example.com"} for i in range(9)]  # 5 batches of <= 2


@pytest.fixture
def runner(tmp_path, resolver, state_engine, people) -> AudienceRunner:
    write_audience(tmp_path / "aud", AUD, AUDIENCE_YAML)
    people.set(MEMBERS)
    return AudienceRunner(state_engine, load_audiences(tmp_path / "aud"), AUD, resolver)


def pending_batches(engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(state.batch)) or 0)


def test_commits_follow_their_pushes_in_order_and_overlap_the_next_push_on_postgres(
    runner, store, state_engine, monkeypatch
):
    overlapped = state_engine.dialect.name == "postgresql"
    events: list[tuple[str, int]] = []
    second_push = threading.Event()
    push, commit = MemoryDestination.push, Pusher._commit

    def recording_push(self, op, rows, key):  # type: ignore[no-untyped-def]
        events.append(("push", len(events)))
        if sum(1 for e, _ in events if e == "push") == 2:
            second_push.set()
        return push(self, op, rows, key)

    def recording_commit(self, sync_id, batch_no, *args):  # type: ignore[no-untyped-def]
        events.append(("commit", batch_no))
        if overlapped and len([e for e in events if e[0] == "commit"]) == 1:
            # the first commit can only finish once the second batch is being pushed: without the
            # overlap this wait would run out
            assert second_push.wait(timeout=30), "the next batch was not pushed while this one committed"
        commit(self, sync_id, batch_no, *args)

    monkeypatch.setattr(MemoryDestination, "push", recording_push)
    monkeypatch.setattr(Pusher, "_commit", recording_commit)
    runner.run("t/1", AS_OF)

    pushes = [i for i, (e, _) in enumerate(events) if e == "push"]
    commits = [i for i, (e, _) in enumerate(events) if e == "commit"]
    assert len(pushes) == len(commits) == 5
    assert [n for e, n in events if e == "commit"] == sorted(n for e, n in events if e == "commit")
    for k, at in enumerate(commits):
        assert at > pushes[k]  # a batch commits only after the destination accepted it
        if k + 1 < len(pushes):
            assert at < pushes[k + 1] or overlapped  # at most one batch pushed ahead of its commit
        if k + 2 < len(pushes):
            assert at < pushes[k + 2]
    assert len(store.audience("aud-1")) == len(MEMBERS)
    assert pending_batches(state_engine) == 0


def test_a_failed_commit_leaves_its_batches_pending_and_the_rerun_applies_each_once(
    runner, store, state_engine, monkeypatch
):
    commit = Pusher._commit
    calls = 0

    def failing_second_commit(self, *args):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("state database went away")
        commit(self, *args)

    monkeypatch.setattr(Pusher, "_commit", failing_second_commit)
    with pytest.raises(RunFailed):
        runner.run("t/1", AS_OF)
    # batch 1 committed; batch 2 was accepted but not committed; on Postgres batch 3 was pushed while
    # batch 2 committed, and is pending too; nothing after it was pushed
    pushed = 3 if state_engine.dialect.name == "postgresql" else 2
    assert len(store.requests) == pushed
    assert pending_batches(state_engine) == 5 - 1

    monkeypatch.setattr(Pusher, "_commit", commit)
    runner.run("t/1", AS_OF)  # the retry of the same Airflow run
    assert len(store.audience("aud-1")) == len(MEMBERS)
    assert max(store.applied_keys.values()) == 1
    assert pending_batches(state_engine) == 0


def test_a_push_failing_while_the_batch_before_commits_keeps_that_commit(runner, store, state_engine):
    store.fail_before_apply.add(3)  # the third request fails; the second batch's commit is in flight on Postgres
    with pytest.raises(RunFailed):
        runner.run("t/1", AS_OF)
    assert pending_batches(state_engine) == 5 - 2
    runner.run("t/1", AS_OF)
    assert len(store.audience("aud-1")) == len(MEMBERS)
    assert max(store.applied_keys.values()) == 1


def test_the_pipeline_without_overlap_commits_at_once():
    done: list[int] = []
    with push_step._Pipeline(overlap=False) as pipeline:
        pipeline.then(lambda: done.append(1))
        assert done == [1]


def test_a_batch_committed_meanwhile_by_another_worker_is_not_pushed_again(runner, store, state_engine):
    """A zombie task of the same shard committed a batch after this drain listed it: no empty push."""
    run_id = runner.start("t/1", AS_OF)
    runner.stage(run_id, "t/1")
    plan = runner.plan(run_id, "memory", "t/1")
    b, p = state.batch, state.pending
    with state_engine.begin() as conn:
        numbers = conn.execute(select(b.c.batch_no).order_by(b.c.batch_no)).scalars().all()
    assert len(numbers) == 5
    gone = numbers[1]
    listed = Pusher._push_one

    def zombie_commits_first(self, batch_no, op, key):  # type: ignore[no-untyped-def]
        if batch_no == gone:
            with state_engine.begin() as conn:
                conn.execute(delete(p).where(p.c.batch_no == gone))
                conn.execute(delete(b).where(b.c.batch_no == gone))
        return listed(self, batch_no, op, key)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Pusher, "_push_one", zombie_commits_first)
        runner.push(plan.sync_id, "memory", "t/1")
    assert len(store.requests) == 4 and all(rows for _, _, rows in store.requests)
    assert pending_batches(state_engine) == 0


def _planned(runner: AudienceRunner, holder: str) -> tuple[int, list[tuple[int, str, str]]]:
    run_id = runner.start(holder, AS_OF)
    runner.stage(run_id, holder)
    plan = runner.plan(run_id, "memory", holder)
    with runner.engine.connect() as conn:
        t = state.batch
        batches = conn.execute(select(t.c.batch_no, t.c.op, t.c.idempotency_key).order_by(t.c.batch_no)).all()
    return plan.sync_id, [tuple(r) for r in batches]


def _acked(engine) -> tuple[set[str], int]:
    """(the acknowledged keys, the counter every commit keeps)."""
    with engine.connect() as conn:
        keys = set(conn.execute(select(state.ack.c.member_key).where(state.ack.c.rejected.is_(False))).scalars())
        return keys, push_step.acked_count(conn, AUD, "memory")


def test_a_batch_pushed_by_two_workers_is_committed_once(runner, store, state_engine):
    """A zombie task and its retry both pushed batch 0 under its key; the second commit changes nothing
    (it used to delete the acknowledged rows the first one had just written)."""
    sync_id, batches = _planned(runner, "t/1")
    batch_no, op, key = batches[0]
    a_worker = Pusher(state_engine, AUD, "memory", runner.destination("memory"))
    b_worker = Pusher(state_engine, AUD, "memory", runner.destination("memory"))
    pushed_a = a_worker._push_one(batch_no, Op(op), key)
    pushed_b = b_worker._push_one(batch_no, Op(op), key)
    assert pushed_a is not None and pushed_b is not None
    result_a, result_b = push_step.PushResult(), push_step.PushResult()
    a_worker._commit(sync_id, batch_no, Op(op), key, *pushed_a, result_a)
    b_worker._commit(sync_id, batch_no, Op(op), key, *pushed_b, result_b)
    rows = {r.member_key for r in pushed_a[0]}
    assert _acked(state_engine) == (rows, len(rows))
    assert (result_a.added, result_b.added, result_b.batches) == (len(rows), 0, 0)


def test_a_worker_of_an_earlier_plan_pushes_nothing_of_the_next_plan(runner, store, state_engine, people):
    """Batch numbers start at 0 with every plan: a leftover worker holding batch 0 of the plan before
    must neither push the new batch 0 under its old key and operation nor commit it."""
    runner.run("t/1", AS_OF)
    with state_engine.connect() as conn:
        first_sync = conn.scalar(select(func.max(state.sync.c.id)))
    assert pending_batches(state_engine) == 0
    people.set(MEMBERS[2:])  # two members leave: the next plan's batch 0 removes them
    _, new = _planned(runner, "t/2")
    old_no, old_op, old_key = 0, "add", idempotency_key(AUD, "memory", first_sync, 0, "0" * 16)  # batch 0 of a plan
    new_no, new_op, new_key = new[0]
    assert (old_no, old_op, new_op) == (new_no, "add", "remove") and old_key != new_key
    requests = len(store.requests)

    leftover = Pusher(state_engine, AUD, "memory", runner.destination("memory"))
    assert leftover._push_one(old_no, Op(old_op), old_key) is None
    assert len(store.requests) == requests  # nothing sent
    before = _acked(state_engine)
    stale = ([MemberRow(m["customer_id"], *[None] * 5) for m in MEMBERS[:2]], BatchResult())
    leftover._commit(0, old_no, Op(old_op), old_key, *stale, push_step.PushResult())
    assert _acked(state_engine) == before and pending_batches(state_engine) == len(new)


def test_a_refused_removal_of_an_old_identity_holds_back_the_new_one(runner, store, state_engine, people):
    """The vendor refuses to remove a member's old identity: the old one stays acknowledged (the vendor
    still holds it) and the new one is not sent, so the next run removes the old and adds the new. (The
    add used to be committed over the old identity, which was then never removed.)"""
    runner.run("t/1", AS_OF)
    changed = [dict(m) for m in MEMBERS]
    changed[0]["email"] = "moved.house@example.com"
    people.set(changed)
    old_hash, new_hash = (sha256_hex(MEMBERS[0]["email"]), sha256_hex(changed[0]["email"]))
    store.refuse_remove["c000"] = "member locked"

    def acked_hash() -> str | None:
        with state_engine.connect() as conn:
            return conn.scalar(select(state.ack.c.email_sha256).where(state.ack.c.member_key == "c000"))

    sent = len(store.requests)
    runner.run("t/2", AS_OF)
    second = store.requests[sent:]
    assert [(op, [r.member_key for r in rows]) for op, _, rows in second] == [("remove", ["c000"])]
    assert acked_hash() == old_hash and pending_batches(state_engine) == 0

    del store.refuse_remove["c000"]
    sent = len(store.requests)
    runner.run("t/3", AS_OF)
    third = [(op, [(r.member_key, r.email_sha256) for r in rows]) for op, _, rows in store.requests[sent:]]
    assert third == [("remove", [("c000", old_hash)]), ("add", [("c000", new_hash)])]
    assert acked_hash() == new_hash


def test_every_removal_commits_before_the_first_add_is_read(runner, store, state_engine, people, monkeypatch):
    """On Postgres a commit overlaps the next push. The last remove batch's commit is held until the
    drain either waits for it or has pushed the next batch: without the wait, the add of the member
    whose removal was refused would be read and sent before the commit withdrew it."""
    runner.run("t/1", AS_OF)
    changed = [dict(m) for m in MEMBERS]
    changed[0]["email"] = "moved.house@example.com"
    people.set(changed)
    store.refuse_remove["c000"] = "member locked"
    overlapped = state_engine.dialect.name == "postgresql"
    release = threading.Event()
    push_one, commit, wait = Pusher._push_one, Pusher._commit, push_step._Pipeline.wait

    def pushed_then_release(self, batch_no, op, key):  # type: ignore[no-untyped-def]
        try:
            return push_one(self, batch_no, op, key)
        finally:
            if op is Op.ADD:
                release.set()

    def held_commit(self, sync_id, batch_no, op, *args):  # type: ignore[no-untyped-def]
        if overlapped and op is Op.REMOVE:
            assert release.wait(timeout=30), "neither a wait nor a next push came"
        commit(self, sync_id, batch_no, op, *args)

    def waiting(self):  # type: ignore[no-untyped-def]
        release.set()
        wait(self)

    monkeypatch.setattr(Pusher, "_push_one", pushed_then_release)
    monkeypatch.setattr(Pusher, "_commit", held_commit)
    monkeypatch.setattr(push_step._Pipeline, "wait", waiting)
    sent = len(store.requests)
    runner.run("t/2", AS_OF)
    assert [op for op, _, _ in store.requests[sent:]] == ["remove"]


def test_a_full_resync_plans_removes_then_adds_then_refreshes(runner, store, state_engine, people):
    """Members acknowledged exactly as desired are re-sent as refreshes, after every remove and add; a
    changed identity is still remove-old then add-new. The memory destination takes a refresh as an add."""
    runner.run("t/1", AS_OF)
    changed = [dict(m) for m in MEMBERS[1:]] + [{"customer_id": "c100", "email": "new@example.com"}]
    changed[0]["email"] = "moved.house@example.com"  # c001
    people.set(changed)  # c000 leaves, c001 changes identity, c100 joins
    run_id = runner.start("t/2", AS_OF)
    runner.stage(run_id, "t/2")
    plan = runner.plan(run_id, "memory", "t/2", mode="full_resync")
    p = state.pending
    with state_engine.connect() as conn:
        order = (p.c.batch_no, p.c.member_key)
        planned = conn.execute(select(p.c.batch_no, p.c.op, p.c.member_key).order_by(*order)).all()
    ops = [op for _, op, _ in planned]
    assert ops == sorted(ops, key=["remove", "add", "refresh"].index)  # batch order is remove, add, refresh
    assert {(op, k) for _, op, k in planned if op != "refresh"} == {
        ("remove", "c000"),
        ("remove", "c001"),
        ("add", "c001"),
        ("add", "c100"),
    }
    assert {k for _, op, k in planned if op == "refresh"} == {m["customer_id"] for m in changed} - {"c001", "c100"}
    assert plan.adds == len(changed)  # a full resync re-sends everyone desired
    sent = len(store.requests)
    runner.push(plan.sync_id, "memory", "t/2")
    assert {op for op, _, _ in store.requests[sent:]} == {"remove", "add"}  # the refreshes went out as adds
    assert set(store.audience("aud-1")) == {m["customer_id"] for m in changed}
    assert _acked(state_engine) == ({m["customer_id"] for m in changed}, len(changed))


def test_a_drain_renews_its_lease_and_stops_once_another_run_took_it(runner, store, state_engine, monkeypatch):
    """The heartbeat renews the run's lease between batches; a run whose audience was taken over (its
    lease expired and another run acquired it) pushes no further batch."""
    sync_id, batches = _planned(runner, "t/1")
    push = MemoryDestination.push

    def taken_over_after_the_second(self, op, rows, key):  # type: ignore[no-untyped-def]
        result = push(self, op, rows, key)
        if len(store.requests) == 2:
            with state_engine.begin() as conn:
                conn.execute(state.lease.update().values(holder="t/other"))
        return result

    monkeypatch.setattr(MemoryDestination, "push", taken_over_after_the_second)
    beats = []
    heartbeat = runner._heartbeat("t/1")

    def beating() -> None:
        beats.append(len(store.requests))
        heartbeat()

    pusher = Pusher(state_engine, AUD, "memory", runner.destination("memory"))
    with pytest.raises(LeaseHeld, match="t/other"):
        pusher.drain(sync_id, push_step.PushResult(), heartbeat=beating, beat_every=0)
    assert beats == [0, 1, 2] and len(store.requests) == 2 and len(batches) == 5
    assert pending_batches(state_engine) == 3  # the two pushed batches committed; the rest wait for the new holder


def test_two_installations_sharing_a_vendor_account_never_present_the_same_key(
    runner, store, state_engine, people, tmp_path
):
    """Staging and production (two state databases) sync the same audience name into two lists of one
    vendor account that dedupes by idempotency key. Their sync and batch numbers are the same; keys
    derived from them alone made the vendor answer the second installation from the first one's
    stored responses, and its list stayed empty while state said acknowledged."""
    runner.run("t/1", AS_OF)
    write_audience(
        tmp_path / "other",
        AUD,
        AUDIENCE_YAML.replace("{type: memory, batch_size: 2}", "{type: memory, batch_size: 2, audience_id: aud-2}"),
    )
    other_state = engine_for(ConnectionInfo("state", "sqlite", host=str(tmp_path / "other-install.db")))
    state.ensure_schema(other_state)
    other = AudienceRunner(other_state, load_audiences(tmp_path / "other"), AUD, runner.resolve)
    other.run("t/1", AS_OF)
    want = {m["customer_id"] for m in MEMBERS}
    assert set(store.audience("aud-1")) == set(store.audience("aud-2")) == want
    assert max(store.applied_keys.values()) == 1 and len(store.applied_keys) == 10


def test_a_replan_with_the_same_sync_and_batch_numbers_draws_new_keys(runner, store, state_engine):
    """A restored backup plans again under the sync id it planned before: the random part, drawn when
    the plan is written and stored with the batch, makes the keys differ; the push presents the stored ones."""
    sync_id, first = _planned(runner, "t/1")
    with state_engine.begin() as conn:  # the plan is thrown away, as a restore of a backup before it would
        for t in (state.batch, state.pending, state.plan_mark):
            conn.execute(delete(t))
    Planner(state_engine, runner.cfg, runner.destination("memory"), "memory").plan(sync_id, guard=runner.cfg.guard)
    with state_engine.connect() as conn:
        second = conn.execute(select(state.batch.c.batch_no, state.batch.c.idempotency_key)).all()
    assert [no for no, _ in second] == [no for no, _, _ in first]
    assert not {k for _, k in second} & {k for _, _, k in first}
    runner.push(sync_id, "memory", "t/1")
    assert [key for _, key, _ in store.requests] == [k for _, k in second]


def _record_ended(monkeypatch) -> list[Op]:
    """The ops of every batch whose acknowledged rows were looked up to be replaced, as they happen."""
    ended: list[Op] = []
    end = Pusher._end_acknowledged

    def recording_end(self, conn, op, rows, outcome):  # type: ignore[no-untyped-def]
        ended.append(op)
        return end(self, conn, op, rows, outcome)

    monkeypatch.setattr(Pusher, "_end_acknowledged", recording_end)
    return ended


def test_a_first_sync_inserts_its_adds_without_deleting_first(runner, store, state_engine, monkeypatch):
    """Nothing is acknowledged yet, so no add batch looks up acknowledged rows to replace."""
    ended = _record_ended(monkeypatch)
    runner.run("t/1", AS_OF)
    assert ended == []
    assert _acked(state_engine) == ({m["customer_id"] for m in MEMBERS}, len(MEMBERS))


def test_an_add_meeting_an_acknowledged_row_replaces_it_and_later_adds_delete_first(
    runner, store, state_engine, monkeypatch
):
    """A full resync re-sends a member refused before: its add meets the remembered rejected row, which
    the insert alone would duplicate; the batch is committed by replacing it, and so is every add after it."""
    store.reject = {"c003": "invalid"}
    runner.run("t/1", AS_OF)
    assert _acked(state_engine) == ({m["customer_id"] for m in MEMBERS} - {"c003"}, len(MEMBERS) - 1)
    store.reject = {}
    ended = _record_ended(monkeypatch)
    run_id = runner.start("t/2", AS_OF)
    runner.stage(run_id, "t/2")
    plan = runner.plan(run_id, "memory", "t/2", mode="full_resync")
    runner.push(plan.sync_id, "memory", "t/2")
    assert ended == [Op.ADD] + [Op.REFRESH] * 4  # c003's add, then the refreshes of the other 8 members
    assert set(store.audience("aud-1")) == {m["customer_id"] for m in MEMBERS}
    assert _acked(state_engine) == ({m["customer_id"] for m in MEMBERS}, len(MEMBERS))
    with state_engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(state.ack)) == len(MEMBERS)


def test_batches_are_pushed_and_committed_with_the_heap_frozen_and_it_thaws_after(runner, monkeypatch):
    """Collections during a drain visit only what the drain made, not every object the task imported."""
    frozen: list[int] = []
    push, commit = MemoryDestination.push, Pusher._commit

    def pushing(self, op, rows, key):  # type: ignore[no-untyped-def]
        frozen.append(gc.get_freeze_count())
        return push(self, op, rows, key)

    def committing(self, *args):  # type: ignore[no-untyped-def]
        frozen.append(gc.get_freeze_count())  # on the pipeline's thread too, on Postgres
        return commit(self, *args)

    monkeypatch.setattr(MemoryDestination, "push", pushing)
    monkeypatch.setattr(Pusher, "_commit", committing)
    assert gc.get_freeze_count() == 0
    runner.run("t/1", AS_OF)
    assert len(frozen) == 2 * 5 and min(frozen) > 1000  # every push and commit: at least the imported modules
    assert gc.get_freeze_count() == 0
