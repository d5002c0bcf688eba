"""The planner's plan of a destination that holds nobody yet, against the full join it stands in for.

Every test runs on SQLite and on the real Postgres, with the shared test audience: a 20% holdout, an
excluded audience, members without any identifier, and a memory destination beside a warehouse one
that holds the holdout group too.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import delete, insert, select

from data_out import state
from data_out.config import load_audiences
from data_out.destinations.base import IDENTITY_COLUMNS
from data_out.engine import shards
from data_out.engine.plan import Planner
from data_out.engine.runner import AudienceRunner
from data_out.modes import SyncMode

AS_OF = dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC)
AUD = "test_targets_v1"


def members() -> list[dict[str, Any]]:
    """Sixty people: some buyers (excluded), some with a phone only, some with nothing to match on."""
    rows = []
    for i in range(60):
        row: dict[str, Any] = {"customer_id": f"c{i:03d}", "email": f"p{i}@example.com", "bought": int(i % 9 == 0)}
        if i % 5 == 0:
            row["email"], row["phone"] = None, f"+1 415 555 {1000 + i}"
        if i % 13 == 0:
            row["email"], row["phone"] = None, None
        rows.append(row)
    return rows


@pytest.fixture
def runner(monkeypatch, audiences_dir, resolver, state_engine, people) -> AudienceRunner:
    monkeypatch.setattr(shards, "ROWS_PER_SHARD", 7)  # a few dozen planned rows make several shards
    people.set(members())
    return AudienceRunner(state_engine, load_audiences(audiences_dir), AUD, resolver)


def planned(engine, label: str) -> tuple[list[tuple], list[tuple]]:
    """The destination's pending rows and batches, as comparable tuples (idempotency keys left out: random)."""
    p, b = state.pending, state.batch
    with engine.connect() as conn:
        rows = conn.execute(
            select(p.c.batch_no, p.c.op, p.c.member_key, *[p.c[c] for c in IDENTITY_COLUMNS])
            .where(p.c.audience == AUD, p.c.destination == label)
            .order_by(p.c.batch_no, p.c.member_key)
        ).all()
        batches = conn.execute(
            select(b.c.batch_no, b.c.op, b.c.rows, b.c.shard, b.c.shards)
            .where(b.c.audience == AUD, b.c.destination == label)
            .order_by(b.c.batch_no)
        ).all()
    return [tuple(r) for r in rows], [tuple(r) for r in batches]


def forget_plan(engine, label: str) -> None:
    """Undo a plan's writes, so that the same staged snapshot can be planned again."""
    with engine.begin() as conn:
        for t in (state.pending, state.batch, state.plan_mark):
            conn.execute(delete(t).where(t.c.audience == AUD, t.c.destination == label))


@pytest.mark.parametrize("label", ["memory", "warehouse"])
@pytest.mark.parametrize("mode", [SyncMode.INCREMENTAL, SyncMode.FULL_RESYNC])
def test_a_destination_holding_nobody_is_planned_as_the_full_join_would_plan_it(
    runner, state_engine, monkeypatch, label, mode
):
    run_id = runner.start("t/1", AS_OF)
    runner.stage(run_id, "t/1")
    sync_id = runner._open_sync(run_id, label, mode)  # noqa: SLF001
    dest = runner.destination(label)
    dest.settings.batch_size = 3  # several batches per shard: numbered in rounds

    joined: list[str] = []
    fill = Planner._fill_delta  # noqa: SLF001
    monkeypatch.setattr(Planner, "_fill_delta", lambda self, *a, **k: joined.append(label) or fill(self, *a, **k))
    direct = Planner(state_engine, runner.cfg, dest, label).plan(sync_id, guard=runner.cfg.guard, mode=mode)
    assert joined == []  # nothing acknowledged: the delta table was not built
    first = planned(state_engine, label)

    forget_plan(state_engine, label)
    monkeypatch.setattr(Planner, "_holds_any", lambda self, conn: True)
    full = Planner(state_engine, runner.cfg, dest, label).plan(sync_id, guard=runner.cfg.guard, mode=mode)
    assert joined == [label]
    assert first == planned(state_engine, label)
    figures = ("desired", "unmatchable", "acked", "adds", "removes", "changed", "batches", "shards", "refreshes")
    assert [getattr(direct, f) for f in figures] == [getattr(full, f) for f in figures]
    assert direct.adds > 20 and direct.shards > 1 and direct.batches > direct.shards  # the case is not trivial
    if label == "warehouse":  # it holds the holdout group too, flagged
        assert {r[-1] for r in first[0]} == {True, False}


def test_a_destination_holding_only_rejected_members_is_planned_through_the_join(runner, state_engine):
    """Rejected acknowledgements are remembered so they are not re-sent; only the join tells which to forget."""
    run_id = runner.start("t/1", AS_OF)
    runner.stage(run_id, "t/1")
    planner = Planner(state_engine, runner.cfg, runner.destination("memory"), "memory")
    a = state.ack
    with state_engine.begin() as conn:
        assert not planner._holds_any(conn)  # noqa: SLF001
        conn.execute(
            insert(a).values(
                audience=AUD, destination="memory", member_key="c001", rejected=True, acked_at=state.utcnow()
            )
        )
        assert planner._holds_any(conn)  # noqa: SLF001
