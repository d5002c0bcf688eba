"""Every HTTP destination against its stand-in over real HTTP on loopback.

Adds, removes, batch splitting, replace / full resync, rate limits, transient faults, fatal errors,
partial rejects, and convergence after a failure half way with no member's change applied twice as the
vendor counts it (``applied_once``): the stand-ins apply a re-sent request again, as the vendors do.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from data_out import state
from data_out.config import load_audiences
from data_out.connections import ConnectionInfo, engine_for
from data_out.destinations.base import DestinationError, MemberRow, Op
from data_out.engine.holdout import is_held_out
from data_out.engine.runner import AudienceRunner, RunFailed
from data_out.state import ensure_schema
from sandbox.standins.base import Running, StandIn
from tests.conftest import People, write_audience
from tests.data_out.destinations.cases import AUDIENCE, CASES, Case

AS_OF = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
SALT = "dest-salt"


def person(i: int, **kw: object) -> dict:
    return {
        "customer_id": f"c{i:04d}",
        "email": f" Person.{i}@Example.com",
        "phone": f"(202) 555-{i % 10000:04d}",
        **kw,
    }


@dataclass
class Env:
    case: Case
    standin: StandIn
    url: str
    tmp: Path
    people: People
    state_engine: object
    secret: str | None = None

    def write(self, batch_size: int = 4, **extra_settings: object) -> None:
        settings = {"type": self.case.type, "batch_size": batch_size, **self.case.settings, **extra_settings}
        write_audience(
            self.tmp / "aud",
            AUDIENCE,
            f"""
            name: {AUDIENCE}
            owner: tests
            purpose: destination contract
            source:
              conn_id: db
              query: SELECT customer_id, email, phone FROM people WHERE in_audience = 1
            identifiers: {{email: email, phone: phone}}
            holdout: {{percent: 10, salt: {SALT}}}
            destinations:
              - {json.dumps(settings)}
        """,
        )

    def resolve(self, conn_id: str) -> ConnectionInfo:
        if conn_id == "db":
            return ConnectionInfo("db", "sqlite", host=str(self.tmp / "db.sqlite"))
        return self.case.connection(self.url, self.secret)

    def run(self, holder: str, mode: str = "incremental", override: str | None = None) -> int:
        runner = AudienceRunner(self.state_engine, load_audiences(self.tmp / "aud"), AUDIENCE, self.resolve)
        return runner.run(holder, AS_OF, override_reason=override, mode=mode)

    def expected(self, rows: list[dict]) -> set:
        return {
            self.case.ident(r) for r in rows if r.get("in_audience", 1) and not is_held_out(SALT, r["customer_id"], 10)
        }

    def held(self) -> set:
        with self.standin.lock:
            return self.case.held(self.standin)

    def last_sync(self) -> dict:
        s = state.sync
        with self.state_engine.connect() as conn:
            return dict(conn.execute(select(s).order_by(s.c.id.desc()).limit(1)).mappings().one())


def applied_once(env: Env) -> None:
    """No change applied twice, in the vendor's own terms.

    Only our webhook contract promises ``Idempotency-Key``: there each key is applied once. Segment
    dedupes by ``messageId``: each member enters or exits once per change. Meta, Google and TikTok
    audiences are sets: a re-sent add or remove is harmless, and the caller's comparison of what the
    stand-in holds with what is desired is the whole check.
    """
    s = env.standin
    if s.replays_idempotency_key:
        assert max(s.applied.values()) == 1
    if env.case.type == "segment":
        per_change = Counter((t["userId"], t["event"]) for t in s.tracks)  # type: ignore[attr-defined]
        assert per_change and max(per_change.values()) == 1


@pytest.fixture(params=sorted(CASES))
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    case = CASES[request.param]  # parametrised below, or narrowed by a test through indirect=True
    standin = case.make()
    db = ConnectionInfo("db", "sqlite", host=str(tmp_path / "db.sqlite"))
    engine = engine_for(db)
    ensure_schema(engine)
    with Running(standin) as running:
        e = Env(case, standin, running.url, tmp_path, People(engine), engine)
        e.write()
        yield e


def test_adds_and_removes_in_batches(env: Env):
    rows = [person(i) for i in range(30)]
    env.people.set(rows)
    env.run("t/1")
    assert env.held() == env.expected(rows)
    sync = env.last_sync()
    assert sync["status"] == "success"
    assert sync["batches"] == math.ceil(sync["added"] / 4)  # split at batch_size
    assert sync["destination_size"] in (None, len(env.expected(rows)))

    rows = rows[5:] + [person(100 + i) for i in range(3)]
    env.people.set(rows)
    env.run("t/2")
    assert env.held() == env.expected(rows)
    applied_once(env)


def test_batch_size_is_capped_at_the_vendor_limit(env: Env):
    env.write(batch_size=10_000_000)
    runner = AudienceRunner(env.state_engine, load_audiences(env.tmp / "aud"), AUDIENCE, env.resolve)
    assert runner.destination(env.case.type).batch_rows == env.case.max_rows


def test_rate_limits_and_transient_faults_are_retried(env: Env):
    rows = [person(i) for i in range(12)]
    env.people.set(rows)
    env.standin.faults.forced = [429, 503, 500]
    env.run("t/1")
    assert env.held() == env.expected(rows)
    assert env.standin.faults.forced == []  # all three faults were served, and retried past
    assert sum(status >= 500 for _, _, status in env.standin.log) == 2
    applied_once(env)


def test_a_lost_response_is_resent_and_the_vendor_semantics_absorb_it(env: Env):
    rows = [person(i) for i in range(12)]
    env.people.set(rows)
    env.standin.faults.lose_response = [2]
    env.run("t/1")
    assert env.held() == env.expected(rows)
    applied_once(env)
    (method, path, lost), (method_again, path_again, answered) = env.standin.log[1:3]
    assert lost == 503 and (method_again, path_again) == (method, path) and answered < 300  # really re-sent


def test_fatal_error_fails_clearly_and_keeps_state(env: Env):
    rows = [person(i) for i in range(8)]
    env.people.set(rows)
    env.secret = "wrong-secret-value"
    with pytest.raises(RunFailed) as exc:
        env.run("t/1")
    sync = env.last_sync()
    assert sync["status"] == "failed" and "refused" in sync["error"]
    assert "wrong-secret-value" not in sync["error"] and "wrong-secret-value" not in str(exc.value)
    assert env.held() == set()
    with env.state_engine.connect() as conn:
        assert conn.scalar(select(state.ack.c.member_key).limit(1)) is None  # nothing acknowledged


def test_converges_after_the_vendor_goes_down_half_way(env: Env):
    rows = [person(i) for i in range(40)]
    env.people.set(rows)
    env.standin.faults.down_after = 4
    with pytest.raises(RunFailed, match="still failing after"):
        env.run("t/1")
    held_part = env.held()
    assert held_part < env.expected(rows)  # some batches made it, some did not
    env.standin.faults.down_after = None
    env.standin.faults.down = False
    env.run("t/2")
    assert env.held() == env.expected(rows)
    applied_once(env)


def test_full_resync_or_replace_restores_a_tampered_audience(env: Env):
    rows = [person(i) for i in range(20)]
    env.people.set(rows)
    env.run("t/1")
    with env.standin.lock:  # members lost behind the product's back
        held = env.case.held(env.standin)
        container = {
            "meta": lambda s: s.audiences["23850000001"],
            "google_ads": lambda s: s.lists["customers/1234567890/userLists/555"],
            "google": lambda s: s.lists[("1234567890", "555")],
            "tiktok": lambda s: s.segments["seg42"],
            "segment": lambda s: None,
            "webhook": lambda s: s.members[AUDIENCE],
        }[env.case.type](env.standin)
        if container is not None:
            for item in list(held)[:5]:
                container.remove(item) if isinstance(container, set) else container.pop(item)
        else:
            for user in list(held)[:5]:
                env.standin.traits[user][AUDIENCE] = False
    assert env.held() != env.expected(rows)
    env.run("t/2")  # an incremental run trusts acknowledged state: it cannot see the tampering
    assert env.held() != env.expected(rows)
    entered = dict(getattr(env.standin, "events", {}))
    if env.case.supports_replace:
        env.run("t/3", mode="replace")
        assert env.last_sync()["mode"] == "replace"
    else:
        env.run("t/3", mode="full_resync")
    assert env.held() == env.expected(rows)
    if env.case.type == "segment":  # traits restored by identify alone: nobody "entered" a second time
        assert env.standin.events == entered and entered["Audience Entered"] == len(env.expected(rows))


@pytest.mark.parametrize("env", [name for name, case in sorted(CASES.items()) if case.reject], indirect=True)
def test_partial_rejects_are_recorded_and_the_rest_applied(env: Env):
    """Only vendors that say which rows they refused; Meta's counts are covered below."""
    rows = [person(i) for i in range(10)]
    target = next(r for r in rows if not is_held_out(SALT, r["customer_id"], 10))
    env.case.reject(env.standin, target)
    env.people.set(rows)
    env.run("t/1")
    assert env.held() == env.expected([r for r in rows if r is not target])
    sync = env.last_sync()
    assert sync["rejected"] == 1 and sync["status"] == "success"
    requests_before = len(env.standin.log)
    env.run("t/2")  # the rejected row is remembered, not re-sent every run
    assert env.last_sync()["planned_adds"] == 0
    assert len(env.standin.log) - requests_before <= 2  # at most the size read


def test_meta_blocked_audience_fails_with_a_clear_message(tmp_path: Path):
    case = CASES["meta"]
    standin = case.make()
    standin.blocked.add("23850000001")
    from data_out.destinations.meta.destination import MetaDestination
    from data_out.destinations.meta.settings import MetaSettings

    with Running(standin) as running:
        dest = MetaDestination(
            AUDIENCE, MetaSettings(type="meta", audience_id="23850000001"), case.connection(running.url)
        )
        with pytest.raises(DestinationError) as exc:
            dest.push(Op.ADD, [MemberRow("k1", "a" * 64, None, None, None, False)], "key-1")
    assert not exc.value.retryable
    assert "blocked" in str(exc.value) and "Ads Manager" in str(exc.value)


def test_meta_invalid_entries_feed_the_match_figures(tmp_path: Path):
    case = CASES["meta"]
    standin = case.make()
    rows = [person(i) for i in range(10)]
    sent = [r for r in rows if not is_held_out(SALT, r["customer_id"], 10)]
    standin.invalid_hashes.add(case.ident(sent[0])[0].split("=", 1)[1])  # Meta cannot match this one
    db = ConnectionInfo("db", "sqlite", host=str(tmp_path / "db.sqlite"))
    engine = engine_for(db)
    ensure_schema(engine)
    with Running(standin) as running:
        env = Env(case, standin, running.url, tmp_path, People(engine), engine)
        env.write(batch_size=100)
        env.people.set(rows)
        env.run("t/1")
    sync = env.last_sync()
    assert (sync["received"], sync["matched"]) == (len(sent), len(sent) - 1)


def test_slow_responses_past_the_timeout_fail_cleanly_then_catch_up(tmp_path: Path):
    case = CASES["meta"]
    standin = case.make()
    db = ConnectionInfo("db", "sqlite", host=str(tmp_path / "db.sqlite"))
    engine = engine_for(db)
    ensure_schema(engine)
    rows = [person(i) for i in range(6)]
    with Running(standin) as running:
        env = Env(case, standin, running.url, tmp_path, People(engine), engine)
        env.write(batch_size=100)
        env.people.set(rows)
        case_extra = dict(case.extra)
        case.extra.update(timeout=0.2, max_attempts=2)
        try:
            standin.faults.delay = 0.5
            with pytest.raises(RunFailed, match="no response within"):
                env.run("t/1")
            assert env.last_sync()["status"] == "failed"
            standin.faults.delay = 0
            env.run("t/2")
        finally:
            case.extra.clear()
            case.extra.update(case_extra)
    assert env.held() == env.expected(rows)
    applied_once(env)


def test_only_the_webhook_stand_in_answers_a_repeated_idempotency_key_from_memory(env: Env):
    """Meta, Google, TikTok and Segment ignore ``Idempotency-Key``: the same batch pushed twice under the
    same key is applied twice there, and only their own semantics keep the result right. Our webhook
    contract promises the key: its stand-in answers the second push from memory and applies nothing."""
    rows = [person(i) for i in range(6)]
    env.people.set(rows)
    env.run("t/1")
    runner = AudienceRunner(env.state_engine, load_audiences(env.tmp / "aud"), AUDIENCE, env.resolve)
    dest = runner.destination(env.case.type)
    member = [MemberRow("c9999", "b" * 64, "c" * 64, None, None, False)]
    env.standin.applied.clear()
    dest.push(Op.ADD, member, "do-same-key")
    dest.push(Op.ADD, member, "do-same-key")
    dest.close()
    key_counts = [n for k, n in env.standin.applied.items() if k.startswith("do-same-key")]
    if env.case.type in ("google", "google_ads"):
        assert key_counts == []  # Google has no idempotency key, so none is sent (jobs carry an external id)
    else:
        assert key_counts == ([1] if env.standin.replays_idempotency_key else [2])
    applied_once(env)
