"""The state schema is created and migrated by the product, on SQLite and Postgres."""

from __future__ import annotations

import re
import warnings

from sqlalchemy import func, inspect, select, text
from sqlalchemy.exc import SAWarning

from data_out import state
from data_out.connections import engine_for


def test_an_older_schema_is_migrated_in_place_without_losing_rows(backend):
    engine = engine_for(backend)
    with engine.begin() as conn:  # do_ack as an earlier version created it: no "rejected" column
        conn.execute(
            text(
                "CREATE TABLE do_ack (audience VARCHAR(64) NOT NULL, destination VARCHAR(64) NOT NULL, "
                "member_key VARCHAR(256) NOT NULL, email_sha256 VARCHAR(64), phone_sha256 VARCHAR(64), "
                "external_id VARCHAR(256), extra TEXT, in_holdout BOOLEAN, acked_at TIMESTAMP NOT NULL, "
                "PRIMARY KEY (audience, destination, member_key))"
            )
        )
        conn.execute(
            text(
                "INSERT INTO do_ack (audience, destination, member_key, acked_at) "
                "VALUES ('a_v1', 'meta', 'k1', CURRENT_TIMESTAMP)"
            )
        )
    state.ensure_schema(engine)
    assert "rejected" in {c["name"] for c in inspect(engine).get_columns("do_ack")}
    with engine.connect() as conn:
        assert conn.execute(select(state.ack.c.member_key, state.ack.c.rejected)).all() == [("k1", False)]
        assert conn.scalar(select(func.max(state.schema_version.c.version))) == state.SCHEMA_VERSION
    state.ensure_schema(engine)  # idempotent


def test_version_3_drops_the_recorded_keys_and_every_plan_mark(backend):
    # do_dirty as version 2 created it (a primary key over the keys), with a recorded key and a mark that
    # relies on it: the keys go, and so does the mark, so the next plan is a full diff instead of a blind one
    engine = engine_for(backend)
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE do_dirty (audience VARCHAR(64) NOT NULL, change_id BIGINT NOT NULL, "
                "member_key VARCHAR(256) NOT NULL, PRIMARY KEY (audience, change_id, member_key))"
            )
        )
        conn.execute(text("INSERT INTO do_dirty VALUES ('a_v1', 7, 'k1')"))
    state.metadata.create_all(engine, tables=[state.schema_version, state.plan_mark])
    with engine.begin() as conn:
        conn.execute(state.schema_version.insert(), [{"version": v, "applied_at": state.utcnow()} for v in (1, 2)])
        conn.execute(
            state.plan_mark.insert().values(
                audience="a_v1", destination="meta", change_id=7, shape="s", sync_id=1, at=state.utcnow()
            )
        )
    state.ensure_schema(engine)
    with engine.connect() as conn:  # (a plain query first: SQLite's pragmas may read a cached schema)
        assert conn.scalar(select(func.count()).select_from(state.dirty)) == 0
        assert conn.scalar(select(func.count()).select_from(state.plan_mark)) == 0
        assert conn.scalar(select(func.max(state.schema_version.c.version))) == state.SCHEMA_VERSION
    inspector = inspect(engine)
    assert inspector.get_pk_constraint("do_dirty")["constrained_columns"] == []
    assert [i["column_names"] for i in inspector.get_indexes("do_dirty")] == [["audience", "change_id"]]


def test_version_4_gives_unsent_batches_a_random_key_and_keeps_the_keys_of_attempted_ones(backend):
    # batches as version 3 planned them, with keys derived from sequence ids alone: the one never sent
    # takes a fresh random key; the one attempted keeps its key, which the vendor may have applied
    engine = engine_for(backend)
    state.ensure_schema(engine)
    old = {0: "do-" + "a" * 40, 1: "do-" + "b" * 40}
    with engine.begin() as conn:
        conn.execute(state.schema_version.delete().where(state.schema_version.c.version > 3))
        conn.execute(
            state.batch.insert(),
            [
                {
                    "audience": "a_v1",
                    "destination": "meta",
                    "batch_no": no,
                    "op": "add",
                    "idempotency_key": key,
                    "rows": 1,
                    "planned_by": 7,
                    "attempts": no,  # batch 0 never attempted, batch 1 attempted once
                }
                for no, key in old.items()
            ],
        )
    state.ensure_schema(engine)
    with engine.connect() as conn:
        keys = dict(conn.execute(select(state.batch.c.batch_no, state.batch.c.idempotency_key)).all())
        assert conn.scalar(select(func.max(state.schema_version.c.version))) == state.SCHEMA_VERSION
    assert keys[1] == old[1]
    assert re.fullmatch(r"do-a{32}-[0-9a-f]{16}", keys[0]), keys[0]
    state.ensure_schema(engine)  # idempotent: the key is not drawn again
    with engine.connect() as conn:
        assert conn.scalar(select(state.batch.c.idempotency_key).where(state.batch.c.batch_no == 0)) == keys[0]


def test_version_6_indexes_acknowledgements_by_age_and_keeps_them(backend):
    # do_ack as version 5 created it (no index on acked_at), with a row: refreshes read a destination's
    # oldest acknowledgements through the new index; the rows and their ages are kept as they are
    engine = engine_for(backend)
    state.ensure_schema(engine)
    acked_at = state.utcnow().replace(microsecond=0)
    with engine.begin() as conn:
        conn.execute(text(f"DROP INDEX {state.ACK_AGE_INDEX}"))
        conn.execute(state.schema_version.delete().where(state.schema_version.c.version > 5))
        conn.execute(
            state.ack.insert().values(audience="a_v1", destination="google", member_key="k1", acked_at=acked_at)
        )
    assert state.ACK_AGE_INDEX not in {i["name"] for i in inspect(engine).get_indexes("do_ack")}
    state.ensure_schema(engine)
    indexes = {i["name"]: i["column_names"] for i in inspect(engine).get_indexes("do_ack")}
    assert indexes[state.ACK_AGE_INDEX] == ["audience", "destination", "acked_at"]
    with engine.connect() as conn:
        assert conn.scalar(select(func.max(state.schema_version.c.version))) == state.SCHEMA_VERSION
        (key, at) = conn.execute(select(state.ack.c.member_key, state.ack.c.acked_at)).one()
    assert key == "k1" and at.replace(tzinfo=at.tzinfo or acked_at.tzinfo) == acked_at
    state.ensure_schema(engine)  # idempotent


def test_version_7_keys_pending_rows_by_batch_and_keeps_every_planned_change(backend):
    # do_pending as version 6 created it (keyed by operation and member, a second index by batch), with a
    # member planned twice (the removal of an old identity, then the add of the new one) and another's
    # refresh: the table is rebuilt under its new key with every row, since a lost removal is never sent
    engine = engine_for(backend)
    state.ensure_schema(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE do_pending"))
        conn.execute(
            text(
                "CREATE TABLE do_pending (audience VARCHAR(64) NOT NULL, destination VARCHAR(64) NOT NULL, "
                "op VARCHAR(8) NOT NULL, member_key VARCHAR(256) NOT NULL, batch_no INTEGER NOT NULL, "
                "email_sha256 VARCHAR(64), phone_sha256 VARCHAR(64), external_id VARCHAR(256), extra TEXT, "
                "in_holdout BOOLEAN, PRIMARY KEY (audience, destination, op, member_key))"
            )
        )
        conn.execute(text("CREATE INDEX ix_do_pending_batch ON do_pending (audience, destination, batch_no)"))
        conn.execute(
            text(
                "INSERT INTO do_pending (audience, destination, op, member_key, batch_no, email_sha256) VALUES "
                "('a_v1', 'meta', 'remove', 'k1', 0, 'old'), ('a_v1', 'meta', 'add', 'k1', 1, 'new'), "
                "('a_v1', 'meta', 'refresh', 'k2', 2, 'same')"
            )
        )
        conn.execute(state.schema_version.delete().where(state.schema_version.c.version > 6))
    state.ensure_schema(engine)
    inspector = inspect(engine)
    assert inspector.get_pk_constraint("do_pending")["constrained_columns"] == state.PENDING_KEY
    assert inspector.get_indexes("do_pending") == []
    p = state.pending
    with engine.connect() as conn:
        rows = conn.execute(select(p.c.batch_no, p.c.op, p.c.member_key, p.c.email_sha256).order_by(p.c.batch_no))
        assert rows.all() == [(0, "remove", "k1", "old"), (1, "add", "k1", "new"), (2, "refresh", "k2", "same")]
        assert conn.scalar(select(func.max(state.schema_version.c.version))) == state.SCHEMA_VERSION
        tables = set(inspect(conn).get_table_names())
    assert "do_pending_v6" not in tables
    state.ensure_schema(engine)  # idempotent
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(p)) == 3


def test_version_8_makes_the_resume_log_unlogged_on_postgres_and_keeps_its_rows(backend):
    # do_stage as version 7 left it (a logged table on Postgres), with a row an interrupted staging
    # committed: the table becomes unlogged (no write-ahead log for millions of resume rows) and the row
    # stays, so the next attempt still takes it over
    engine = engine_for(backend)
    state.ensure_schema(engine)
    postgres = engine.dialect.name == "postgresql"
    s = state.stage
    with engine.begin() as conn:
        if postgres:
            conn.execute(text("ALTER TABLE do_stage SET LOGGED"))
        conn.execute(state.schema_version.delete().where(state.schema_version.c.version > 7))
        conn.execute(s.insert().values(audience="a_v1", run_id=3, member_key="k1", computed=True, raw_fp="fp"))
    state.ensure_schema(engine)
    with engine.connect() as conn:
        if postgres:
            persistence = conn.scalar(text("SELECT relpersistence FROM pg_class WHERE relname = 'do_stage'"))
            assert persistence == "u"
        assert conn.execute(select(s.c.member_key, s.c.raw_fp)).all() == [("k1", "fp")]
        assert conn.scalar(select(func.max(state.schema_version.c.version))) == state.SCHEMA_VERSION
    state.ensure_schema(engine)  # idempotent


def test_migrating_postgres_warns_about_nothing_with_the_bigquery_extra_loaded(pg_database):
    # sqlalchemy-bigquery registers ``func.unnest`` as a class that opts out of SQLAlchemy's statement
    # cache and warns when used; SQLAlchemy's own reflection of a Postgres primary key calls it, so the
    # migration reads the key from the catalog instead
    import sqlalchemy_bigquery  # noqa: F401  (the registration is the import's side effect)

    engine = engine_for(pg_database)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SAWarning)
        state.ensure_schema(engine)
    with engine.connect() as conn:
        assert state._primary_key(conn, "do_pending") == state.PENDING_KEY
        assert state._primary_key(conn, "do_ack") == ["audience", "destination", "member_key"]
