"""The pages' queries and page models on SQLite and on the real Postgres, against runs of the test audiences."""

from __future__ import annotations

import datetime as dt
import hashlib
import re

import pytest
from sqlalchemy import delete, inspect, select, text, update

from data_out import state
from data_out.config import load_audiences
from data_out.engine.holdout import is_held_out
from data_out.engine.plan import idempotency_key
from data_out.engine.runner import AudienceRunner, RunFailed
from data_out.identity import normalize_email, sha256_hex
from data_out.ui import lookup as lookup_mod
from data_out.ui import pages, queries
from tests.data_out.ui.conftest import AS_OF, BUYERS, REJECTED, TARGETS, person, run_all
from tests.support.memory_destination import MemoryDestination

PAIRS = [(TARGETS, "memory"), (TARGETS, "warehouse"), (BUYERS, "warehouse")]


def _runs(engine, audience):  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return list(conn.execute(select(state.run.c.id).where(state.run.c.audience == audience)).scalars())


def test_last_runs_and_the_last_n_syncs_of_each_destination(synced, state_engine):
    with state_engine.connect() as conn:
        last = queries.last_runs(conn, [TARGETS, BUYERS, "never_run_v1"])
        two = queries.recent_syncs(conn, PAIRS, last=2)
        thirty = queries.recent_syncs(conn, PAIRS, last=30)
        all_syncs = conn.execute(select(state.sync).order_by(state.sync.c.id)).mappings().all()
    assert {a: r["id"] for a, r in last.items()} == {
        TARGETS: max(_runs(state_engine, TARGETS)),
        BUYERS: max(_runs(state_engine, BUYERS)),
    }
    for pair in PAIRS:
        ids = [s["id"] for s in all_syncs if (s["audience"], s["destination"]) == pair]
        assert len(ids) == 3
        assert [s["id"] for s in thirty[pair]] == ids  # oldest first, nothing of other pairs
        assert [s["id"] for s in two[pair]] == ids[-2:]


def test_latest_syncs_and_size_series_agree_with_the_rows(synced, state_engine):
    with state_engine.connect() as conn:
        latest = queries.latest_syncs(conn, [*PAIRS, ("never_run_v1", "meta")])
        sizes = queries.size_series(conn, [*PAIRS, ("never_run_v1", "meta")], last=2)
        all_syncs = conn.execute(select(state.sync).order_by(state.sync.c.id)).mappings().all()
    for pair in PAIRS:
        mine = [s for s in all_syncs if (s["audience"], s["destination"]) == pair]
        assert latest[pair]["id"] == mine[-1]["id"] and latest[pair]["acked_size"] == mine[-1]["acked_size"]
        assert sizes[pair] == [s["acked_size"] for s in mine[-2:]]  # oldest first
    assert ("never_run_v1", "meta") not in latest and sizes[("never_run_v1", "meta")] == []


def test_more_pairs_than_sqlite_allows_in_one_compound_select(synced, state_engine):
    pairs = PAIRS + [(f"other_{i}_v1", "meta") for i in range(600)]
    with state_engine.connect() as conn:
        out = queries.recent_syncs(conn, pairs, last=1)
        runs = queries.last_runs(conn, [p[0] for p in pairs])
    assert len(out) == len(pairs) and [len(out[p]) for p in PAIRS] == [1, 1, 1]
    assert set(runs) == {TARGETS, BUYERS}


def test_rejects_by_reason_and_of_one_member(synced, state_engine):
    with state_engine.connect() as conn:
        sync_ids = list(conn.execute(select(state.sync.c.id)).scalars())
        by_reason = queries.rejects_by_reason(conn, sync_ids)
        mine = queries.rejects_of(conn, [hashlib.sha256(REJECTED.encode()).hexdigest()])
    assert [(r["destination"], r["reason"], r["rows"]) for r in by_reason] == [
        ("memory", "vendor says: invalid entry", 1)
    ]
    assert [(r["audience"], r["op"]) for r in mine] == [(TARGETS, "add")]


def test_the_overview_model_has_every_audience_with_its_figures(synced, state_engine):
    rows = {r.audience.name: r for r in pages.overview(state_engine, synced)}
    assert set(rows) == {TARGETS, BUYERS}
    t = rows[TARGETS]
    with state_engine.connect() as conn:
        acked = queries.acked_counts(conn)
    assert {c.name: c.acked for c in t.destinations} == {
        "memory": acked[(TARGETS, "memory")],
        "warehouse": acked[(TARGETS, "warehouse")],
    }
    assert t.holdout_share == t.last_run["held_out"] / t.last_run["members"] * 100
    memory = next(c for c in t.destinations if c.name == "memory")
    assert memory.rejected == 1 and any("1 rejected" in why for why in t.attention)
    assert not rows[BUYERS].attention


def test_the_health_model_has_one_point_per_run_and_destination(synced, state_engine):
    h = pages.health(state_engine, synced, synced.audiences[TARGETS])
    assert [r["id"] for r in h.runs] == _runs(state_engine, TARGETS)
    for d in ("memory", "warehouse"):
        assert h.charts["size"].count(f'data-series="{d}"') == 3
    assert h.charts["duration"].count('class="pt"') == 3
    assert h.charts["rejects"].count('data-series="vendor says: invalid entry"') == 3
    assert "SELECT customer_id" in h.yaml_text
    window = pages.health(state_engine, synced, synced.audiences[TARGETS], last=2)
    assert window.charts["size"].count('data-series="memory"') == 2


def test_the_health_model_lists_guard_trips_with_the_override_reason(
    synced, audiences_dir, resolver, state_engine, people
):
    people.set([])  # everyone leaves: the mass-removal guard stops the targets' destinations
    with pytest.raises(RunFailed):
        AudienceRunner(state_engine, load_audiences(audiences_dir), TARGETS, resolver).run("r4", AS_OF)
    AudienceRunner(state_engine, load_audiences(audiences_dir), TARGETS, resolver).run(
        "r5", AS_OF, override_reason="campaign ended"
    )
    trips = pages.health(state_engine, synced, synced.audiences[TARGETS]).guard_trips
    assert sorted(t["status"] for t in trips) == ["guarded", "guarded", "success", "success"]
    assert all("campaign ended" in t["guard"] for t in trips if t["status"] == "success")


def test_check_events_are_breach_repaired_and_recovered_per_check():
    at = AS_OF
    rows = [
        {"id": 1, "at": at, "destination": "meta", "check": "gap", "status": "ok", "repaired": False},
        {"id": 2, "at": at, "destination": "meta", "check": "gap", "status": "breach", "repaired": False},
        {"id": 3, "at": at, "destination": "google", "check": "gap", "status": "ok", "repaired": False},
        {"id": 4, "at": at, "destination": "meta", "check": "gap", "status": "breach", "repaired": True},
        {"id": 5, "at": at, "destination": "meta", "check": "gap", "status": "ok", "repaired": False},
        {"id": 6, "at": at, "destination": "meta", "check": "gap", "status": "ok", "repaired": False},
    ]
    assert [(e["id"], e["event"]) for e in pages.check_events(rows)] == [
        (5, "recovered"),
        (4, "repaired"),
        (2, "breach"),
    ]


def test_schema_5_adds_the_indexes_the_pages_read_through(synced, state_engine):
    # a database at version 4: the indexes do not exist yet
    with state_engine.begin() as conn:
        for name in ("ix_do_reject_sync", "ix_do_reject_member", "ix_do_metric_event_customer"):
            conn.execute(text(f"DROP INDEX {name}"))
        conn.execute(delete(state.schema_version).where(state.schema_version.c.version >= 5))
    state.ensure_schema(state_engine)
    names = {i["name"] for t in ("do_reject", "do_metric_event") for i in inspect(state_engine).get_indexes(t)}
    assert {"ix_do_reject_sync", "ix_do_reject_member", "ix_do_metric_event_customer"} <= names
    assert "do_ui_lookup" in inspect(state_engine).get_table_names()


def test_a_lookup_names_audiences_holdout_and_exclusions_and_records_the_hash_only(synced, state_engine):
    # c0003 bought: a member of the suppression, so excluded from the targets
    result = lookup_mod.lookup(state_engine, synced, "email", "  PERSON.3@example.com", "alice")
    answers = {a.audience: a for a in result.answers}
    assert answers[TARGETS].member and answers[TARGETS].excluded_by == [BUYERS]
    assert answers[BUYERS].member
    assert answers[TARGETS].held_out == is_held_out("test-salt", "c0003", 20)
    # someone never seen
    nobody = lookup_mod.lookup(state_engine, synced, "email", "nobody@example.org", "alice")
    assert nobody.found == [] and nobody.problem is None
    # the same person by phone and by member key
    by_phone = lookup_mod.lookup(state_engine, synced, "phone", "(415) 555-0003", "bob")
    by_key = lookup_mod.lookup(state_engine, synced, "member_key", "c0003", "bob")
    assert [a.audience for a in by_phone.found] == [a.audience for a in by_key.found] == [BUYERS, TARGETS]
    bad = lookup_mod.lookup(state_engine, synced, "email", "not an email", "bob")
    assert bad.problem == "the email address is invalid" and bad.value_sha256 is None
    with state_engine.connect() as conn:
        recorded = conn.execute(select(state.ui_lookup).order_by(state.ui_lookup.c.id)).mappings().all()
    assert [(r["username"], r["kind"], r["audiences_found"]) for r in recorded] == [
        ("alice", "email", 2),
        ("alice", "email", 0),
        ("bob", "phone", 2),
        ("bob", "member_key", 2),
        ("bob", "email", 0),
    ]
    assert recorded[0]["value_sha256"] == sha256_hex(normalize_email("person.3@example.com").value)
    dump = " ".join(str(v) for r in recorded for v in r.values()).lower()
    assert "person.3" not in dump and "4155550003" not in dump and "nobody" not in dump


def _vendor_key_of(store, op: str, key: str) -> str:
    """The idempotency key of the last request to the memory destination that carried ``key`` under ``op``."""
    return [k for o, k, rows in store.requests if o == op and any(r.member_key == key for r in rows)][-1]


def _batch_key_prefix(audience: str, destination: str, sync_id: int, batch_no: int) -> str:
    """The readable part of a batch's idempotency key (``plan.idempotency_key``), without the plan's nonce."""
    return idempotency_key(audience, destination, sync_id, batch_no, "")


def test_a_lookup_names_the_run_sync_and_batch_of_each_destinations_last_add(synced, state_engine, store):
    key = next(f"c{i:04d}" for i in range(5, 30) if not is_held_out("test-salt", f"c{i:04d}", 20))
    result = lookup_mod.lookup(state_engine, synced, "member_key", key, "alice")
    target = next(a for a in result.answers if a.audience == TARGETS)
    assert [d.name for d in target.destinations] == ["memory", "warehouse"]
    first_run = min(_runs(state_engine, TARGETS))
    for d in target.destinations:
        assert d.acknowledged_since is not None and d.pending == []
        assert d.last_add["run_id"] == first_run and d.last_add["exact"] and d.last_add["batch"] is not None
        assert d.last_add["dag_run_id"] == f"r1/{TARGETS}"  # the run id the first run was given
    # the batch named is the one the destination received the person in: its key says so
    memory = target.destinations[0].last_add
    sent = _vendor_key_of(store, "add", key)
    assert sent.startswith(_batch_key_prefix(TARGETS, "memory", memory["sync_id"], memory["batch"]))
    rejected = lookup_mod.lookup(state_engine, synced, "member_key", REJECTED, "alice")
    memory = next(d for a in rejected.answers if a.audience == TARGETS for d in a.destinations if d.name == "memory")
    assert memory.rejected and memory.acknowledged_since is None
    assert memory.last_add["run_id"] == max(_runs(state_engine, TARGETS))  # the refused add, in the third run
    assert [j["reason"] for j in rejected.rejects] == ["vendor says: invalid entry"]


def test_a_lookup_infers_the_sync_of_a_row_acknowledged_before_rows_recorded_it(synced, state_engine):
    key = next(f"c{i:04d}" for i in range(5, 30) if not is_held_out("test-salt", f"c{i:04d}", 20))
    with state_engine.begin() as conn:  # as a row written before do_ack had the columns
        conn.execute(update(state.ack).values(acked_sync=None, acked_batch=None))
    target = next(
        a for a in lookup_mod.lookup(state_engine, synced, "member_key", key, "alice").answers if a.audience == TARGETS
    )
    for d in target.destinations:
        assert d.last_add["run_id"] == min(_runs(state_engine, TARGETS))
        assert not d.last_add["exact"] and d.last_add["batch"] is None


def test_a_lookup_shows_a_planned_add_the_destination_has_not_acknowledged(
    synced, audiences_dir, resolver, state_engine, people, store
):
    """A push that failed leaves the plan's batches: the person's row names its batch and planning sync."""
    newcomer = next(f"c{i:04d}" for i in range(100, 199) if not is_held_out("test-salt", f"c{i:04d}", 20))
    people.set([person(i, bought=int(i in (3, 4))) for i in range(35)] + [person(int(newcomer[1:]))])
    n = len(store.requests)
    store.fail_before_apply.update(range(n + 1, n + 50))  # the memory destination answers 503 from now on
    with pytest.raises(RunFailed):
        run_all(audiences_dir, resolver, state_engine, "r4")
    result = lookup_mod.lookup(state_engine, synced, "member_key", newcomer, "alice")
    memory = next(d for a in result.answers if a.audience == TARGETS for d in a.destinations if d.name == "memory")
    assert memory.acknowledged_since is None and memory.last_add is None
    [planned] = memory.pending
    assert planned["op"] == "add" and planned["run_id"] == max(_runs(state_engine, TARGETS))
    sent = _vendor_key_of(store, "add", newcomer)  # the refused request carried the person in that batch
    assert sent.startswith(_batch_key_prefix(TARGETS, "memory", planned["planned_by"], planned["batch_no"]))
    assert planned["attempts"] >= 1


def test_refreshes_are_shown_with_the_adds_and_removes_of_a_run(
    synced, audiences_dir, resolver, state_engine, monkeypatch
):
    """Memberships that expire are re-sent: the overview, the Health tab and the lookup count them."""
    monkeypatch.setattr(MemoryDestination, "membership_lifetime_days", 40)
    later = state.utcnow() + dt.timedelta(days=39)  # every acknowledgement is in its urgent last days
    monkeypatch.setattr(state, "utcnow", lambda: later)
    run_all(audiences_dir, resolver, state_engine, "r4")
    with state_engine.connect() as conn:
        s = state.sync
        last = (
            conn.execute(
                select(s).where(s.c.audience == TARGETS, s.c.destination == "memory").order_by(s.c.id.desc()).limit(1)
            )
            .mappings()
            .one()
        )
    assert last["refreshed"] > 0 and last["added"] == 0
    rows = {r.audience.name: r for r in pages.overview(state_engine, synced)}
    memory = next(c for c in rows[TARGETS].destinations if c.name == "memory")
    assert memory.refreshed == last["refreshed"]
    h = pages.health(state_engine, synced, synced.audiences[TARGETS])
    bars = re.findall(r'class="bar refresh" data-value="([^"]+)"', h.charts["changes"])
    assert len(bars) == len(h.runs) and bars[-1] != "0" and bars[0] == "0"
    assert [s["refreshed"] for s in h.recent[0]["syncs"] if s["destination"] == "memory"] == [last["refreshed"]]
    key = next(f"c{i:04d}" for i in range(5, 30) if not is_held_out("test-salt", f"c{i:04d}", 20))
    target = next(
        a for a in lookup_mod.lookup(state_engine, synced, "member_key", key, "alice").answers if a.audience == TARGETS
    )
    refreshed = next(d for d in target.destinations if d.name == "memory")
    assert refreshed.last_add["sync_id"] == last["id"]
    assert refreshed.acknowledged_since.replace(tzinfo=None) == later.replace(tzinfo=None)  # SQLite keeps no zone


def test_the_health_model_shows_the_latest_runs_identifier_quality_by_reason(
    synced, audiences_dir, resolver, state_engine, people
):
    """Counts per reason from a real staging run, never the values themselves."""

    assert pages.health(state_engine, synced, synced.audiences[TARGETS]).id_quality == []
    rows = [person(i, bought=int(i in (3, 4))) for i in range(35)]  # the third run's people, buyers kept
    rows[5]["email"], rows[6]["email"] = "not-an-email", "also@not"  # no domain with a dot
    rows[7]["phone"] = "+1 415 000 0000"  # a US number that cannot exist
    people.set(rows)
    run_all(audiences_dir, resolver, state_engine, "r4")
    quality = pages.health(state_engine, synced, synced.audiences[TARGETS]).id_quality
    assert {code: n for code, _, n in quality} == {"email_shape": 2, "phone_not_valid": 1}
    assert quality[0][0] == "email_shape"  # largest first
    assert not any("not-an-email" in meaning for _, meaning, _ in quality)
