"""Figures carried forward from run to run equal a full recount of the snapshot, and are only carried
when that is sound (no exclusions, the same SQL counting)."""

from __future__ import annotations

import random

import pytest
from sqlalchemy import Engine, text

from data_out.connections import ConnectionInfo, engine_for
from data_out.engine import figures
from data_out.engine.stage import StageStats
from data_out.state import ensure_schema
from tests.data_out.engine.test_stage_sql import config, load, stage

pytestmark = pytest.mark.postgres
REAL_COUNT = figures.count


@pytest.fixture
def engine(pg_database: ConnectionInfo) -> Engine:
    e = engine_for(pg_database)
    ensure_schema(e)
    return e


def person(i: int, rng: random.Random) -> tuple:
    email = rng.choice([f"p{i}@example.com", f" P{i}@Example.com ", None, "not-an-email"])
    phone = rng.choice([f"+1 415 555 {i % 10000:04d}", None, "12"])
    return (f"c{i}", email, phone, rng.choice([i, None]))


def recount(engine: Engine, cfg) -> list[int]:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return REAL_COUNT(conn, cfg)


def as_values(stats: StageStats, cfg) -> list[int]:  # type: ignore[no-untyped-def]
    issues = [stats.identifier_issues.get(f"{c.removesuffix('_issue')}_{i}", 0) for c, i in figures.ISSUES]
    reasons = [stats.identifier_issues.get(f"reason:{code}", 0) for code in figures.REASON_CODES]
    desired = [n for d in cfg.destinations for n in stats.desired[d.label]]
    return [stats.members, stats.excluded, stats.held_out, *issues, *reasons, *desired]


def test_carried_figures_equal_a_recount_run_after_run(engine, monkeypatch):
    cfg = config(destinations=[{"type": "warehouse"}, {"type": "meta", "audience_id": "1", "include": "targeted"}])
    rng = random.Random(7)
    people = {i: person(i, rng) for i in range(300)}
    counted = []
    monkeypatch.setattr(figures, "count", lambda conn, c: counted.append(1) or REAL_COUNT(conn, c))
    for run_id in range(1, 7):
        load(engine, list(people.values()))
        stats = stage(engine, cfg, run_id)
        assert stats.path == "database"
        assert as_values(stats, cfg) == recount(engine, cfg), f"run {run_id}"
        for i in rng.sample(sorted(people), 40):  # leave
            del people[i]
        for i in rng.sample(sorted(people), 30):  # identifiers change
            people[i] = person(i, rng)
        for i in range(run_id * 1000, run_id * 1000 + 45):  # join
            people[i] = person(i, rng)
    assert len(counted) == 1  # the first run counted; every later one carried its figures forward


def test_figures_are_counted_again_when_carrying_them_would_be_wrong(engine, monkeypatch):
    rng = random.Random(3)
    rows = [person(i, rng) for i in range(50)]
    counted = []
    monkeypatch.setattr(figures, "count", lambda conn, c: counted.append(1) or REAL_COUNT(conn, c))
    load(engine, rows)
    stage(engine, config(), 1)
    load(engine, rows[5:])
    stage(engine, config(holdout={"percent": 30, "salt": "salt-1"}), 2)  # a new percent: other SQL counts
    assert len(counted) == 2
    with engine.begin() as conn:  # a snapshot written behind staging's back: its figures are gone too
        conn.execute(text("DELETE FROM do_snapshot"))
    stats = stage(engine, config(holdout={"percent": 30, "salt": "salt-1"}), 3)
    assert len(counted) == 3 and stats.members == 45
