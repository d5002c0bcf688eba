"""Customer Match memberships expire 540 days after a member's last upload: Data Out refreshes them first.

The Data Manager stand-in expires members on its own clock; the state database's clock (``state.utcnow``)
is the same one. Daily runs over 600 simulated days keep the list complete, refreshing a day's share at
a time, without ever counting a refresh as an add.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import pytest
from sqlalchemy import func, select

from data_out import state
from data_out.config import load_audiences
from data_out.connections import ConnectionInfo, engine_for
from data_out.destinations.google.settings import CUSTOMER_MATCH_MAX_LIFETIME_DAYS, GoogleSettings
from data_out.engine.runner import AudienceRunner
from sandbox.standins.base import Running
from sandbox.standins.google_dm import GoogleDataManagerStandIn
from tests.conftest import People
from tests.data_out.destinations.cases import AUDIENCE, CASES
from tests.data_out.destinations.test_contract import Env, person

START = dt.datetime(2026, 1, 5, 2, tzinfo=dt.UTC)
LIST = ("1234567890", "555")


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> dt.datetime:
        return self.now


def test_the_list_stays_complete_over_600_days_of_daily_runs(tmp_path: Path, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(state, "utcnow", clock)
    standin = GoogleDataManagerStandIn(clock=clock)
    engine = engine_for(ConnectionInfo("db", "sqlite", host=str(tmp_path / "db.sqlite")))
    state.ensure_schema(engine)
    rows = [person(i) for i in range(60)]
    with Running(standin) as running:
        env = Env(CASES["google"], standin, running.url, tmp_path, People(engine), engine)
        env.write(batch_size=10)
        env.people.set(rows)
        want = env.expected(rows)
        runner = AudienceRunner(engine, load_audiences(tmp_path / "aud"), AUDIENCE, env.resolve)
        daily: list[int] = []
        for day in range(600):
            clock.now = START + dt.timedelta(days=day)
            runner.run(f"daily/{day}", clock.now)
            standin.expire()
            assert standin.lists[LIST] == want, f"day {day}: {len(want - standin.lists[LIST])} members expired"
            with engine.connect() as conn:
                s = state.sync
                daily.append(conn.scalar(select(s.c.refreshed).order_by(s.c.id.desc()).limit(1)) or 0)
        with engine.connect() as conn:
            added = conn.scalar(select(func.sum(state.sync.c.added)))
    budget = math.ceil(len(want) / (CUSTOMER_MATCH_MAX_LIFETIME_DAYS * 0.2 / 2))  # a day's share
    assert added == len(want)  # refreshes are never counted as adds
    assert sum(daily) >= len(want) and max(daily) <= budget  # everyone refreshed, never all at once
    assert all(n == 0 for n in daily[: int(CUSTOMER_MATCH_MAX_LIFETIME_DAYS * 0.8)])  # none before they are due


def test_without_refreshes_google_would_have_emptied_the_list(tmp_path: Path):
    """The stand-in's own expiry, on its own: members not uploaded again are gone after 540 days."""
    clock = Clock()
    standin = GoogleDataManagerStandIn(clock=clock)
    member = frozenset({("emailAddress", "a" * 64)})
    standin.lists[LIST] = {member}
    standin.expire()  # first seen now
    clock.now = START + dt.timedelta(days=539)
    standin.expire()
    assert standin.lists[LIST] == {member}
    clock.now = START + dt.timedelta(days=540)
    standin.expire()
    assert standin.lists[LIST] == set()


@pytest.mark.parametrize("days", [0, 1, 541, 10_000])
def test_a_membership_lifetime_beyond_googles_or_too_short_is_refused(days: int):
    settings = {"type": "google", **CASES["google"].settings, "membership_lifetime_days": days}
    with pytest.raises(ValueError, match="membership_lifetime_days"):
        GoogleSettings.model_validate(settings)


def test_a_shorter_list_lifetime_is_refreshed_within_it():
    from data_out.destinations.google.destination import GoogleDestination
    from data_out.engine.plan import refresh_policy

    settings = GoogleSettings.model_validate(
        {"type": "google", **CASES["google"].settings, "membership_lifetime_days": 90, "refresh_at_share": 0.9}
    )
    dest = GoogleDestination.__new__(GoogleDestination)
    dest.settings = settings
    policy = refresh_policy(dest)
    assert policy is not None and policy.lifetime_days == 90 and policy.due_after == dt.timedelta(days=81)
