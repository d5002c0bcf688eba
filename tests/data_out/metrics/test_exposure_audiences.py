"""Audiences derived from the send log expire by themselves; do-not-contact suppresses everywhere."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

from sqlalchemy import text

from data_out.config import DEFAULT_AUDIENCES_DIR, load_audiences
from data_out.connections import ConnectionInfo, engine_for
from data_out.engine.runner import AudienceRunner
from data_out.metrics.pipeline import send_log_table
from data_out.state import ensure_schema
from tests.conftest import write_audience

T0 = dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC)


def setup(tmp_path: Path):  # type: ignore[no-untyped-def]
    engine = engine_for(ConnectionInfo("db", "sqlite", host=str(tmp_path / "db.sqlite")))
    ensure_schema(engine)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE customers (customer_id TEXT, email TEXT, phone TEXT)"))
        conn.execute(
            text("INSERT INTO customers VALUES ('c1', 'one@example.com', NULL), ('c2', 'two@example.com', NULL)")
        )
    send_log_table("cio_send_log").metadata.create_all(engine)
    return engine


def log_send(engine, key: str, customer: str, status: str, at: dt.datetime) -> None:  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        conn.execute(
            send_log_table("cio_send_log")
            .insert()
            .values(
                dedupe_key=key,
                customer_id=customer,
                channel="email",
                status=status,
                campaign_id=101,
                occurred_at=at.replace(tzinfo=None),
                event_id=key,
            )
        )


def test_cart_exposure_includes_a_member_and_drops_them_when_the_window_passes(tmp_path, store):
    engine = setup(tmp_path)
    aud_dir = tmp_path / "aud"
    (aud_dir / "sql").mkdir(parents=True)
    shutil.copy(DEFAULT_AUDIENCES_DIR / "sql" / "cart_msg_exposed_12h.sql", aud_dir / "sql")
    shipped = (DEFAULT_AUDIENCES_DIR / "cio_cart_msg_exposed_12h_v1.yaml").read_text()
    (aud_dir / "cio_cart_msg_exposed_12h_v1.yaml").write_text(
        shipped.replace("conn_id: data_out_warehouse", "conn_id: db").split("destinations:")[0]
        + "destinations: [{type: memory}]\nguard: {allow_empty_source: true, max_removal_share: 1}\n"
    )
    log_send(engine, "k1", "c1", "delivered", T0 - dt.timedelta(hours=1))

    def members(at: dt.datetime) -> set[str]:
        runner = AudienceRunner(
            engine,
            load_audiences(aud_dir),
            "cio_cart_msg_exposed_12h_v1",
            lambda c: ConnectionInfo(c, "sqlite", host=str(tmp_path / "db.sqlite")),
        )
        runner.run(f"t/{at.isoformat()}", at)
        return set(store.audience("aud-1"))

    assert members(T0) == {"c1"}
    assert members(T0 + dt.timedelta(hours=10)) == {"c1"}
    assert members(T0 + dt.timedelta(hours=11, minutes=1)) == set()  # 12 h after the send: re-entry
    log_send(engine, "k2", "c1", "sent", T0 + dt.timedelta(hours=12))
    assert members(T0 + dt.timedelta(hours=12, minutes=5)) == {"c1"}  # a new cart message: exposed again


def test_do_not_contact_is_excluded_from_every_targeting_audience(tmp_path):
    d = tmp_path / "aud"
    write_audience(
        d,
        "dnc_v1",
        """
        name: dnc_v1
        owner: t
        purpose: do not contact
        role: suppression
        suppress_everywhere: true
        source: {query: "SELECT customer_id, email FROM x"}
        destinations: [{type: meta, audience_id: "1"}]
    """,
    )
    write_audience(
        d,
        "target_v1",
        """
        name: target_v1
        owner: t
        purpose: targeting
        source: {query: "SELECT customer_id, email FROM x"}
        destinations: [{type: meta, audience_id: "2"}]
    """,
    )
    write_audience(
        d,
        "internal_v1",
        """
        name: internal_v1
        owner: t
        purpose: warehouse only, not an activation
        source: {query: "SELECT customer_id, email FROM x"}
        destinations: [{type: warehouse}]
    """,
    )
    loaded = load_audiences(d).audiences
    assert loaded["target_v1"].config.exclusions == ["dnc_v1"]
    assert loaded["internal_v1"].config.exclusions == []
    assert loaded["dnc_v1"].config.exclusions == []
