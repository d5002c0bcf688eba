"""The state database: schema, creation and small dialect helpers (this module); how its outages are
told apart from bugs (``state.errors``); the deploy step that creates or upgrades it (``state.migrate``).

This is the product's memory and is never Airflow's metadata database. The same SQLAlchemy Core schema
and statements run on SQLite (the embedded default) and Postgres (production).

What lives here, and why:

* ``do_member``: the latest source snapshot of each audience, already normalised and hashed, with a
  fingerprint of the raw values so an unchanged row is never normalised twice. No raw identifiers.
* ``do_stage``: the snapshot being built by the current run; merged into ``do_member`` in one
  transaction, then emptied. A resume log, unlogged on Postgres: a crash of the server empties it,
  and the next attempt normalises again.
* ``do_exclusion``: member keys of the audiences an audience is told to exclude, as of the current run.
* ``do_ack``: per (audience, destination) exactly what the destination acknowledged, with the hashed
  identifiers that were sent (so a removal sends the same hashes as the add did).
* ``do_pending`` / ``do_batch``: the planned diff, numbered into batches with their idempotency keys,
  written before anything is pushed. A crashed run's batches are replayed with the same keys.
* ``do_run`` / ``do_sync``: run history per audience run and per destination sync.
* ``do_reject``: row-level rejects with the *hashed* member key and the destination's reason.
* ``do_lease``: which run owns an audience right now (two runs of one audience never interleave).
* ``do_change`` / ``do_dirty`` / ``do_plan_mark``: what changed since each destination was last planned
  (``engine/changes.py``), so a quiet day's plan looks at the changed members only, not the whole audience.
* ``do_snapshot``: the figures of each audience's snapshot, kept with it so staging can carry them
  forward instead of recounting (``engine/figures.py``).
* ``do_ack_count``: each destination's acknowledged total, kept by every commit (a plan reads it
  instead of counting 10M rows).
* ``do_ui_lookup``: who looked a person up in the Data Out UI (user and hash only, ``data_out.ui``).
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    DefaultClause,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    any_,
    bindparam,
    false,
    func,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import DBAPIError, NoSuchTableError
from sqlalchemy.sql.dml import Insert

from data_out.modes import SyncMode

SCHEMA_VERSION = 8

metadata = MetaData()

# SQLite only auto-increments INTEGER PRIMARY KEY; BigInteger elsewhere.
_Id = BigInteger().with_variant(Integer(), "sqlite")

_KEY = String(256)
_HASH = String(64)
_AUD = String(64)
_DEST = String(64)

schema_version = Table(
    "do_schema_version",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)


def _member_columns() -> list[Column[Any]]:
    """The same identity columns in snapshot and stage (new objects each time: a column joins one table)."""
    return [
        Column("raw_fp", String(32), nullable=False),
        Column("bucket", Integer),
        Column("email_sha256", _HASH),
        Column("phone_e164_sha256", _HASH),
        Column("phone_digits_sha256", _HASH),
        Column("external_id", _KEY),
        Column("extra", Text),
        Column("email_issue", String(16)),
        Column("phone_issue", String(16)),
        Column("external_id_issue", String(16)),
        Column("email_google_sha256", _HASH),  # Google's Data Manager form of the email (identity.google_email)
        Column("id_notes", Text),  # identifier quality reason codes (identity.REASONS), " a b ": never a value
    ]


member = Table(
    "do_member",
    metadata,
    Column("audience", _AUD, primary_key=True),
    Column("member_key", _KEY, primary_key=True),
    *_member_columns(),
)

stage = Table(
    "do_stage",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("audience", _AUD, nullable=False),
    Column("run_id", _Id, nullable=False),
    Column("member_key", _KEY, nullable=False),
    Column("computed", Boolean, nullable=False),
    *_member_columns(),
    Index("ix_do_stage_run_key", "run_id", "member_key", "raw_fp"),
    Index("ix_do_stage_audience", "audience"),
)

exclusion = Table(
    "do_exclusion",
    metadata,
    Column("audience", _AUD, primary_key=True),
    Column("member_key", _KEY, primary_key=True),
)

#: the refresh planner reads a destination's oldest acknowledgements through this index (schema version 6)
ACK_AGE_INDEX = "ix_do_ack_age"


def _identity() -> list[Column[Any]]:
    """Identity columns shared by ack and pending (see MemberRow)."""
    return [
        Column("email_sha256", _HASH),
        Column("phone_sha256", _HASH),
        Column("external_id", _KEY),
        Column("extra", Text),
        Column("in_holdout", Boolean),
    ]


ack = Table(
    "do_ack",
    metadata,
    Column("audience", _AUD, primary_key=True),
    Column("destination", _DEST, primary_key=True),
    Column("member_key", _KEY, primary_key=True),
    *_identity(),
    # a rejected add is remembered (with the identity that was refused) so it is not re-sent every run;
    # it is retried when the member's identifiers change
    Column("rejected", Boolean, nullable=False, default=False, server_default=false()),
    # when the destination last acknowledged the member (an add, a refresh, a replace): members of a
    # destination whose memberships expire are refreshed by age (``plan.refresh_policy``)
    Column("acked_at", DateTime(timezone=True), nullable=False),
    # the sync (do_sync.id) and batch number whose commit wrote the row (an add, a refresh; NULL batch: a
    # replace), so the member lookup can name the last add: two integers on a row the commit writes
    # anyway, where a per-member history table would add a row per member per change
    Column("acked_sync", _Id),
    Column("acked_batch", Integer),
    Index(ACK_AGE_INDEX, "audience", "destination", "acked_at"),
)

pending = Table(
    "do_pending",
    metadata,
    Column("audience", _AUD, primary_key=True),
    Column("destination", _DEST, primary_key=True),
    # Keyed by batch, then member: the one index serves the pushes, which read and delete a batch at a
    # time, and a plan writes each batch's rows next to each other in it. A member is in a batch once
    # (the plan has one row per member and operation, and a batch holds one operation); a second index by
    # member, which only the person lookup would read, cost a 10M first sync's plan a random insert per row.
    Column("batch_no", Integer, primary_key=True),
    Column("member_key", _KEY, primary_key=True),
    Column("op", String(8), nullable=False),
    *_identity(),
)

batch = Table(
    "do_batch",
    metadata,
    Column("audience", _AUD, primary_key=True),
    Column("destination", _DEST, primary_key=True),
    Column("batch_no", Integer, primary_key=True),
    Column("op", String(8), nullable=False),
    Column("idempotency_key", String(64), nullable=False),
    Column("rows", Integer, nullable=False),
    Column("planned_by", _Id, nullable=False),  # do_sync.id of the sync that planned it
    Column("attempts", Integer, nullable=False, default=0),
    # the push shard (mapped task) that owns the batch, and how many the plan had: fixed at plan time,
    # so a replay after a crash drains the same batches in the same order
    Column("shard", Integer, nullable=False, default=0, server_default="0"),
    Column("shards", Integer, nullable=False, default=1, server_default="1"),
)

run = Table(
    "do_run",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("audience", _AUD, nullable=False),
    Column("dag_run_id", String(250)),
    Column("as_of", DateTime(timezone=True)),
    Column("status", String(16), nullable=False),  # running | success | failed
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("source_rows", BigInteger),
    Column("source_reported", BigInteger),
    Column("members", BigInteger),
    Column("duplicate_keys", BigInteger),
    Column("missing_keys", BigInteger),
    Column("recomputed", BigInteger),  # rows whose identifiers changed and were normalised again
    Column("resumed", BigInteger),  # of those, rows taken over from a staging that was killed half-way
    Column("excluded", BigInteger),
    Column("held_out", BigInteger),
    Column("identifier_issues", JSON),  # {"email_missing": n, "email_invalid": n, ...}
    Column("desired", JSON),  # {destination: [desired, unmatchable]}, counted by staging for the plans
    Column("stage_seconds", Float),
    # "full" (source compared with the snapshot row by row) or "changed" (rows the change column flagged
    # plus a key-only pass); NULL for runs recorded before the distinction
    Column("comparison", String(16)),
    Column("error", Text),
    Index("ix_do_run_audience", "audience", "id"),
)

sync = Table(
    "do_sync",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("run_id", _Id, nullable=False),
    Column("audience", _AUD, nullable=False),
    Column("destination", _DEST, nullable=False),
    Column("destination_type", String(32), nullable=False),
    Column("mode", String(16), nullable=False, default=SyncMode.INCREMENTAL.value),
    Column("status", String(16), nullable=False),  # planned | success | failed | guarded
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("desired", BigInteger),
    Column("unmatchable", BigInteger),  # desired members with none of the destination's identifiers
    Column("planned_adds", BigInteger),
    Column("planned_removes", BigInteger),
    Column("changed", BigInteger),  # members whose sent identifiers changed (remove old + add new)
    Column("planned_refreshes", BigInteger),  # acknowledged members re-sent before their membership expires
    Column("diffed_keys", BigInteger),  # an incremental plan: members changed since the last plan; NULL: full diff
    Column("resumed_batches", Integer),
    Column("added", BigInteger, default=0),
    Column("removed", BigInteger, default=0),
    Column("refreshed", BigInteger, default=0),  # re-sent members acknowledged again: neither added nor removed
    Column("rejected", BigInteger, default=0),
    Column("batches", Integer, default=0),
    Column("received", BigInteger),
    Column("matched", BigInteger),
    Column("destination_size", BigInteger),
    Column("acked_size", BigInteger),
    Column("guard", Text),  # the guard's decision, including an override and its reason
    Column("preview", JSON),  # dry runs: what would have been done, with hashed sample keys
    Column("plan_seconds", Float),
    Column("push_seconds", Float),  # summed over push shards: work time, not wall time
    Column("shards", Integer),  # push shards planned (mapped push tasks)
    Column("shards_done", BigInteger),  # bit i set once shard i pushed everything: order-free, idempotent
    Column("error", Text),
    Index("ix_do_sync_audience", "audience", "destination", "id"),
)

reject = Table(
    "do_reject",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("sync_id", _Id, nullable=False),
    Column("audience", _AUD, nullable=False),
    Column("destination", _DEST, nullable=False),
    Column("op", String(8), nullable=False),
    Column("member_key_sha256", _HASH, nullable=False),
    Column("reason", String(500), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    # the Health tab groups a window's rejects by sync, the member lookup finds a person's rejects
    Index("ix_do_reject_sync", "sync_id"),
    Index("ix_do_reject_member", "member_key_sha256"),
)

recon_run = Table(
    "do_recon_run",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("dag_run_id", String(250)),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("breaches", Integer),
    Column("repaired", Integer),
    Column("emails", Integer),
)

recon_measure = Table(
    "do_recon_measure",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("recon_id", _Id, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("audience", _AUD, nullable=False),
    Column("destination", _DEST, nullable=False),
    Column("desired", BigInteger),
    Column("acked", BigInteger),
    Column("destination_size", BigInteger),
    Index("ix_do_recon_measure", "audience", "destination", "id"),
)

recon = Table(
    "do_recon",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("recon_id", _Id, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("audience", _AUD, nullable=False),
    Column("destination", _DEST, nullable=False),  # "*" for audience-wide and global checks
    Column("check", String(64), nullable=False),
    Column("value", Float),
    Column("threshold", Float),
    Column("status", String(16), nullable=False),  # ok | breach | skipped
    Column("detail", Text),
    Column("repaired", Boolean, nullable=False, default=False),
    Index("ix_do_recon_key", "audience", "destination", "check", "id"),
)

alert_state = Table(
    "do_alert_state",
    metadata,
    Column("audience", _AUD, primary_key=True),
    Column("destination", _DEST, primary_key=True),
    Column("check", String(64), primary_key=True),
    Column("open", Boolean, nullable=False),
    Column("since", DateTime(timezone=True), nullable=False),
)

metric_event = Table(
    "do_metric_event",
    metadata,
    Column("event_id", String(64), primary_key=True),  # Customer.io retries for days: idempotent by event_id
    Column("metric", String(16), nullable=False),
    Column("channel", String(32), nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("day", String(10), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("customer_id", _KEY),
    Column("cio_id", String(64)),
    Column("email_sha256", _HASH),
    Column("delivery_id", String(128)),
    Column("campaign_id", BigInteger),
    Column("campaign_name", String(200)),
    Column("broadcast_id", BigInteger),
    Column("action_id", BigInteger),
    Column("link_id", BigInteger),
    Column("href", String(500)),
    Index("ix_do_metric_event_received", "received_at"),
    Index("ix_do_metric_event_day", "day", "metric"),
    Index("ix_do_metric_event_customer", "customer_id"),  # the member lookup's send history
)

task_route = Table(
    "do_task_route",
    metadata,
    Column("dedupe_key", String(64), primary_key=True),
    Column("route", String(32), primary_key=True),
    Column("delivered_at", DateTime(timezone=True), nullable=False),
)

metric_volume = Table(
    "do_metric_volume",
    metadata,
    Column("day", String(10), primary_key=True),  # YYYY-MM-DD, UTC
    Column("metric", String(32), primary_key=True),
    Column("count", BigInteger, nullable=False),
)

lifecycle = Table(
    "do_lifecycle",
    metadata,
    Column("audience", _AUD, primary_key=True),
    Column("status", String(16), nullable=False),  # retired: every member left every destination
    Column("at", DateTime(timezone=True), nullable=False),
    Column("run_id", _Id),
)

ack_count = Table(
    "do_ack_count",
    metadata,
    Column("audience", _AUD, primary_key=True),
    Column("destination", _DEST, primary_key=True),
    # acknowledged, not rejected rows of do_ack: kept by every commit in the same transaction (engine/push.py)
    Column("acked", BigInteger, nullable=False),
)

change = Table(
    "do_change",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("audience", _AUD, nullable=False),
    # NULL: the audience's snapshot or exclusions changed (every destination); else one destination's own
    # (a removal it refused, to be planned again)
    Column("destination", _DEST),
    Column("run_id", _Id),
    Column("kind", String(16), nullable=False),
    Column("key_count", BigInteger, nullable=False),
    # False: the changed keys were not recorded (too many, or nobody could use them): plans after it are full
    Column("recorded", Boolean, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Index("ix_do_change_audience", "audience", "id"),
)

dirty = Table(
    "do_dirty",
    metadata,
    Column("audience", _AUD, nullable=False),
    Column("change_id", _Id, nullable=False),
    Column("member_key", _KEY, nullable=False),
    # The member left the snapshot in this change. A plan skips the snapshot lookup of a key every
    # change since its mark recorded as gone: a lookup that finds nothing, on the page the delete just
    # left behind (at 10M, a churn's 100,000 leavers cost the first plan seconds of random reads, and
    # dirtied the pages they read). False when unknown: the plan then looks the key up, as it always may.
    Column("gone", Boolean, nullable=False, default=False, server_default=false()),
    # Not a unique index over the keys: a day's change records hundreds of thousands of them in hash
    # order, and keeping such an index up to date costs a random index write per key on every churn
    # sync. ``changes.add_keys`` records a key once per change (twice when it is known gone and also
    # recorded without knowing); readers group by key anyway.
    Index("ix_do_dirty_change", "audience", "change_id"),
)

snapshot = Table(
    "do_snapshot",
    metadata,
    Column("audience", _AUD, primary_key=True),
    Column("members", BigInteger, nullable=False),
    # the figures staging counted in the audience's snapshot (``engine/figures.py``), in the transaction that
    # wrote it, with a hash of the SQL that counted them: the next staging may carry them forward
    Column("figures", JSON, nullable=False),
    Column("shape", String(64), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    # with a source's change column (``engine/quiet.py``): the highest change value the snapshot reflects (as
    # Postgres' text form), a hash of what that mark is valid for, and when the source was last compared in full
    Column("change_mark", String(64)),
    Column("change_basis", String(64)),
    Column("compared_at", DateTime(timezone=True)),
)

plan_mark = Table(
    "do_plan_mark",
    metadata,
    Column("audience", _AUD, primary_key=True),
    Column("destination", _DEST, primary_key=True),
    # every change up to this id is reflected in the destination's acknowledged and pending rows
    Column("change_id", _Id, nullable=False),
    Column("shape", String(64), nullable=False),  # what else shapes the desired set (see changes.shape)
    Column("sync_id", _Id),
    Column("at", DateTime(timezone=True), nullable=False),
)

ui_lookup = Table(
    "do_ui_lookup",
    metadata,
    # who looked a person up in the Data Out UI, and when: the hash of what was entered, never the value
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("username", String(250), nullable=False),
    Column("kind", String(16), nullable=False),  # email | phone | member_key
    Column("value_sha256", _HASH),  # NULL: the value did not normalise, nothing was looked up
    Column("audiences_found", Integer, nullable=False),
)

lease = Table(
    "do_lease",
    metadata,
    Column("audience", _AUD, primary_key=True),
    Column("holder", String(250), nullable=False),
    Column("acquired_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


#: how often ``ensure_schema`` starts over after losing a race with another task creating the schema
SCHEMA_RACE_ATTEMPTS = 5


def ensure_schema(engine: Engine) -> None:
    """Create missing tables, add missing columns, record the schema version; safe from every task.

    Schema changes so far are additive (new tables, new nullable or defaulted columns), applied here
    with ``ALTER TABLE ... ADD COLUMN`` on SQLite and Postgres alike. A change that is not additive must
    come with an explicit step in ``_MIGRATIONS`` and a version bump.

    The first tasks on an empty database (every audience's first scheduled run at once) create the
    schema concurrently: see ``retry_schema_race``.
    """
    retry_schema_race(lambda: _ensure_schema(engine))


def create_tables(engine: Engine, md: MetaData) -> None:
    """``md.create_all`` that two tasks can run at once (a plan and a push of one audience, say): the check
    and the ``CREATE`` are separate statements, so the loser of that race sees "already exists"."""
    retry_schema_race(lambda: md.create_all(engine, checkfirst=True))


def retry_schema_race(step: Callable[[], None]) -> None:
    """Run a schema step; the one that finds a table, column or row another task just created starts over,
    and then finds it all in place. Any other error is raised at once."""
    for attempt in range(1, SCHEMA_RACE_ATTEMPTS + 1):
        try:
            step()
            return
        except (DBAPIError, NoSuchTableError) as exc:
            if attempt == SCHEMA_RACE_ATTEMPTS or not _lost_schema_race(exc):
                raise
            time.sleep(0.1 * attempt)  # let the winner's transaction finish


def _lost_schema_race(exc: DBAPIError | NoSuchTableError) -> bool:
    """Another task created the same table, column or version row between our check and our write, or
    dropped a table a migration step recreates while we inspected it."""
    if isinstance(exc, NoSuchTableError):
        return True
    text_ = str(exc.orig).lower()
    return any(s in text_ for s in ("already exists", "duplicate column", "duplicate key", "unique constraint"))


def _ensure_schema(engine: Engine) -> None:
    metadata.create_all(engine, checkfirst=True)
    _add_missing_columns(engine)
    with engine.begin() as conn:
        current = conn.scalar(select(func.max(schema_version.c.version)))
        if current is not None and current > SCHEMA_VERSION:
            raise RuntimeError(
                f"the state database is at schema version {current}, newer than this code "
                f"({SCHEMA_VERSION}); upgrade the data_out package on this worker"
            )
        for version in range((current or 0) + 1, SCHEMA_VERSION + 1):
            for step in _MIGRATIONS.get(version, ()):
                if callable(step):
                    step(conn)
                else:
                    conn.execute(text(step))
            conn.execute(insert(schema_version).values(version=version, applied_at=utcnow()))
    metadata.create_all(engine, checkfirst=True)  # what a step dropped comes back in today's shape


def _rekey_unsent_batches(conn: Connection) -> None:
    """Version 4: idempotency keys carry a random part (``plan.idempotency_key``).

    Batches planned before it carry keys derived from sequence ids alone, which a restored backup or
    another installation reuses. A batch never attempted was never sent, so it takes a fresh random
    key; one already attempted keeps its key, since the vendor may have applied it under that key and
    a retry must present the same one.
    """
    b = batch
    unsent = conn.execute(
        select(b.c.audience, b.c.destination, b.c.batch_no, b.c.idempotency_key).where(b.c.attempts == 0)
    )
    for audience, destination, batch_no, key in unsent.all():
        fresh = f"{key[:35]}-{secrets.token_hex(8)}"
        mine = (b.c.audience == audience, b.c.destination == destination, b.c.batch_no == batch_no)
        conn.execute(b.update().where(*mine, b.c.attempts == 0).values(idempotency_key=fresh))


#: the primary key of ``do_pending`` from version 7 on (before it: audience, destination, op, member_key)
PENDING_KEY = ["audience", "destination", "batch_no", "member_key"]
_PENDING_BATCH_INDEX = "ix_do_pending_batch"  # up to version 6, beside the key by member


def _primary_key(conn: Connection, table: str) -> list[str]:
    """The columns of a table's primary key, in order.

    On Postgres read from the catalog: SQLAlchemy's reflection of it calls ``func.unnest``, which the
    BigQuery extra (sqlalchemy-bigquery) registers as a class that opts out of the statement cache and warns.
    """
    if conn.dialect.name != "postgresql":
        return list(inspect(conn).get_pk_constraint(table)["constrained_columns"])
    definition = conn.scalar(
        text(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = CAST(:t AS regclass) AND contype = 'p'"
        ),
        {"t": table},
    )
    if not definition:  # "PRIMARY KEY (audience, destination, batch_no, member_key)"
        return []
    inside = definition[definition.index("(") + 1 : definition.rindex(")")]
    return [name.strip().strip('"') for name in inside.split(",")]


def _key_pending_by_batch(conn: Connection) -> None:
    """Version 7: ``do_pending`` is keyed by (audience, destination, batch_no, member_key), its only index.

    Pending rows are planned changes not yet pushed (a removal among them must not be lost), so the
    table is rebuilt with its rows: renamed, created in today's shape, copied, dropped. A database
    created at this version already has the key and is left as it is.
    """
    if _primary_key(conn, pending.name) == PENDING_KEY:
        return
    old = f"{pending.name}_v6"
    conn.execute(text(f"DROP INDEX IF EXISTS {_PENDING_BATCH_INDEX}"))
    conn.execute(text(f"ALTER TABLE {pending.name} RENAME TO {old}"))
    if conn.dialect.name == "postgresql":  # the key's index keeps its name, which the new table's key needs
        conn.execute(text(f"ALTER INDEX IF EXISTS {pending.name}_pkey RENAME TO {old}_pkey"))
    pending.create(conn)
    columns = ", ".join(c.name for c in pending.columns)
    conn.execute(text(f"INSERT INTO {pending.name} ({columns}) SELECT {columns} FROM {old}"))
    conn.execute(text(f"DROP TABLE {old}"))


def _resume_log_unlogged(conn: Connection) -> None:
    """Version 8: ``do_stage`` is an unlogged table on Postgres (SQLite has no such thing).

    Its rows are a resume log: normalised rows kept so that a staging killed half-way need not
    normalise them again, and rows a staging on the Python path merges in its own run. A first sync
    of 10M members writes 10M of them, and their write-ahead log was a cost every staging paid for a
    crash of the server, which is when an unlogged table is emptied: the next attempt then normalises
    again, which is correct, only slower. The same holds on a standby promoted after a failover, which
    has no rows of an unlogged table.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"ALTER TABLE {stage.name} SET UNLOGGED"))


#: explicit, non-additive steps per schema version: SQL text, or a function given the migrating
#: connection; a table a step drops is created again afterwards
_MIGRATIONS: dict[int, tuple[str | Callable[[Connection], None], ...]] = {
    # do_dirty loses its primary key (see the table). Its rows are recorded keys that plans may still
    # need: instead of copying them, every plan mark is dropped, so each destination's next plan is a
    # full diff, which needs no recorded keys and is always correct.
    3: ("DROP TABLE IF EXISTS do_dirty", "DELETE FROM do_plan_mark"),
    4: (_rekey_unsent_batches,),
    # indexes the UI's pages read through (create_all adds tables, never indexes of existing tables)
    5: (
        "CREATE INDEX IF NOT EXISTS ix_do_reject_sync ON do_reject (sync_id)",
        "CREATE INDEX IF NOT EXISTS ix_do_reject_member ON do_reject (member_key_sha256)",
        "CREATE INDEX IF NOT EXISTS ix_do_metric_event_customer ON do_metric_event (customer_id)",
    ),
    # refreshes pick a destination's oldest acknowledgements: an index on their age (``acked_at``, which
    # every acknowledgement has always set, so existing rows need no value)
    6: (f"CREATE INDEX IF NOT EXISTS {ACK_AGE_INDEX} ON do_ack (audience, destination, acked_at)",),
    7: (_key_pending_by_batch,),
    8: (_resume_log_unlogged,),
}


def _add_missing_columns(engine: Engine) -> None:
    inspector = inspect(engine)
    with engine.begin() as conn:
        for table in metadata.sorted_tables:
            existing = {c["name"] for c in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name in existing:
                    continue
                ddl = f"{column.type.compile(engine.dialect)}"
                if not column.nullable:
                    if not isinstance(column.server_default, DefaultClause):
                        raise RuntimeError(f"cannot add NOT NULL column {table.name}.{column.name} without a default")
                    arg = column.server_default.arg
                    default = arg.compile(dialect=engine.dialect) if hasattr(arg, "compile") else arg
                    ddl += f" NOT NULL DEFAULT {default}"
                conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {ddl}'))


def has_exclusions(conn: Any, audience: str) -> bool:
    """Whether any member key is excluded from the audience's snapshot ``audience`` right now."""
    x = exclusion
    return conn.execute(select(x.c.member_key).where(x.c.audience == audience).limit(1)).first() is not None


def insert_ignore(engine_or_dialect: Any, table: Table) -> Insert:
    """``INSERT ... ON CONFLICT DO NOTHING`` for the dialect at hand (replays must not fail)."""
    name = getattr(engine_or_dialect, "name", None) or engine_or_dialect.dialect.name
    if name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    if name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    raise NotImplementedError(f"state database dialect {name!r} is not supported")


def key_in(dialect: Any, column: Any, keys: Sequence[str]) -> Any:
    """``column IN keys`` for a list of keys from Python: one array parameter on Postgres.

    ``IN (...)`` renders one placeholder per key, and SQLAlchemy and psycopg spend more time building
    and parsing a 10,000-key statement than Postgres spends running it; ``= ANY(:keys)`` is one value
    and still a primary-key lookup per key. SQLite has no arrays and keeps ``IN``.
    """
    if getattr(dialect, "name", dialect) == "postgresql":
        return column == any_(bindparam(None, list(keys), type_=postgresql.ARRAY(String)))
    return column.in_(list(keys))


def analyze(engine: Engine, table: Table) -> None:
    """Refresh Postgres' statistics of a table the product has just grown or emptied in bulk.

    Plans are built from those statistics and autovacuum refreshes them only later: a plan made on
    "this table is empty" turns a hash join into a nested loop over millions of rows. Runs in its own
    autocommit session, after the writer committed, so its lock never serialises other audiences.
    SQLite plans without such statistics: a no-op there.
    """
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(f"ANALYZE {table.name}")


def temp_table(conn: Any, name: str, *columns: Column) -> Table:
    """A session-local work table, created fresh (a step that failed earlier on this pooled connection
    may have left one behind). Postgres never auto-analyses temporary tables: see ``analyze_temp``."""
    table = Table(name, MetaData(), *columns, prefixes=["TEMPORARY"])
    table.drop(conn, checkfirst=True)
    table.create(conn)
    return table


def analyze_temp(conn: Any, table: Table) -> None:
    """Statistics for a just-filled temporary table, so joins against it use the indexes (Postgres only)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"ANALYZE {table.name}")


#: a step that wrote or emptied at least this many rows of a table vacuums it itself (see ``vacuum``)
VACUUM_AFTER_ROWS = 1_000_000


def vacuum(engine: Engine, table: Table, analyze: bool = False) -> None:
    """Vacuum a table the product has just filled or emptied in bulk (a first sync), ``analyze``: and analyse it.

    Emptied (``do_pending`` after a push): until autovacuum gets to it, every later query scans the
    dead rows of millions of planned and pushed rows, seconds per plan at 10M. Filled (``do_member``,
    ``do_ack``): the rows' visibility is not yet recorded, so the next sync's first read of them
    records it, dirtying and writing every page (the churn sync right after a 10M first sync took
    45.4 s; with the database vacuumed in between, 33.7 s). ``SKIP_LOCKED``: a shard that finds another
    one vacuuming moves on. Postgres only, outside any transaction.
    """
    if engine.dialect.name == "postgresql":
        options = "SKIP_LOCKED, ANALYZE" if analyze else "SKIP_LOCKED"
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(f"VACUUM ({options}) {table.name}")


def inserted_id(result: CursorResult[Any]) -> int:
    """The primary key an ``INSERT`` of one row created (every table here has an integer id)."""
    key = result.inserted_primary_key
    if key is None:  # SQLAlchemy's type allows it for an executemany, which never comes here
        raise RuntimeError("the insert returned no primary key")
    return int(key[0])


def scalar_int(conn: Any, stmt: Any, **params: Any) -> int:
    return int(conn.execute(stmt, params).scalar() or 0)
