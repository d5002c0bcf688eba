"""In-database staging (Postgres, source in the state database) gives exactly what the Python path gives."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, func, select, text

from data_out import normalise, state
from data_out.config import AudienceConfig
from data_out.connections import ConnectionInfo, engine_for
from data_out.engine import changes, faults, stage_sql
from data_out.engine.stage import Stager, StageStats, _fingerprint_context, raw_fingerprint
from data_out.engine.stage_sql import NULL_TAG, InDatabase, InDatabaseStaging, work_mem
from data_out.sources.base import SourceError
from data_out.sources.warehouse import SqlSource
from data_out.state import ensure_schema

pytestmark = pytest.mark.postgres

# Everything that could make SQL and Python disagree: case and space noise, tabs around keys, a key
# that is only whitespace, a missing key, a 300-character key, duplicates (identical and different),
# non-ASCII text, integer columns, a phone that does not parse, NULLs.
ROWS = [
    ("c1", "Ann@Example.com ", "+1 415 555 2671", 7),
    ("c2", None, "(650) 555-0100", None),
    ("\tc3 ", "zoë@example.com", None, 3),
    ("c4", "not-an-email", "12", 4),
    ("   ", "blank@example.com", None, 5),
    (None, "nokey@example.com", None, 6),
    ("k" * 300, "long@example.com", None, 8),
    ("c5", "dup@example.com", None, 9),
    ("c5", "dup@example.com", None, 9),  # identical duplicate
    ("c6", "b@example.com", None, 10),
    ("c6", "a@example.com", None, 11),  # different duplicate: the lowest fingerprint wins
    ("c7", "ünï@exämple.com", "+44 20 7946 0958", 12),
]

SQL = "SELECT customer_id, email, phone, ext FROM people_sql;"


def config(**overrides) -> AudienceConfig:
    return AudienceConfig.model_validate(
        {
            "name": "sql_stage_v1",
            "owner": "t",
            "purpose": "t",
            "source": {"query": SQL},
            "identifiers": {"email": "email", "phone": "phone", "external_id": "ext", "default_region": "US"},
            "holdout": {"percent": 20, "salt": "salt-1"},
            "destinations": [{"type": "warehouse"}],
            **overrides,
        }
    )


def load(engine: Engine, rows: list[tuple], ext_type: str = "bigint") -> None:
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS people_sql"))
        conn.execute(text(f"CREATE TABLE people_sql (customer_id text, email text, phone varchar(40), ext {ext_type})"))
        conn.execute(
            text("INSERT INTO people_sql VALUES (:k, :e, :p, :x)"),
            [{"k": k, "e": e, "p": p, "x": x} for k, e, p, x in rows],
        )


def snapshot(engine: Engine, audience: str = "sql_stage_v1") -> list[tuple]:
    """The audience's snapshot without the fingerprint (each path has its own, see stage_sql.py)."""
    m = state.member
    cols = [c for c in m.columns if c.name not in {"audience", "raw_fp"}]
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(*cols).where(m.c.audience == audience).order_by(m.c.member_key))]


class PythonOnly(SqlSource):
    """The same query, but not recognised as co-located: forces the Python path for comparison."""


def stage(engine: Engine, cfg: AudienceConfig, run_id: int, python: bool = False) -> StageStats:
    cls = PythonOnly if python else SqlSource
    source = cls(engine, SQL, {}, [cfg.member_key], "audience sql_stage_v1 (test)")
    if python:
        source.engine = engine_for(ConnectionInfo("other", "postgres", **_same_db_other_url(engine)))
    return Stager(engine, cfg, run_id, batch_size=3).stage(source, {})


def _same_db_other_url(engine: Engine) -> dict:
    """The same database under another URL spelling (localhost vs 127.0.0.1): not provably co-located."""
    u = engine.url
    return {"host": "localhost", "port": u.port, "login": u.username, "schema": u.database}


@pytest.fixture
def engine(pg_database: ConnectionInfo) -> Engine:
    e = engine_for(pg_database)
    ensure_schema(e)
    return e


def fingerprints(engine: Engine, cfg: AudienceConfig, rows: list[tuple]) -> list[str]:
    load(engine, rows)
    plan = InDatabase.for_source(engine, SqlSource(engine, SQL, {}, [], "t"), "customer_id", ["email", "phone", "ext"])
    assert plan is not None
    with engine.connect() as conn:
        return list(
            conn.execute(
                text(f"SELECT {plan.fingerprint_expr()} FROM people_sql AS src ORDER BY customer_id"),
                plan.fingerprint_params(_fingerprint_context(cfg)),
            ).scalars()
        )


def test_sql_fingerprint_changes_with_every_value_and_the_context(engine):
    cfg = config()
    base = [("c1", "ab", "c", 1), ("c2", "a", "bc", 1), ("c3", "ab", None, 1), ("c4", "ab", "", 1)]
    base.append(("c5", "ab", "c", 2))
    base.append(("c6", "ab", NULL_TAG, 1))  # the tag NULL is hashed from, as a value: not NULL
    base.append(("c7", "c", "ab", 1))  # the same values in other columns
    fps = fingerprints(engine, cfg, base)
    assert len(set(fps)) == len(base)  # moved values, NULL against empty or its tag, an integer: all differ
    assert fingerprints(engine, cfg, base) == fps  # deterministic
    other_salt = config(holdout={"percent": 20, "salt": "salt-2"})
    assert set(fingerprints(engine, other_salt, base)).isdisjoint(fps)  # the context is part of it
    # never equal to the Python path's MD5 hex: a path switch recomputes instead of matching by accident
    ctx = _fingerprint_context(cfg)
    assert all(len(fp) <= 16 and fp != raw_fingerprint(ctx, r[1:]) for fp, r in zip(fps, base, strict=True))


@pytest.mark.parametrize(
    ("lookup_share", "split_min", "pool_min"),
    [(0, 0, 10**9), (10**9, 10**18, 10**9), (0, 0, 0)],
    ids=["halves-and-key-lookups", "one-join", "worker-processes"],
)
def test_database_path_equals_python_path_over_several_runs(
    engine, pg_database, monkeypatch, lookup_share, split_min, pool_min
):
    # both ways to diff (one statement, or two halves at once on two connections), to delete stale members
    # and to normalise (here, or in worker processes, three rows a batch: results must come back in order)
    monkeypatch.setattr(stage_sql, "LOOKUP_SHARE", lookup_share)
    monkeypatch.setattr(stage_sql, "SPLIT_MIN_MEMBERS", split_min)
    monkeypatch.setattr(normalise, "POOL_MIN_ROWS", pool_min)
    monkeypatch.setenv("DATA_OUT_NORMALISE_WORKERS", "2")
    cfg = config()
    history = [
        ROWS,
        ROWS[:6] + [("c8", "new@example.com", None, 13)],
        ROWS[2:] + [("c1", "changed@example.com", None, 7)],
    ]
    in_db, in_py = [], []
    for run_id, rows in enumerate(history, start=1):
        load(engine, rows)
        in_db.append((stage(engine, cfg, run_id), snapshot(engine)))
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM do_member"))
    for run_id, rows in enumerate(history, start=10):
        load(engine, rows)
        in_py.append((stage(engine, cfg, run_id, python=True), snapshot(engine)))
    for (db_stats, db_rows), (py_stats, py_rows) in zip(in_db, in_py, strict=True):
        assert db_stats.path == "database" and py_stats.path == "python"
        # c6's two rows differ: each path keeps the one with its lowest fingerprint, stable but not the same
        assert [r for r in db_rows if r[0] != "c6"] == [r for r in py_rows if r[0] != "c6"]
        # ``recomputed`` differs by design: Python also normalises duplicate rows it then drops
        ignore = {"seconds": 0, "recomputed": 0}
        assert db_stats.as_dict() | ignore == py_stats.as_dict() | ignore
    first = in_db[0][0]
    assert (first.source_rows, first.missing_keys, first.duplicate_keys) == (len(ROWS), 3, 2)
    assert first.members == len(ROWS) - 3 - 2


def test_unchanged_rows_never_reach_python(engine):
    cfg = config()
    load(engine, ROWS)
    assert stage(engine, cfg, 1).recomputed == 7  # one per member
    again = stage(engine, cfg, 2)
    assert (again.path, again.recomputed, again.members) == ("database", 0, 7)


def test_switching_paths_recomputes_once_then_nothing(engine):
    """Each path has its own fingerprint: a move between them normalises every member again, once."""
    cfg = config()
    load(engine, ROWS[:10])  # without a duplicate that differs (Python re-normalises the losing row each run)
    stage(engine, cfg, 1, python=True)
    before = snapshot(engine)
    moved = stage(engine, cfg, 2)
    assert (moved.path, moved.recomputed) == ("database", moved.members)
    assert stage(engine, cfg, 3).recomputed == 0
    assert snapshot(engine) == before  # the same identities, only the fingerprints differ
    assert stage(engine, cfg, 4, python=True).recomputed >= moved.members  # Python also normalises duplicates
    assert stage(engine, cfg, 5, python=True).recomputed == 0


def test_only_a_source_with_duplicates_is_grouped(engine, monkeypatch):
    """The grouped statement (and its second read of the source) runs only when a key appears twice."""
    grouped = []
    original = InDatabaseStaging._find_grouped_delta

    def spy(self, conn):
        grouped.append(True)
        return original(self, conn)

    monkeypatch.setattr(InDatabaseStaging, "_find_grouped_delta", spy)
    cfg = config()
    unique = [r for r in ROWS if r[0] not in {"c5", "c6"}]
    load(engine, unique)
    assert stage(engine, cfg, 1).duplicate_keys == 0 and not grouped
    load(engine, unique + [("c1", "Ann@Example.com ", "+1 415 555 2671", 7)])  # an identical duplicate of a member
    stats = stage(engine, cfg, 2)
    assert (stats.duplicate_keys, stats.recomputed, grouped) == (1, 0, [True])
    load(engine, unique + [("c1", "aaa@example.com", None, 7)])  # a different duplicate: the lowest fingerprint
    first = stage(engine, cfg, 3)
    again = stage(engine, cfg, 4)
    assert first.duplicate_keys == again.duplicate_keys == 1
    assert again.recomputed == 0  # the choice between the two rows is stable from run to run


@pytest.mark.parametrize("split_min", [1, stage_sql.SPLIT_MIN_MEMBERS])
def test_only_members_who_left_are_recorded_as_gone(engine, monkeypatch, split_min):
    """A plan skips the snapshot lookup of a key recorded as gone (``changes.dirty_keys``): a member who
    changed or joined recorded so would never be sent."""
    monkeypatch.setattr(stage_sql, "SPLIT_MIN_MEMBERS", split_min)  # one statement, or two halves at once
    cfg = config()
    load(engine, [("c1", "a@example.com", None, 1), ("c2", "b@example.com", None, 2), ("c3", "c@example.com", None, 3)])
    stage(engine, cfg, 1)
    with engine.begin() as conn:  # a destination has planned: from now on, changed keys are recorded
        changes.set_mark(conn, cfg.name, "warehouse", 0, "shape", None)
    load(engine, [("c1", "e@example.com", None, 1), ("c3", "c@example.com", None, 3), ("c8", "d@example.com", None, 8)])
    stage(engine, cfg, 2)
    d = state.dirty
    with engine.connect() as conn:
        recorded = dict(conn.execute(select(d.c.member_key, d.c.gone).where(d.c.audience == cfg.name)).all())
    assert recorded == {"c1": False, "c2": True, "c8": False}  # changed, left, joined


def test_an_incremental_plan_removes_a_member_staging_recorded_as_gone(engine, pg_database, tmp_path):
    """End to end on Postgres: staged in the database, planned from the recorded keys (the leaver looked up
    in the acknowledged rows only), pushed to the warehouse destination in the same database."""
    import datetime as dt

    from data_out.config import load_audiences
    from data_out.engine.runner import AudienceRunner

    (tmp_path / "sql_stage_v1.yaml").write_text(
        "name: sql_stage_v1\nowner: t\npurpose: t\n"
        f"source: {{conn_id: data_out_warehouse, query: '{SQL}'}}\n"
        "identifiers: {email: email, default_region: US}\ndestinations: [{type: warehouse}]\n"
    )
    runner = AudienceRunner(engine, load_audiences(tmp_path), "sql_stage_v1", lambda conn_id: pg_database)
    at = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    load(engine, [("c1", "a@example.com", None, 1), ("c2", "b@example.com", None, 2), ("c3", "c@example.com", None, 3)])
    runner.run("t/1", at)
    load(engine, [("c1", "e@example.com", None, 1), ("c3", "c@example.com", None, 3), ("c8", "d@example.com", None, 8)])
    runner.run("t/2", at)
    s, d = state.sync, state.dirty
    with engine.connect() as conn:
        held = set(conn.execute(text("SELECT member_key FROM audience_sql_stage_v1")).scalars())
        sync = conn.execute(select(s).order_by(s.c.id.desc()).limit(1)).mappings().one()
        gone = set(conn.execute(select(d.c.member_key).where(d.c.gone)).scalars())
    assert gone == {"c2"}
    assert (sync["diffed_keys"], sync["removed"], sync["added"]) == (3, 1, 1)  # c1's email is not in the table
    assert held == {"c1", "c3", "c8"}


def test_work_mem_is_validated(monkeypatch):
    monkeypatch.setenv("DATA_OUT_STAGING_WORK_MEM", "1GB; DROP TABLE do_member")
    with pytest.raises(ValueError, match="DATA_OUT_STAGING_WORK_MEM"):
        work_mem()
    monkeypatch.setenv("DATA_OUT_STAGING_WORK_MEM", "256MB")
    assert work_mem() == "256MB"


def test_unsafe_column_types_fall_back_to_python(engine):
    """A float's text form differs between Postgres and Python: that source takes the Python path."""
    load(engine, [("c1", "a@example.com", None, 1.5)], ext_type="double precision")
    assert stage(engine, config(), 1).path == "python"


def test_missing_column_is_named(engine):
    load(engine, ROWS)
    cfg = config(identifiers={"email": "mail", "default_region": "US"})
    with pytest.raises(SourceError, match=r"sql_stage_v1.*not \['mail'\]"):
        stage(engine, cfg, 1)


def test_a_failing_query_rolls_back_and_names_the_source(engine):
    cfg = config()
    load(engine, ROWS)
    stage(engine, cfg, 1)
    before = snapshot(engine)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE people_sql ALTER COLUMN ext TYPE text"))
        conn.execute(text("UPDATE people_sql SET ext = 'x' WHERE customer_id = 'c1'"))
    bad = SqlSource(engine, "SELECT customer_id, email, phone, ext::int AS ext FROM people_sql", {}, [], "audience x")
    with pytest.raises(SourceError, match="audience x: the query failed") as err:
        Stager(engine, cfg, 2).stage(bad, {})
    assert "Ann" not in str(err.value)
    assert snapshot(engine) == before


def test_exclusions_are_staged_in_the_database(engine):
    cfg = config()
    load(engine, ROWS)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE buyers AS SELECT ' c1 '::text AS customer_id UNION ALL SELECT 'c2'"))
    buyers = SqlSource(engine, "SELECT customer_id FROM buyers", {}, ["customer_id"], "buyers")
    stats = Stager(engine, cfg, 1).stage(SqlSource(engine, SQL, {}, [], "t"), {"buyers_v1": (buyers, "customer_id")})
    assert stats.excluded == 2


def test_identical_duplicates_of_a_new_key_in_different_batches_are_copied_once(engine):
    """The grouped delta streams one row per key whatever the batch size (here one row per batch)."""
    cfg = config()
    load(engine, [("c1", "a@example.com", None, 1), ("c2", "b@example.com", None, 2), ("c1", "a@example.com", None, 1)])
    source = SqlSource(engine, SQL, {}, [cfg.member_key], "audience sql_stage_v1 (test)")
    stats = Stager(engine, cfg, 1, batch_size=1).stage(source, {})
    assert (stats.path, stats.members, stats.duplicate_keys, stats.recomputed) == ("database", 2, 1, 2)


def _all_visible_pages(engine: Engine) -> int:
    """Pages of do_member that VACUUM recorded as all-visible (pg_class is updated in place, at once)."""
    with engine.connect() as conn:
        return int(conn.scalar(text("SELECT relallvisible FROM pg_class WHERE relname = 'do_member'")) or 0)


def test_a_bulk_change_vacuums_the_snapshot_and_a_small_one_does_not(engine, monkeypatch):
    """After a first sync the snapshot's visibility is recorded now, not by the next sync's first read."""
    cfg = config()
    many = [(f"k{i:05d}", f"u{i}@example.com", None, i) for i in range(3000)]  # several pages of members
    load(engine, many)
    monkeypatch.setattr(state, "VACUUM_AFTER_ROWS", len(many))
    stage(engine, cfg, 1)
    vacuumed = _all_visible_pages(engine)
    assert vacuumed > 0
    load(engine, many[:-10] + [("n1", "n1@example.com", None, 1)])  # 11 changed keys: under the threshold
    stage(engine, cfg, 2)
    assert _all_visible_pages(engine) == vacuumed  # untouched: no VACUUM ran (ANALYZE keeps the count)


def test_a_failed_staging_keeps_its_chunks_and_the_next_takes_them_over_duplicates_included(engine, monkeypatch):
    """The grouped path (a source with duplicate keys) resumes too: a staging that failed after two
    batches left them committed in do_stage; the next one normalises only the rest, and the snapshot,
    figures and counts equal those of a staging that never failed."""
    monkeypatch.setattr(stage_sql, "RESUMABLE_MIN_ROWS", 0)
    monkeypatch.setattr(stage_sql, "RESUME_CHUNK_ROWS", 3)
    cfg = config()
    load(engine, ROWS)
    clean = stage(engine, cfg, 1)
    expected = snapshot(engine)
    with engine.begin() as conn:
        conn.execute(state.member.delete())
        conn.execute(state.snapshot.delete())

    batches = {"n": 0}

    def fail_after_two(name: str) -> None:
        if name == "stage.batch":
            batches["n"] += 1
            if batches["n"] == 2:
                raise RuntimeError("worker lost")

    monkeypatch.setattr(faults, "point", fail_after_two)
    with pytest.raises(RuntimeError, match="worker lost"):
        stage(engine, cfg, 2)
    with engine.connect() as conn:
        kept = conn.scalar(select(func.count()).select_from(state.stage))
    assert kept == 6  # two batches of three, committed; the snapshot itself rolled back
    normalised = []
    row = normalise.Normaliser.identity_row  # every path normalises a row through it
    monkeypatch.setattr(normalise.Normaliser, "identity_row", lambda s, k, r: normalised.append(k) or row(s, k, r))
    resumed = stage(engine, cfg, 3)
    assert snapshot(engine) == expected
    assert (resumed.resumed, len(normalised)) == (6, clean.recomputed - 6)
    assert (resumed.members, resumed.duplicate_keys, resumed.recomputed) == (
        clean.members,
        clean.duplicate_keys,
        clean.recomputed,
    )
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(state.stage)) == 0
