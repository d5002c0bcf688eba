"""Members of a destination whose memberships expire are re-sent before they do, a day's share at a time.

The memory destination is given a 40-day membership lifetime: members are due after 32 days (80%),
spread over 4 days (half the 8 days left), so at most ``ceil(acked / 4)`` a day; members older than
38 days go whatever the day's share. Time is a controllable clock (``state.utcnow``). Every test runs on
SQLite and on the real Postgres.
"""

from __future__ import annotations

import datetime as dt
import math

import pytest
from sqlalchemy import func, select

from data_out import state
from data_out.config import load_audiences
from data_out.engine.plan import refresh_policy
from data_out.engine.runner import AudienceRunner
from tests.conftest import write_audience
from tests.support.memory_destination import MemoryDestination

START = dt.datetime(2026, 1, 5, 3, tzinfo=dt.UTC)
AUD = "refresh_v1"
LIFETIME = 40
MEMBERS = [{"customer_id": f"c{i:03d}", "email": f"p{i}@example.com"} for i in range(30)]
BUDGET = math.ceil(len(MEMBERS) / 4)  # a day's share: spread over 4 days


class Clock:
    def __init__(self) -> None:
        self.now = START

    def days(self, n: float) -> dt.datetime:
        self.now = START + dt.timedelta(days=n)
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(state, "utcnow", lambda: c.now)
    return c


@pytest.fixture
def expiring(monkeypatch) -> None:
    monkeypatch.setattr(MemoryDestination, "membership_lifetime_days", LIFETIME)


@pytest.fixture
def runner(tmp_path, resolver, state_engine, people) -> AudienceRunner:
    write_audience(
        tmp_path / "aud",
        AUD,
        f"""
        name: {AUD}
        owner: tests
        purpose: memberships that expire
        source: {{conn_id: db, query: "SELECT customer_id, email, phone FROM people WHERE in_audience = 1"}}
        destinations: [{{type: memory}}]
        """,
    )
    people.set(MEMBERS)
    return AudienceRunner(state_engine, load_audiences(tmp_path / "aud"), AUD, resolver)


def ages(engine) -> dict[str, dt.datetime]:
    a = state.ack
    with engine.connect() as conn:
        rows = conn.execute(select(a.c.member_key, a.c.acked_at)).all()
    return {k: at if at.tzinfo else at.replace(tzinfo=dt.UTC) for k, at in rows}


def last_sync(engine) -> dict:
    s = state.sync
    with engine.connect() as conn:
        return dict(conn.execute(select(s).order_by(s.c.id.desc()).limit(1)).mappings().one())


def sent_since(store, n: int) -> list[tuple[str, str]]:
    return [(op, r.member_key) for op, _, rows in store.requests[n:] for r in rows]


def test_the_policy_follows_the_lifetime_and_the_share(monkeypatch):
    dest = MemoryDestination.__new__(MemoryDestination)
    dest.settings = type("Settings", (), {"refresh_at_share": 0.9, "membership_lifetime_days": None})()
    assert refresh_policy(dest) is None  # no lifetime: never refreshed
    monkeypatch.setattr(MemoryDestination, "membership_lifetime_days", 540)
    policy = refresh_policy(dest)
    assert policy is not None
    assert policy.due_after == dt.timedelta(days=486) and policy.spread_days == 27
    assert policy.urgent_after == dt.timedelta(days=526.5) and policy.daily_budget(1000) == 38


def test_members_acknowledged_long_ago_are_refreshed_a_days_share_at_a_time(
    runner, store, state_engine, clock, expiring
):
    runner.run("t/0", clock.now)
    first = ages(state_engine)
    assert set(first) == {m["customer_id"] for m in MEMBERS}

    clock.days(31)  # not due yet
    n = len(store.requests)
    runner.run("t/31", clock.now)
    assert store.requests[n:] == [] and last_sync(state_engine)["planned_refreshes"] == 0

    clock.days(33)
    n = len(store.requests)
    runner.run("t/33", clock.now)
    sync = last_sync(state_engine)
    sent = sent_since(store, n)
    # the oldest first (all the same age: in key order), as adds the list already holds, counted apart
    assert sent == [("add", m["customer_id"]) for m in MEMBERS[:BUDGET]]
    assert (sync["planned_refreshes"], sync["refreshed"], sync["added"], sync["planned_adds"]) == (BUDGET, BUDGET, 0, 0)
    renewed = ages(state_engine)
    assert {k for k in renewed if renewed[k] == clock.now} == {k for _, k in sent}
    assert {k for k in renewed if renewed[k] == first[k]} == set(first) - {k for _, k in sent}

    clock.now += dt.timedelta(hours=6)  # a second run the same day: the day's share is spent
    n = len(store.requests)
    runner.run("t/33b", clock.now)
    assert store.requests[n:] == [] and last_sync(state_engine)["planned_refreshes"] == 0

    clock.days(34)  # the next day: the next share, none sent twice
    n = len(store.requests)
    runner.run("t/34", clock.now)
    assert sent_since(store, n) == [("add", m["customer_id"]) for m in MEMBERS[BUDGET : 2 * BUDGET]]
    with state_engine.connect() as conn:
        assert conn.scalar(select(func.sum(state.sync.c.added))) == len(MEMBERS)  # the first sync's adds only
    assert set(store.audience("aud-1")) == {m["customer_id"] for m in MEMBERS}


def test_a_changed_member_is_sent_once_as_a_change_not_also_as_a_refresh(
    runner, store, state_engine, people, clock, expiring
):
    runner.run("t/0", clock.now)
    changed = [dict(m) for m in MEMBERS]
    changed[0]["email"] = "moved@example.com"  # c000, the first one due
    people.set(changed[:-1])  # and c029 leaves
    clock.days(33)
    n = len(store.requests)
    runner.run("t/33", clock.now)
    sent = sent_since(store, n)
    assert sorted(k for _, k in sent).count("c000") == 2  # remove old, add new: no refresh on top
    assert ("remove", "c029") in sent
    refreshed = [k for op, k in sent if op == "add" and k != "c000"]
    assert refreshed == [m["customer_id"] for m in MEMBERS[1 : 1 + BUDGET]]
    sync = last_sync(state_engine)
    assert (sync["added"], sync["removed"], sync["refreshed"]) == (1, 2, BUDGET)


def test_a_dry_run_previews_the_days_refreshes_and_sends_nothing(runner, store, state_engine, clock, expiring):
    runner.run("t/0", clock.now)
    clock.days(33)
    n = len(store.requests)
    runner.dry_run("t/dry", clock.now)
    sync = last_sync(state_engine)
    assert sync["preview"]["refreshes"] == BUDGET and sync["planned_refreshes"] is None
    assert store.requests[n:] == [] and set(ages(state_engine).values()) == {START}
    runner.run("t/33", clock.now)  # the preview spent none of the day's share
    assert last_sync(state_engine)["refreshed"] == BUDGET


def test_members_about_to_expire_go_whatever_the_days_share(runner, store, state_engine, clock, expiring):
    """Runs were missed: members in the last quarter before expiry are all refreshed in one run."""
    runner.run("t/0", clock.now)
    clock.days(39)
    runner.run("t/39", clock.now)
    assert last_sync(state_engine)["refreshed"] == len(MEMBERS)
    assert set(ages(state_engine).values()) == {clock.now}


def test_daily_runs_keep_every_member_within_its_lifetime(runner, store, state_engine, clock, expiring):
    """Two lifetimes of daily runs: nobody's acknowledgement gets older than the lifetime, and no day
    refreshes more than its share once the first wave has spread out."""
    runner.run("t/0", clock.now)
    refreshed: list[int] = []
    for day in range(1, 2 * LIFETIME + 1):
        clock.days(day)
        runner.run(f"t/{day}", clock.now)
        refreshed.append(last_sync(state_engine)["refreshed"] or 0)
        oldest = min(ages(state_engine).values())
        assert clock.now - oldest < dt.timedelta(days=LIFETIME * 0.95), day  # never reaches the urgent zone
    assert max(refreshed) <= BUDGET
    assert sum(refreshed) >= 2 * len(MEMBERS)  # every member refreshed at least twice
    with state_engine.connect() as conn:
        assert conn.scalar(select(func.sum(state.sync.c.added))) == len(MEMBERS)


def test_a_destination_whose_members_never_expire_is_never_refreshed(runner, store, state_engine, clock):
    runner.run("t/0", clock.now)
    clock.days(2000)
    n = len(store.requests)
    runner.run("t/2000", clock.now)
    assert store.requests[n:] == [] and last_sync(state_engine)["planned_refreshes"] == 0
    assert set(ages(state_engine).values()) == {START}
