"""Quiet days: a run that reads only the rows a change column flagged ends where a full comparison ends.

The reference is the full comparison itself (``test_stage_sql`` holds it to the Python path): the same
source is staged as two audiences, one with a change column and one without, and after every step their
snapshots, figures and recorded changed keys must agree.
"""

from __future__ import annotations

import datetime as dt
import logging

import pytest
from sqlalchemy import Engine, select, text, update

from data_out import state
from data_out.config import AudienceConfig
from data_out.connections import ConnectionInfo, engine_for
from data_out.engine import quiet, stage_sql
from data_out.engine.stage import Stager, StageStats
from data_out.sources.base import QueryShapeError
from data_out.sources.warehouse import SqlSource
from data_out.state import ensure_schema

pytestmark = pytest.mark.postgres

SQL = "SELECT customer_id, email, phone, updated_at FROM people_q"
QUIET, FULL = "quiet_people_v1", "full_people_v1"
NOW = dt.datetime.now(dt.UTC)
OLD = NOW - dt.timedelta(days=2)  # well before any mark: a row last changed then is never flagged again


def config(name: str, sql: str = SQL, **source: object) -> AudienceConfig:
    return AudienceConfig.model_validate(
        {
            "name": name,
            "owner": "t",
            "purpose": "t",
            "source": {"query": sql, **source},
            "identifiers": {"email": "email", "phone": "phone", "default_region": "US"},
            "holdout": {"percent": 20, "salt": "salt-1"},
            "destinations": [{"type": "warehouse"}],
        }
    )


@pytest.fixture
def engine(pg_database: ConnectionInfo) -> Engine:
    e = engine_for(pg_database)
    ensure_schema(e)
    with e.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS people_q"))
        conn.execute(text("CREATE TABLE people_q (customer_id text, email text, phone text, updated_at timestamptz)"))
        conn.execute(
            text("INSERT INTO people_q VALUES (:k, :e, :p, :t)"),
            [
                {"k": f"c{i}", "e": f"User{i}@Example.com ", "p": f"+1 415 555 {i:04d}" if i % 2 else None, "t": OLD}
                for i in range(1, 41)
            ]
            + [{"k": None, "e": "nokey@example.com", "p": None, "t": OLD}],  # a row without a key, counted
        )
        # as if a destination had planned from each snapshot: staging then records the keys it changed
        for audience in (QUIET, FULL):
            conn.execute(
                state.plan_mark.insert().values(
                    audience=audience, destination="warehouse", change_id=0, shape="-", at=NOW
                )
            )
    return e


def run(engine: Engine, cfg: AudienceConfig, run_id: int) -> StageStats:
    source = SqlSource(engine, cfg.source.query, {}, [cfg.member_key], f"audience {cfg.name} (test)")  # type: ignore[union-attr]
    return Stager(engine, cfg, run_id, batch_size=7).stage(source, {})


def snapshot(engine: Engine, audience: str) -> list[tuple]:
    m = state.member
    cols = [c for c in m.columns if c.name != "audience"]
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(*cols).where(m.c.audience == audience).order_by(m.c.member_key))]


def changed_keys(engine: Engine, audience: str) -> set[str]:
    """The keys the latest staging recorded as changed (what incremental plans look up)."""
    c, d = state.change, state.dirty
    with engine.connect() as conn:
        latest = conn.execute(select(c.c.id).where(c.c.audience == audience).order_by(c.c.id.desc()).limit(1)).scalar()
        return set(conn.execute(select(d.c.member_key).where(d.c.change_id == latest)).scalars())


def both(engine: Engine, run_id: int, **source: object) -> tuple[StageStats, StageStats]:
    """Stage the same source as the quiet audience and the full reference; they must agree."""
    q = run(engine, config(QUIET, change_column="updated_at", **source), run_id)
    f = run(engine, config(FULL), run_id + 1000)
    assert snapshot(engine, QUIET) == snapshot(engine, FULL)
    ignore = {"seconds": 0, "comparison": ""}
    assert q.as_dict() | ignore == f.as_dict() | ignore
    assert changed_keys(engine, QUIET) == changed_keys(engine, FULL)
    return q, f


def sql(engine: Engine, statement: str, **params: object) -> None:
    with engine.begin() as conn:
        conn.execute(text(statement), params)


@pytest.mark.parametrize("split_min", [10**9, 0], ids=["one-statement", "two-halves"])
def test_a_quiet_run_ends_where_a_full_comparison_ends(engine, monkeypatch, split_min):
    monkeypatch.setattr(stage_sql, "SPLIT_MIN_MEMBERS", split_min)  # both passes, whole or in halves at once
    first, _ = both(engine, 1)
    assert (first.comparison, first.members, first.missing_keys) == (quiet.FULL, 40, 1)
    nothing, _ = both(engine, 2)
    assert (nothing.comparison, nothing.recomputed) == (quiet.CHANGED, 0)
    # a day's change, each bumping updated_at: a new member, a changed email, a phone removed, one member gone
    sql(engine, "INSERT INTO people_q VALUES ('c99', 'new@example.com', NULL, now())")
    sql(engine, "UPDATE people_q SET email = 'moved@example.com', updated_at = now() WHERE customer_id = 'c3'")
    sql(engine, "UPDATE people_q SET phone = NULL, updated_at = now() WHERE customer_id = 'c5'")
    sql(engine, "DELETE FROM people_q WHERE customer_id IN ('c7', 'c8')")
    # touched without a change to its identifiers: read again, found unchanged, not normalised
    sql(engine, "UPDATE people_q SET updated_at = now() WHERE customer_id = 'c9'")
    day, _ = both(engine, 3)
    assert (day.comparison, day.recomputed, day.members) == (quiet.CHANGED, 3, 39)
    assert changed_keys(engine, QUIET) == {"c99", "c3", "c5", "c7", "c8"}


def test_a_row_a_late_writer_committed_inside_the_lookback_is_read(engine):
    both(engine, 1)
    mark = NOW - dt.timedelta(minutes=5)
    sql(engine, "UPDATE people_q SET updated_at = :t WHERE customer_id = 'c1'", t=mark)
    both(engine, 3)  # the mark is now 5 minutes ago
    # committed after that run, stamped before its mark but inside the default hour of lookback
    sql(
        engine,
        "UPDATE people_q SET email = 'late@example.com', updated_at = :t WHERE customer_id = 'c2'",
        t=mark - dt.timedelta(minutes=20),
    )
    late, _ = both(engine, 5)
    assert (late.comparison, late.recomputed) == (quiet.CHANGED, 1)


def bump_mark(engine: Engine) -> None:
    """One row changed now: the mark moves past every row still stamped ``OLD``."""
    sql(engine, "UPDATE people_q SET updated_at = now() WHERE customer_id = 'c1'")


def test_a_change_the_column_missed_is_caught_by_the_scheduled_full_comparison(engine):
    both(engine, 1)
    bump_mark(engine)
    both(engine, 3)
    sql(engine, "UPDATE people_q SET email = 'silent@example.com' WHERE customer_id = 'c4'")  # updated_at not bumped
    cfg = config(QUIET, change_column="updated_at")
    missed = run(engine, cfg, 5)
    assert (missed.comparison, missed.recomputed) == (quiet.CHANGED, 0)  # what the change column promises, no more
    s = state.snapshot
    with engine.begin() as conn:  # a day later
        conn.execute(update(s).where(s.c.audience == QUIET).values(compared_at=NOW - dt.timedelta(days=1, minutes=1)))
    caught, _ = both(engine, 7)
    assert (caught.comparison, caught.recomputed) == (quiet.FULL, 1)


def test_a_new_member_the_column_did_not_flag_makes_the_run_compare_in_full(engine, caplog):
    both(engine, 1)
    bump_mark(engine)
    both(engine, 3)
    sql(engine, "INSERT INTO people_q VALUES ('c77', 'unflagged@example.com', NULL, :t)", t=OLD)
    with caplog.at_level(logging.WARNING, logger="data_out.engine.quiet"):
        fell_back, _ = both(engine, 5)
    assert (fell_back.comparison, fell_back.recomputed) == (quiet.FULL, 1)
    assert "1 new members have no change value past the mark" in caplog.text
    assert "unflagged@example.com" not in caplog.text


def test_duplicate_keys_make_the_run_compare_in_full(engine):
    both(engine, 1)
    sql(engine, "INSERT INTO people_q VALUES ('c1', 'other@example.com', NULL, now())")
    dup, _ = both(engine, 3)
    assert (dup.comparison, dup.duplicate_keys) == (quiet.FULL, 1)


def test_a_changed_query_or_lookback_invalidates_the_mark(engine):
    both(engine, 1)
    assert both(engine, 3)[0].comparison == quiet.CHANGED
    assert both(engine, 5, change_lookback="2h")[0].comparison == quiet.FULL  # the mark was taken for 1h
    assert both(engine, 7, change_lookback="2h")[0].comparison == quiet.CHANGED
    moved = run(engine, config(QUIET, sql=SQL + " WHERE customer_id <> 'c1'", change_column="updated_at"), 9)
    assert (moved.comparison, moved.members) == (quiet.FULL, 39)


def test_the_change_column_must_be_in_the_query(engine):
    cfg = config(QUIET, change_column="modified_at")
    with pytest.raises(QueryShapeError, match="modified_at"):
        run(engine, cfg, 1)


def test_a_change_column_of_another_type_means_full_comparisons(engine, caplog):
    cfg = config(QUIET, sql="SELECT customer_id, email, phone, 1 AS version FROM people_q", change_column="version")
    with caplog.at_level(logging.WARNING):
        assert run(engine, cfg, 1).comparison == quiet.FULL
        assert run(engine, cfg, 2).comparison == quiet.FULL
    assert "change column version is not a timestamp" in caplog.text


def test_future_change_values_never_push_the_mark_past_now(engine):
    sql(engine, "UPDATE people_q SET updated_at = now() + interval '30 days' WHERE customer_id = 'c1'")
    both(engine, 1)
    with engine.connect() as conn:
        mark = conn.execute(select(state.snapshot.c.change_mark).where(state.snapshot.c.audience == QUIET)).scalar()
    assert dt.datetime.fromisoformat(mark) <= dt.datetime.now(dt.UTC)
    # a change stamped before the future row's value is still read
    sql(engine, "UPDATE people_q SET email = 'later@example.com', updated_at = now() WHERE customer_id = 'c2'")
    assert both(engine, 3)[0].recomputed == 1


def test_the_mark_is_written_in_one_format_whatever_the_session_datestyle(engine, pg_database):
    """A worker whose session writes dates day-first must leave a mark the next worker reads the same way."""
    day_first = engine_for(pg_database)
    with day_first.begin() as conn:  # as a role or database default would set it for every session
        conn.execute(text(f"ALTER DATABASE {day_first.url.database} SET datestyle = 'SQL, DMY'"))
    try:
        day_first.dispose()
        both(engine_for(pg_database), 1)
        with engine.connect() as conn:
            mark = conn.execute(select(state.snapshot.c.change_mark).where(state.snapshot.c.audience == QUIET)).scalar()
        assert dt.datetime.fromisoformat(mark) == OLD  # ISO, not 07/12/2026 ... UTC
    finally:
        with day_first.begin() as conn:
            conn.execute(text(f"ALTER DATABASE {day_first.url.database} RESET datestyle"))


def test_the_query_reads_its_dates_by_the_session_datestyle_throughout(engine):
    """The mark is written as ISO text without touching ``DateStyle``: a query whose own literal is read month
    first (the default ``ISO, MDY``) stages on every path, and reads the same date on each."""
    dated = SQL.replace("FROM people_q", "FROM people_q WHERE updated_at >= '03/04/2020'")  # 4 March 2020
    with engine.connect() as conn:
        assert conn.execute(text("SHOW datestyle")).scalar() == "ISO, MDY"
    assert both(engine, 1, sql=dated)[0].comparison == quiet.FULL  # the mark taken after a full comparison
    sql(engine, "UPDATE people_q SET email = 'new@example.com', updated_at = now() WHERE customer_id = 'c3'")
    q, _ = both(engine, 3, sql=dated)  # read past the mark
    assert (q.comparison, q.recomputed) == (quiet.CHANGED, 1)


def test_a_date_column_rereads_the_marks_own_day(engine):
    """With a ``date`` change column and no lookback, a change stamped later on the mark's day is still read."""
    sql(engine, "ALTER TABLE people_q ALTER COLUMN updated_at TYPE date")
    sql(engine, "UPDATE people_q SET updated_at = current_date WHERE customer_id = 'c1'")
    assert both(engine, 1, change_lookback="0s")[0].comparison == quiet.FULL  # the mark: today
    sql(engine, "UPDATE people_q SET email = 'sameday@example.com', updated_at = current_date WHERE customer_id = 'c2'")
    q, _ = both(engine, 3, change_lookback="0s")
    assert (q.comparison, q.recomputed) == (quiet.CHANGED, 1)


def quiet_run(engine: Engine, caplog: pytest.LogCaptureFixture, run_id: int) -> tuple[StageStats, bool]:
    """``both`` at ``run_id``, and whether the quiet audience proved that no member left (no key-only pass)."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="data_out.engine.quiet"):
        stats, _ = both(engine, run_id)
    return stats, "no member left, the source's keys being the snapshot's and the new ones" in caplog.text


@pytest.mark.parametrize("split_min", [10**9, 0], ids=["one-after-the-other", "at-once"])
def test_a_day_on_which_no_member_left_is_proven_without_the_key_only_pass(engine, monkeypatch, split_min, caplog):
    monkeypatch.setattr(stage_sql, "SPLIT_MIN_MEMBERS", split_min)  # source and snapshot read in turn, or at once
    # keys as the source holds them: one too long to use, one blank, one with spaces and a tab around it
    sql(engine, "INSERT INTO people_q VALUES (:k, 'long@example.com', NULL, :t)", k="x" * 300, t=OLD)
    sql(engine, "INSERT INTO people_q VALUES ('   ', 'blank@example.com', NULL, :t)", t=OLD)
    sql(engine, "INSERT INTO people_q VALUES (:k, 'padded@example.com', NULL, :t)", k=" c50\t ", t=OLD)
    both(engine, 1)
    nothing, proven = quiet_run(engine, caplog, 3)
    assert proven and (nothing.comparison, nothing.recomputed, nothing.missing_keys) == (quiet.CHANGED, 0, 3)
    sql(engine, "INSERT INTO people_q VALUES ('c99', 'new@example.com', NULL, now())")
    sql(engine, "UPDATE people_q SET email = 'moved@example.com', updated_at = now() WHERE customer_id = 'c3'")
    joined, proven = quiet_run(engine, caplog, 5)
    assert proven and (joined.comparison, joined.recomputed, joined.members) == (quiet.CHANGED, 2, 42)
    assert changed_keys(engine, QUIET) == {"c99", "c3"}


@pytest.mark.parametrize("split_min", [10**9, 0], ids=["one-after-the-other", "at-once"])
def test_a_member_who_left_without_a_flagged_row_is_found_by_the_key_only_pass(engine, monkeypatch, split_min, caplog):
    monkeypatch.setattr(stage_sql, "SPLIT_MIN_MEMBERS", split_min)
    both(engine, 1)
    sql(engine, "DELETE FROM people_q WHERE customer_id = 'c7'")
    left, proven = quiet_run(engine, caplog, 3)
    assert not proven and (left.comparison, left.members) == (quiet.CHANGED, 39)
    assert changed_keys(engine, QUIET) == {"c7"}


@pytest.mark.parametrize(
    "arrival",
    [
        "INSERT INTO people_q VALUES ('c1', 'twice@example.com', NULL, now())",  # a key twice, flagged
        "INSERT INTO people_q VALUES ('c77', 'unflagged@example.com', NULL, :old)",  # a new key, not flagged
    ],
    ids=["duplicate-key", "unflagged-key"],
)
def test_a_leaver_and_an_arrival_that_keep_the_count_are_not_mistaken_for_no_change(engine, caplog, arrival):
    """One row gone and one come: the count stays, the keys' hash does not, so the run finds out which."""
    both(engine, 1)
    bump_mark(engine)
    both(engine, 3)
    sql(engine, "DELETE FROM people_q WHERE customer_id = 'c7'")
    sql(engine, arrival, old=OLD)
    day, proven = quiet_run(engine, caplog, 5)
    assert not proven
    assert day.comparison == quiet.FULL  # the key-only pass saw the duplicate or the unflagged key and fell back
    assert "c7" in changed_keys(engine, QUIET)


def test_a_busy_day_goes_straight_to_the_key_only_pass(engine, monkeypatch, caplog):
    """Busy: more changed rows past the mark than ``PROOF_MIN_ROWS`` and ``PROOF_MAX_SHARE`` of the audience."""
    monkeypatch.setattr(quiet, "PROOF_MIN_ROWS", 0)
    both(engine, 1)
    sql(engine, "UPDATE people_q SET email = 'moved@example.com', updated_at = now() WHERE customer_id = 'c3'")
    busy, proven = quiet_run(engine, caplog, 3)
    assert not proven and "key-only pass" in caplog.text and busy.recomputed == 1
    monkeypatch.setattr(quiet, "PROOF_MAX_SHARE", 0.05)  # 5% of 40 members: 2 changed rows are a quiet day
    sql(engine, "UPDATE people_q SET email = 'moved2@example.com', updated_at = now() WHERE customer_id = 'c4'")
    sql(engine, "UPDATE people_q SET email = 'moved3@example.com', updated_at = now() WHERE customer_id = 'c6'")
    calm, proven = quiet_run(engine, caplog, 5)
    assert proven and calm.recomputed == 2


def test_a_new_key_arriving_twice_is_a_duplicate_not_two_members(engine, caplog):
    both(engine, 1)
    sql(
        engine,
        "INSERT INTO people_q VALUES ('c88', 'a@example.com', NULL, now()), ('c88', 'b@example.com', NULL, now())",
    )
    twice, proven = quiet_run(engine, caplog, 3)
    assert not proven and (twice.comparison, twice.duplicate_keys) == (quiet.FULL, 1)
