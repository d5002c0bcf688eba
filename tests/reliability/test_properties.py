"""Property-based: random snapshot sequences, holdout settings and failure points always converge.

After the final successful run the destination holds exactly the desired members minus the holdout,
and no member's holdout assignment ever changed along the way.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from data_out import state
from data_out.config import load_audiences
from data_out.connections import ConnectionInfo, engine_for
from data_out.engine.holdout import is_held_out
from data_out.engine.runner import AudienceRunner, RunFailed
from data_out.identity import sha256_hex
from data_out.state import ensure_schema
from tests.conftest import People, write_audience
from tests.support.memory_destination import STORE
from tests.support.strategies import failure, snapshot


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    snapshots=st.lists(st.tuples(snapshot, failure), min_size=1, max_size=4), percent=st.sampled_from([0, 10, 25, 50])
)
def test_any_sequence_converges_and_holdouts_never_move(snapshots, percent):
    STORE.__init__()  # type: ignore[misc]
    with tempfile.TemporaryDirectory() as tmp:
        db = ConnectionInfo("db", "sqlite", host=str(Path(tmp) / "db.sqlite"))
        engine = engine_for(db)
        ensure_schema(engine)
        people = People(engine)
        write_audience(
            Path(tmp) / "aud",
            "prop_v1",
            f"""
            name: prop_v1
            owner: tests
            purpose: properties
            source: {{conn_id: db, query: "SELECT customer_id, email, phone FROM people"}}
            holdout: {{percent: {percent}, salt: prop-salt}}
            destinations: [{{type: memory, batch_size: 3}}]
            guard: {{max_removal_share: 1, allow_empty_source: true}}
        """,
        )
        runner = AudienceRunner(
            engine,
            load_audiences(Path(tmp) / "aud"),
            "prop_v1",
            lambda c: db if c == "db" else ConnectionInfo(c, "memory"),
        )
        buckets: dict[str, int] = {}
        for i, (members, fail) in enumerate(snapshots):
            people.set([{"customer_id": k, "email": f"{k}.{v}@example.com"} for k, v in members.items()])
            if fail:
                getattr(STORE, fail[0]).add(len(STORE.requests) + fail[1])
                with contextlib.suppress(RunFailed):
                    runner.run(f"p/{i}", dt.datetime(2026, 11, 1, tzinfo=dt.UTC))
                STORE.fail_before_apply.clear()
                STORE.fail_after_apply.clear()
            runner.run(f"p/{i}", dt.datetime(2026, 11, 1, tzinfo=dt.UTC))  # the retry, or the only run
            with engine.connect() as conn:
                for key, bucket in conn.execute(select(state.member.c.member_key, state.member.c.bucket)):
                    assert buckets.setdefault(key, bucket) == bucket, f"{key} changed holdout bucket"
            want = {k: f"{k}.{v}@example.com" for k, v in members.items() if not is_held_out("prop-salt", k, percent)}
            held = {k: row.email_sha256 for k, row in STORE.audience("aud-1").items()}
            assert held == {k: sha256_hex(e) for k, e in want.items()}
        assert all(n == 1 for n in STORE.applied_keys.values())
