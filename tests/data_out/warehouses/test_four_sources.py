"""The shipped audiences, evaluated on the demo's sample warehouse loaded into SQLite, Postgres, MariaDB
and DuckDB, sync the same members with the same hashes (and the same holdout split) to the same
destinations: a memory destination (what an ad platform receives) and a warehouse destination."""

from __future__ import annotations

import datetime as dt
import random
import shutil
from pathlib import Path

import pytest
import yaml
from sqlalchemy import Engine, insert

from data_out.config import load_audiences
from data_out.connections import ConnectionInfo, engine_for
from data_out.engine.runner import AudienceRunner
from data_out.metrics.pipeline import send_log_table
from data_out.state import ensure_schema
from sandbox import sample_warehouse
from tests.data_out.warehouses.conftest import KINDS, database
from tests.support import memory_destination

AS_OF = dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC)
PEOPLE = 1_500
SHIPPED = Path(__file__).resolve().parents[3] / "include" / "audiences"
STATUSES = ["sent", "delivered", "opened", "clicked", "unsubscribed", "spammed", "bounced"]


def _send_log(engine: Engine) -> None:
    """Customer.io's send log as the metrics pipeline lands it: the same rows in every database."""
    table = send_log_table("cio_send_log")
    table.metadata.create_all(engine)
    rng = random.Random(23)
    base = AS_OF.replace(tzinfo=None)
    rows = [
        {
            "dedupe_key": f"d{i}",
            "customer_id": f"c{rng.randrange(PEOPLE):07d}",
            "campaign_id": rng.choice([101, 102, 201]),
            "channel": "email",
            "status": rng.choice(STATUSES),
            "occurred_at": base - dt.timedelta(seconds=rng.randrange(0, 5 * 86400)),
            "event_id": f"e{i}",
        }
        for i in range(3_000)
    ]
    with engine.begin() as conn:
        conn.execute(insert(table), rows)


def _audiences(directory: Path) -> list[str]:
    """The shipped SQL audiences, each pointed at the source ``src`` and the destinations under test."""
    shutil.copytree(SHIPPED / "sql", directory / "sql")
    names = []
    for path in sorted(SHIPPED.glob("*.yaml")):
        body = yaml.safe_load(path.read_text())
        if body["source"].get("type", "sql") != "sql":
            continue
        body["source"]["conn_id"] = "src"
        body["destinations"] = [
            {"type": "memory", "audience_id": body["name"]},
            {"type": "warehouse", "conn_id": "dest"},
        ]
        (directory / path.name).write_text(yaml.safe_dump(body))
        names.append(body["name"])
    return names


def _sync_all(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, object]:
    source = database(kind, request, tmp_path, conn_id="src")
    engine = engine_for(source)
    sample_warehouse.generate(engine, people=PEOPLE, as_of=AS_OF)
    _send_log(engine)
    work = tmp_path / kind
    names = _audiences(work / "aud")
    state_info = ConnectionInfo("state", "sqlite", host=str(work / "state.sqlite"))
    dest = ConnectionInfo("dest", "sqlite", host=str(work / "dest.sqlite"))
    state = engine_for(state_info)
    ensure_schema(state)
    loaded = load_audiences(work / "aud")
    assert not loaded.errors, loaded.errors

    def resolve(conn_id: str) -> ConnectionInfo:
        return {"src": source, "dest": dest, "memory_default": ConnectionInfo("memory_default", "memory")}[conn_id]

    memory_destination.STORE.__init__()  # type: ignore[misc]
    for name in names:
        AudienceRunner(state, loaded, name, resolve).run(f"run-{kind}", AS_OF)
    synced: dict[str, object] = {name: sorted(memory_destination.STORE.audience(name).values()) for name in names}
    with engine_for(dest).connect() as conn:
        for name in names:
            for table in (f"audience_{name}", f"audience_{name}_holdout"):
                rows = conn.exec_driver_sql(f"SELECT member_key FROM {table} ORDER BY member_key").all()
                synced[table] = [r[0] for r in rows]
    return synced


def test_the_same_audiences_from_four_databases(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory_destination.MemoryDestination, "max_batch_rows", 10_000)
    results = {kind: _sync_all(kind, request, tmp_path) for kind in KINDS}
    reference = results["postgres"]
    sizes = {name: len(members) for name, members in reference.items() if not name.startswith("audience_")}
    assert sum(1 for n in sizes.values() if n > 0) >= 6, sizes  # the comparison is not of empty sets
    assert any(members for name, members in reference.items() if name.endswith("_holdout"))  # split compared too
    hashed = [m for name in sizes for m in reference[name] if m.email_sha256 and m.phone_sha256]
    assert len(hashed) > 100  # members carry both hashes, so equal rows mean equal hashes
    for kind in KINDS:
        for name, members in reference.items():
            assert results[kind][name] == members, f"{kind}: {name} differs from Postgres"
