"""A state database restored from a backup, then synced again against the same vendors, converges.

Sync, back up the state database (a copy of the SQLite file; on Postgres ``CREATE DATABASE ...
TEMPLATE``), sync a change, restore the backup, sync another change. The restored database numbers
its next syncs and batches exactly as the lost ones were numbered. The webhook receiver keeps its
state throughout and dedupes by ``Idempotency-Key`` (answering a key it has seen from its stored
response): with keys derived from those numbers alone it answered the new batches from the lost
sync's responses, applied nothing, and state recorded them as acknowledged. The Meta stand-in keeps
its audience throughout as well.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine, select, text

from data_out import connections, state
from data_out.config import load_audiences
from data_out.connections import ConnectionInfo, engine_for
from data_out.engine.runner import AudienceRunner
from data_out.state import ensure_schema
from sandbox.standins.base import Running
from sandbox.standins.meta import MetaStandIn
from sandbox.standins.webhook import WebhookStandIn
from tests.conftest import People, write_audience
from tests.data_out.destinations.cases import AUDIENCE, CASES

AS_OF = dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC)


def members(*groups: tuple[str, range]) -> list[dict]:
    return [{"customer_id": f"{p}{i:03d}", "email": f"{p}{i}@example.com"} for p, r in groups for i in r]


FIRST = members(("c", range(30)))
SECOND = members(("c", range(4, 30)), ("n", range(6)))  # four leave, six join
THIRD = members(("c", range(10, 30)), ("n", range(6)), ("m", range(8)))  # after the restore: six more leave, eight join


class Backup:
    """Copies of the state database (which holds the test's source table too), by file or by template."""

    def __init__(self, backend: ConnectionInfo, engine: Engine, pg_admin: Callable[[], Engine], tmp: Path) -> None:
        self.backend, self.engine, self.pg_admin, self.tmp = backend, engine, pg_admin, tmp
        self.copy = f"{backend.schema}_backup" if backend.conn_type == "postgres" else str(tmp / "backup.sqlite")

    def _run(self, *statements: str) -> None:
        self.engine.dispose()
        with self.pg_admin().connect() as conn:
            for sql in statements:
                conn.execute(text(sql))

    def save(self) -> None:
        if self.backend.conn_type == "postgres":
            self._run(f'CREATE DATABASE "{self.copy}" TEMPLATE "{self.backend.schema}"')
        else:
            self.engine.dispose()
            shutil.copyfile(self.backend.host, self.copy)

    def restore(self) -> None:
        if self.backend.conn_type == "postgres":
            db = self.backend.schema
            self._run(f'DROP DATABASE "{db}" WITH (FORCE)', f'CREATE DATABASE "{db}" TEMPLATE "{self.copy}"')
        else:
            self.engine.dispose()
            for suffix in ("-wal", "-shm"):
                Path(self.backend.host + suffix).unlink(missing_ok=True)
            shutil.copyfile(self.copy, self.backend.host)

    def drop(self) -> None:
        if self.backend.conn_type == "postgres":
            self._run(f'DROP DATABASE IF EXISTS "{self.copy}" WITH (FORCE)')


def test_a_restored_state_database_syncs_again_into_the_same_vendors_and_converges(backend, request, tmp_path):
    webhook, meta = WebhookStandIn(), MetaStandIn(auto_create=True)
    with Running(webhook) as hook_at, Running(meta) as meta_at:
        urls = {"webhook": hook_at.url, "meta": meta_at.url}

        def resolve(conn_id: str) -> ConnectionInfo:
            kind = conn_id.removeprefix("data_out_")
            return CASES[kind].connection(urls[kind]) if kind in urls else backend

        write_audience(
            tmp_path / "aud",
            AUDIENCE,
            f"""
            name: {AUDIENCE}
            owner: tests
            purpose: a restored state database
            source: {{conn_id: db, query: "SELECT customer_id, email, phone FROM people"}}
            destinations:
              - {{type: webhook, path: /hooks/crm, fields: [email_sha256], batch_size: 4}}
              - {{type: meta, audience_id: "23850000001", batch_size: 4}}
            """,
        )
        engine = engine_for(backend)
        ensure_schema(engine)
        people = People(engine)
        runner = AudienceRunner(engine, load_audiences(tmp_path / "aud"), AUDIENCE, resolve)
        backup = Backup(backend, engine, lambda: request.getfixturevalue("pg_admin"), tmp_path)
        try:
            people.set(FIRST)
            runner.run("dag/1", AS_OF)
            backup.save()
            people.set(SECOND)
            runner.run("dag/2", AS_OF)
            assert CASES["webhook"].held(webhook) == {m["customer_id"] for m in SECOND}
            backup.restore()
            People(engine).set(THIRD)  # (the restore brought the source table back too)
            runner.run("dag/3", AS_OF)
        finally:
            backup.drop()

    want = THIRD
    assert CASES["webhook"].held(webhook) == {m["customer_id"] for m in want}
    assert CASES["meta"].held(meta) == {CASES["meta"].ident(m) for m in want}
    assert max(webhook.applied.values()) == 1  # a retry never applied twice either
    s = state.sync
    with engine.connect() as conn:
        statuses = conn.execute(select(s.c.destination, s.c.status).order_by(s.c.id)).all()
    assert statuses[-2:] == [("webhook", "success"), ("meta", "success")]
    connections.dispose(backend)
