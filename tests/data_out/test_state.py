"""The state schema is created and migrated by the product, on SQLite and Postgres."""

from __future__ import annotations

from sqlalchemy import func, inspect, select, text

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
