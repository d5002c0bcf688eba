"""Incremental plans: after the first plan, a destination diffs only the members changed since its mark,
and ends exactly where a full diff would, through joins, leaves, identity changes, exclusions flipping,
refused removals and rejected adds, on SQLite and Postgres."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from data_out import state
from data_out.config import load_audiences
from data_out.engine.holdout import is_held_out
from data_out.engine.plan import count_desired
from data_out.engine.runner import AudienceRunner, RunFailed
from tests.data_out.engine.test_runner import AS_OF, TARGETS, expected_memory, held, last_sync, person


def sync(audiences_dir: Path, resolver, engine: Engine, holder: str) -> AudienceRunner:
    runner = AudienceRunner(engine, load_audiences(audiences_dir), TARGETS, resolver)
    runner.run(holder, AS_OF)
    return runner


def counted(runner: AudienceRunner, destination: str) -> tuple[int, int]:
    """Desired and acknowledged members counted the slow way, to check the figures the plan read."""
    a = state.ack
    with runner.engine.connect() as conn, runner.destination_ctx(destination) as dest:
        desired = count_desired(conn, runner.cfg, dest)
        acked = conn.scalar(
            select(func.count()).where(a.c.audience == TARGETS, a.c.destination == destination, a.c.rejected.is_(False))
        )
    return desired, acked


def test_random_changes_converge_exactly_like_a_full_diff(audiences_dir, resolver, state_engine, people, store):
    rng = random.Random(7)
    rows = {i: person(i) for i in range(60)}
    people.set(list(rows.values()))
    sync(audiences_dir, resolver, state_engine, "t/0")
    assert held(store) == expected_memory(list(rows.values()))
    next_id = 1000
    refused: set[str] = set()  # rejected adds stay unsent until the member's identity changes
    for step in range(1, 9):
        store.reject.clear()
        for i in rng.sample(sorted(rows), 6):  # leave
            rows.pop(i)
            refused.discard(f"c{i:04d}")
        for _ in range(6):  # join
            rows[next_id] = person(next_id)
            next_id += 1
        store.reject[f"c{next_id - 1:04d}"] = "invalid email hash"  # the vendor refuses one of them
        refused.add(f"c{next_id - 1:04d}")
        for i in rng.sample(sorted(rows), 4):  # identity changes
            rows[i] = person(i, email=f"new.{step}.{i}@example.com")
            if i != next_id - 1:  # a new identity is tried again
                refused.discard(f"c{i:04d}")
        for i in rng.sample(sorted(rows), 3):  # exclusion flips, both ways
            rows[i] = {**rows[i], "bought": 0 if rows[i].get("bought") else 1}
        people.set(list(rows.values()))
        runner = sync(audiences_dir, resolver, state_engine, f"t/{step}")
        want = {k: v for k, v in expected_memory(list(rows.values())).items() if k not in refused}
        assert held(store) == want, f"step {step}"
        for destination in ("memory", "warehouse"):
            s = last_sync(state_engine, destination)
            assert s["status"] == "success"
            assert counted(runner, destination) == (s["desired"], s["acked_size"])
            assert 0 < s["diffed_keys"] <= 6 + 6 + 4 + 3, "an incremental plan over the changed members only"
    with state_engine.connect() as conn:
        s = state.sync
        marks = conn.execute(select(func.count()).select_from(state.plan_mark)).scalar()
        syncs = conn.execute(select(func.count()).where(s.c.audience == TARGETS, s.c.destination == "memory")).scalar()
    assert marks == 2 and syncs == 9


def test_a_refused_removal_is_planned_again_when_nothing_else_changed(
    audiences_dir, resolver, state_engine, people, store
):
    rows = [person(i) for i in range(30)]
    people.set(rows)
    sync(audiences_dir, resolver, state_engine, "t/1")
    gone = next(iter(held(store)))  # a member the destination holds
    store.refuse_remove[gone] = "#2650 member is locked"
    people.set([r for r in rows if r["customer_id"] != gone])
    sync(audiences_dir, resolver, state_engine, "t/2")
    assert gone in held(store)  # refused: still there, still acknowledged
    store.refuse_remove.clear()
    sync(audiences_dir, resolver, state_engine, "t/3")  # the source did not change at all
    assert gone not in held(store)
    assert last_sync(state_engine)["diffed_keys"] == 1  # the refused removal, nothing else
    assert held(store) == expected_memory([r for r in rows if r["customer_id"] != gone])


def test_changed_keys_are_recorded_only_while_a_mark_needs_them(audiences_dir, resolver, state_engine, people, store):
    rows = [person(i) for i in range(30)]
    people.set(rows)
    sync(audiences_dir, resolver, state_engine, "t/1")
    c, d = state.change, state.dirty
    with state_engine.connect() as conn:
        first = conn.execute(select(c.c.recorded, c.c.key_count).where(c.c.audience == TARGETS)).all()
    assert first == [(False, 0)]  # no destination had a mark yet: nothing to record for
    people.set(rows[:-2] + [person(500)])
    sync(audiences_dir, resolver, state_engine, "t/2")
    people.set(rows[:-2] + [person(500)])
    sync(audiences_dir, resolver, state_engine, "t/3")
    with state_engine.connect() as conn:
        mine = select(c.c.recorded, c.c.key_count).where(c.c.audience == TARGETS)
        changes = conn.execute(mine.order_by(c.c.id)).all()
        left = conn.execute(select(func.count()).select_from(d).where(d.c.audience == TARGETS)).scalar()
    # run 2 recorded its 3 keys; both marks passed them in run 2 and the stage of run 3 collected them
    assert changes[-2:] == [(True, 3), (True, 0)]
    assert left == 0


def test_a_new_shape_falls_back_to_a_full_diff(audiences_dir, resolver, state_engine, people, store, tmp_path):
    rows = [person(i) for i in range(40)]
    people.set(rows)
    sync(audiences_dir, resolver, state_engine, "t/1")
    path = audiences_dir / f"{TARGETS}.yaml"
    path.write_text(path.read_text().replace("percent: 20", "percent: 50"))
    sync(audiences_dir, resolver, state_engine, "t/2")  # same salt: no row changed, the holdout grew
    assert last_sync(state_engine)["diffed_keys"] is None  # a full diff
    want = {k: v for k, v in expected_memory(rows).items() if not is_held_out("test-salt", k, 50)}
    assert held(store) == want
    assert len(want) < len(expected_memory(rows))
    sync(audiences_dir, resolver, state_engine, "t/3")
    assert last_sync(state_engine)["diffed_keys"] == 0  # incremental again, and nothing changed


def test_a_failed_retirement_leaves_no_mark_behind(audiences_dir, resolver, state_engine, people, store):
    """A retirement empties the destination; if it fails half way and the audience syncs again, the next
    plan must be a full diff, or everyone the retirement removed and who did not change stays removed."""
    rows = [person(i) for i in range(30)]
    people.set(rows)
    runner = sync(audiences_dir, resolver, state_engine, "t/1")
    store.fail_before_apply.add(len(store.requests) + 2)  # the retirement's second removal request fails
    with pytest.raises(RunFailed):
        runner.retire("t/retire")
    assert 0 < len(held(store)) < len(expected_memory(rows))
    sync(audiences_dir, resolver, state_engine, "t/2")  # the audience is still wanted after all
    assert last_sync(state_engine)["diffed_keys"] is None
    assert held(store) == expected_memory(rows)


def test_a_key_is_recorded_once_per_change_however_often_it_comes(state_engine):
    from sqlalchemy import literal, union_all

    from data_out.engine import changes

    def keys(*ks: str | None):
        return union_all(*[select(literal(k).label("k")) for k in ks])

    with state_engine.begin() as conn:
        change = changes.open_change(conn, "a_v1", None, "stage", True)
        other = changes.open_change(conn, "a_v1", None, "stage", True)
        changes.add_keys(conn, "a_v1", change, keys("k1", "k2", "k2", None))
        changes.add_keys(conn, "a_v1", change, keys("k2", "k3"))  # k2 again: already recorded
        changes.add_keys(conn, "a_v1", other, keys("k1"))  # another change records its own
        d, c = state.dirty, state.change
        mine = select(d.c.member_key).where(d.c.change_id == change).order_by(d.c.member_key)
        assert conn.execute(mine).scalars().all() == ["k1", "k2", "k3"]
        assert conn.scalar(select(c.c.key_count).where(c.c.id == change)) == 3
        assert conn.scalar(select(c.c.key_count).where(c.c.id == other)) == 1


def test_a_key_is_gone_only_when_every_change_since_the_mark_says_it_left(state_engine):
    """The plan skips the snapshot lookup of a gone key (``plan.Planner._fill_delta``), so gone must mean
    "not in the snapshot now": a member who left and came back, or whose record does not say, is looked up."""
    from sqlalchemy import literal, union_all

    from data_out.engine import changes

    def keys(*pairs: tuple[str, bool]):
        return union_all(*[select(literal(k).label("k"), literal(g).label("gone")) for k, g in pairs])

    with state_engine.begin() as conn:
        changes.set_mark(conn, "a_v1", "dest", 0, "shape", None)
        first = changes.open_change(conn, "a_v1", None, "stage", True)
        changes.add_keys(conn, "a_v1", first, keys(("left", True), ("back", True), ("joined", False)))
        second = changes.open_change(conn, "a_v1", None, "stage", True)
        changes.add_keys(conn, "a_v1", second, keys(("back", False), ("later", True), ("flipped", True)))
        # the same change also records an exclusion that flipped, without saying whether the member left
        changes.add_keys(conn, "a_v1", second, select(literal("flipped").label("k")))
        dirty = changes.dirty_keys(conn, "a_v1", "dest", "shape", second)
        assert dirty is not None
        gone = {key: bool(flag) for key, flag in conn.execute(dirty)}
    assert gone == {"left": True, "back": False, "joined": False, "later": True, "flipped": False}
