"""In-database staging (Postgres, source in the state database) gives exactly what the Python path gives."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, select, text

from data_out import state
from data_out.config import AudienceConfig
from data_out.connections import ConnectionInfo, engine_for
from data_out.sources.base import SourceError
from data_out.sources.warehouse import SqlSource
from data_out.staging import Stager, StageStats, _fingerprint_context, raw_fingerprint
from data_out.staging_sql import InDatabase
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
    m = state.member
    cols = [c for c in m.columns if c.name != "audience"]
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


def test_fingerprint_in_sql_equals_python(engine):
    cfg = config()
    load(engine, ROWS)
    plan = InDatabase.for_source(engine, SqlSource(engine, SQL, {}, [], "t"), "customer_id", ["email", "phone", "ext"])
    assert plan is not None
    ctx = _fingerprint_context(cfg)
    with engine.connect() as conn:
        got = conn.execute(
            text(f"SELECT email, phone, ext, {plan.fingerprint_expr()} FROM people_sql AS src"),
            plan.fingerprint_params(ctx),
        ).all()
    assert len(got) == len(ROWS)
    for email, phone, ext, fp in got:
        assert fp == raw_fingerprint(ctx, (email, phone, ext))


def test_database_path_equals_python_path_over_several_runs(engine, pg_database):
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
        assert db_rows == py_rows
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


def test_switching_paths_recomputes_nothing(engine):
    """One fingerprint definition: an audience moved between the two paths keeps its snapshot as is."""
    cfg = config()
    load(engine, ROWS[:10])  # without a duplicate that differs (Python re-normalises the losing row each run)
    stage(engine, cfg, 1, python=True)
    assert stage(engine, cfg, 2).recomputed == 0
    assert stage(engine, cfg, 3, python=True).recomputed == 0


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
