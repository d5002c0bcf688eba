"""What the pages read from the state database: plain SQLAlchemy Core, the same on SQLite and Postgres.

Every query is bounded by an index: the last run of an audience and the last syncs of a destination are
read backwards through ``(audience, id)`` and ``(audience, destination, id)``, a Health tab reads a
window of N runs, rejects are found through their sync ids. Nothing here scans run history, so the pages
cost the same after a year of hourly runs as after a day (``include/bench/ui.py`` measures it).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    FromClause,
    String,
    and_,
    bindparam,
    column,
    func,
    insert,
    literal,
    select,
    true,
    tuple_,
    union_all,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.sql.functions import Function

from data_out import state
from data_out.chunking import chunks

#: runs a sparkline shows
SPARK_RUNS = 30
#: rows per literal table: SQLite allows at most 500 terms in one compound SELECT
_CHUNK = 400


def _chunks(conn: Connection, items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    size = len(items) or 1 if conn.dialect.name == "postgresql" else _CHUNK  # arrays have no such limit
    yield from chunks(items, size)


def _literal_rows(
    conn: Connection, rows: Sequence[Sequence[Any]], names: Sequence[str], types: Sequence[Any]
) -> FromClause:
    """A small table of Python values to join against.

    Postgres: ``unnest(:col1, :col2, ...) AS k(...)``, one array parameter per column (a statement of
    fixed shape whatever the row count, so it is built and planned once). SQLite has no arrays:
    ``SELECT :a, :b UNION ALL ...``, which callers keep under SQLite's 500 terms (``_chunks``).
    """
    if conn.dialect.name == "postgresql":
        arrays = [
            bindparam(f"k_{n}", [r[i] for r in rows], type_=postgresql.ARRAY(t))
            for i, (n, t) in enumerate(zip(names, types, strict=True))
        ]
        # a plain Function: ``func.unnest`` resolves to sqlalchemy-bigquery's registered class once that
        # extra is imported in the process, and that class refuses more than one argument
        return (
            Function("unnest", *arrays)
            .table_valued(*[column(n, t) for n, t in zip(names, types, strict=True)])
            .render_derived(name="k")
        )
    selects = [select(*[literal(v, t).label(n) for v, n, t in zip(row, names, types, strict=True)]) for row in rows]
    return (union_all(*selects) if len(selects) > 1 else selects[0]).subquery("k")


def last_runs(conn: Connection, audiences: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The latest run of each audience (one backward index probe per audience, in one statement)."""
    if not audiences:
        return {}
    r = state.run
    ids: list[int] = []
    for chunk in _chunks(conn, audiences):
        k = _literal_rows(conn, [(a,) for a in chunk], ["audience"], [String])
        last = select(r.c.id).where(r.c.audience == k.c.audience).order_by(r.c.id.desc()).limit(1).scalar_subquery()
        ids += [i for (_, i) in conn.execute(select(k.c.audience, last).select_from(k)) if i is not None]
    if not ids:
        return {}
    rows = conn.execute(select(r).where(r.c.id.in_(ids))).mappings()
    return {row["audience"]: dict(row) for row in rows}


#: what the overview shows of a destination's latest sync
LATEST_COLUMNS = (
    "id",
    "run_id",
    "status",
    "started_at",
    "finished_at",
    "added",
    "removed",
    "refreshed",
    "rejected",
    "received",
    "matched",
    "destination_size",
    "acked_size",
)


def recent_syncs(
    conn: Connection, pairs: Sequence[tuple[str, str]], last: int = SPARK_RUNS, columns: Sequence[str] = LATEST_COLUMNS
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The last ``last`` syncs of each (audience, destination), oldest first, with ``columns`` only.

    Two statements: the id of each pair's ``last``-th latest sync (a backward index probe), then an
    index range scan per pair from that id on. A window function over ``do_sync`` would read it whole.
    """
    out: dict[tuple[str, str], list[dict[str, Any]]] = {(a, d): [] for a, d in pairs}
    for chunk in _chunks(conn, pairs):
        for audience, destination, *values in _recent_syncs_chunk(conn, chunk, last, columns):
            out[(audience, destination)].append(dict(zip(columns, values, strict=True)))
    return out


def _recent_syncs_chunk(
    conn: Connection, pairs: Sequence[tuple[str, str]], last: int, columns: Sequence[str]
) -> list[Any]:
    s = state.sync
    k = _literal_rows(conn, pairs, ["audience", "destination"], [String, String])
    bound = (
        select(s.c.id)
        .where(s.c.audience == k.c.audience, s.c.destination == k.c.destination)
        .order_by(s.c.id.desc())
        .limit(1)
        .offset(last - 1)
        .scalar_subquery()
    )
    bounds = [(a, d, b or 0) for a, d, b in conn.execute(select(k.c.audience, k.c.destination, bound).select_from(k))]
    kb = _literal_rows(conn, bounds, ["audience", "destination", "from_id"], [String, String, BigInteger])
    stmt = (
        select(s.c.audience, s.c.destination, *[s.c[c] for c in columns])
        .select_from(
            kb.join(s, and_(s.c.audience == kb.c.audience, s.c.destination == kb.c.destination, s.c.id >= kb.c.from_id))
        )
        .order_by(s.c.id)
    )
    return list(conn.execute(stmt))


def latest_syncs(conn: Connection, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The latest sync of each (audience, destination): a backward index probe each, then primary-key reads."""
    s = state.sync
    ids: list[int] = []
    for chunk in _chunks(conn, pairs):
        k = _literal_rows(conn, chunk, ["audience", "destination"], [String, String])
        last = (
            select(s.c.id)
            .where(s.c.audience == k.c.audience, s.c.destination == k.c.destination)
            .order_by(s.c.id.desc())
            .limit(1)
            .scalar_subquery()
        )
        ids += [i for (i,) in conn.execute(select(last).select_from(k)) if i is not None]
    if not ids:
        return {}
    cols = [s.c[c] for c in LATEST_COLUMNS]
    rows = conn.execute(select(s.c.audience, s.c.destination, *cols).where(s.c.id.in_(ids))).mappings()
    return {(r["audience"], r["destination"]): dict(r) for r in rows}


def size_series(
    conn: Connection, pairs: Sequence[tuple[str, str]], last: int = SPARK_RUNS
) -> dict[tuple[str, str], list[float | None]]:
    """Acknowledged size over each pair's last ``last`` syncs, oldest first: the overview's sparklines.

    Postgres aggregates each pair's series in the database (``LATERAL`` backward index scan, then
    ``array_agg``): 30 x pairs rows never travel to Python. SQLite reads the rows (it holds small installs).
    """
    if conn.dialect.name != "postgresql":
        rows = recent_syncs(conn, pairs, last, columns=("id", "acked_size"))
        return {p: [r["acked_size"] for r in v] for p, v in rows.items()}
    s = state.sync
    k = _literal_rows(conn, pairs, ["audience", "destination"], [String, String])
    recent = (
        select(s.c.id, s.c.acked_size)
        .where(s.c.audience == k.c.audience, s.c.destination == k.c.destination)
        .order_by(s.c.id.desc())
        .limit(last)
        .lateral("x")
    )
    stmt = (
        select(k.c.audience, k.c.destination, func.array_agg(aggregate_order_by(recent.c.acked_size, recent.c.id)))
        .select_from(k.join(recent, true()))
        .group_by(k.c.audience, k.c.destination)
    )
    out: dict[tuple[str, str], list[float | None]] = {(a, d): [] for a, d in pairs}
    for a, d, values in conn.execute(stmt):
        out[(a, d)] = list(values or [])
    return out


def acked_counts(conn: Connection) -> dict[tuple[str, str], int]:
    """Acknowledged members per (audience, destination): a row each, kept by every commit."""
    c = state.ack_count
    return {(a, d): int(n) for a, d, n in conn.execute(select(c.c.audience, c.c.destination, c.c.acked))}


def open_breaches(conn: Connection, audience: str | None = None) -> list[dict[str, Any]]:
    """Checks whose alert is open (breached and not yet recovered)."""
    a = state.alert_state
    stmt = select(a).where(a.c.open.is_(True))
    if audience is not None:
        stmt = stmt.where(a.c.audience == audience)
    return [dict(m) for m in conn.execute(stmt.order_by(a.c.audience, a.c.destination, a.c.check)).mappings()]


def lifecycle(conn: Connection, audience: str | None = None) -> dict[str, dict[str, Any]]:
    lc = state.lifecycle
    stmt = select(lc) if audience is None else select(lc).where(lc.c.audience == audience)
    return {m["audience"]: dict(m) for m in conn.execute(stmt).mappings()}


def known_audiences(conn: Connection) -> list[str]:
    """Audiences the state database holds a snapshot or a lifecycle of (small tables, one row each)."""
    names = set(conn.execute(select(state.snapshot.c.audience)).scalars())
    names |= set(conn.execute(select(state.lifecycle.c.audience)).scalars())
    return sorted(names)


# ---- one audience (the Health tab) ----


def runs_window(conn: Connection, audience: str, last: int) -> list[dict[str, Any]]:
    """The audience's last ``last`` runs, oldest first."""
    r = state.run
    stmt = select(r).where(r.c.audience == audience).order_by(r.c.id.desc()).limit(last)
    return [dict(m) for m in reversed(conn.execute(stmt).mappings().all())]


def syncs_since(conn: Connection, audience: str, destinations: Iterable[str], from_run: int, last: int) -> list[dict]:
    """Each destination's syncs of runs ``>= from_run`` (at most ``last`` each, read backwards by index)."""
    s = state.sync
    rows: list[dict[str, Any]] = []
    for d in destinations:
        stmt = select(s).where(s.c.audience == audience, s.c.destination == d).order_by(s.c.id.desc()).limit(last)
        rows.extend(dict(m) for m in conn.execute(stmt).mappings() if m["run_id"] >= from_run)
    rows.sort(key=lambda x: x["id"])
    return rows


def sync_destinations(conn: Connection, audience: str, last_run_id: int | None) -> list[str]:
    """Destinations the audience's latest run synced (a destination removed from the file still shows)."""
    if last_run_id is None:
        return []
    s = state.sync
    return sorted(set(conn.execute(select(s.c.destination).where(s.c.run_id == last_run_id)).scalars()))


def rejects_by_reason(conn: Connection, sync_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Reject counts per (sync, reason) of the given syncs (index ``ix_do_reject_sync``)."""
    if not sync_ids:
        return []
    j = state.reject
    stmt = (
        select(j.c.sync_id, j.c.destination, j.c.reason, func.count().label("rows"))
        .where(j.c.sync_id.in_(list(sync_ids)))
        .group_by(j.c.sync_id, j.c.destination, j.c.reason)
    )
    return [dict(m) for m in conn.execute(stmt).mappings()]


def check_history(conn: Connection, audience: str, last: int = 400) -> list[dict[str, Any]]:
    """The audience's latest reconciliation check results, oldest first."""
    c = state.recon
    stmt = select(c).where(c.c.audience == audience).order_by(c.c.id.desc()).limit(last)
    return [dict(m) for m in reversed(conn.execute(stmt).mappings().all())]


# ---- the member lookup ----


def members_by(conn: Connection, audiences: Sequence[str], column: str, value: str) -> list[dict[str, Any]]:
    """Snapshot rows of the person in the given audiences, found by ``member_key`` (primary key) or a hash."""
    m = state.member
    if not audiences:
        return []
    stmt = select(m.c.audience, m.c.member_key, m.c.bucket).where(
        m.c.audience.in_(list(audiences)), m.c[column] == value
    )
    return [dict(x) for x in conn.execute(stmt).mappings()]


def memberships(conn: Connection, audiences: Sequence[str], keys: Sequence[str]) -> dict[tuple[str, str], int | None]:
    """Which of ``keys`` are in which audiences' snapshots, with their holdout bucket (primary-key probes)."""
    if not audiences or not keys:
        return {}
    m = state.member
    stmt = select(m.c.audience, m.c.member_key, m.c.bucket).where(
        m.c.audience.in_(list(audiences)), m.c.member_key.in_(list(keys))
    )
    return {(a, k): b for a, k, b in conn.execute(stmt)}


def exclusions_of(conn: Connection, keys: Sequence[str]) -> set[tuple[str, str]]:
    """(audience, key) pairs where the key is excluded from the audience's snapshot right now."""
    if not keys:
        return set()
    x = state.exclusion
    return {(a, k) for a, k in conn.execute(select(x.c.audience, x.c.member_key).where(x.c.member_key.in_(list(keys))))}


def acks_of(conn: Connection, audiences: Sequence[str], keys: Sequence[str]) -> list[dict[str, Any]]:
    """The person's acknowledged rows, with the sync and batch whose commit wrote each."""
    if not audiences or not keys:
        return []
    a = state.ack
    stmt = select(
        a.c.audience,
        a.c.destination,
        a.c.member_key,
        a.c.in_holdout,
        a.c.rejected,
        a.c.acked_at,
        a.c.acked_sync,
        a.c.acked_batch,
    ).where(a.c.audience.in_(list(audiences)), a.c.member_key.in_(list(keys)))
    return [dict(x) for x in conn.execute(stmt).mappings()]


def syncs_by_id(conn: Connection, sync_ids: Iterable[int | None]) -> dict[int, dict[str, Any]]:
    """Syncs with their run's Airflow DAG run id (primary-key reads): who wrote a member's rows."""
    ids = sorted({i for i in sync_ids if i is not None})
    if not ids:
        return {}
    s, r = state.sync, state.run
    stmt = (
        select(s.c.id, s.c.run_id, s.c.mode, s.c.started_at, r.c.dag_run_id)
        .select_from(s.outerjoin(r, r.c.id == s.c.run_id))
        .where(s.c.id.in_(ids))
    )
    return {m["id"]: dict(m) for m in conn.execute(stmt).mappings()}


def pending_of(conn: Connection, places: Sequence[tuple[str, str, str]]) -> list[dict[str, Any]]:
    """The person's planned, not yet acknowledged adds, removes and refreshes, with their batch.

    ``places`` are (audience, destination, member key). ``do_pending`` is keyed by batch, then member,
    so the lookup goes through the destination's batches (``do_batch``, one row per planned batch) and
    probes the key once per batch: a few hundred probes for a 10M first sync's plan, where a filter on
    the member alone would read every planned row of the destination.
    """
    if not places:
        return []
    p, b, s = state.pending, state.batch, state.sync
    pairs = sorted({(a, d) for a, d, _ in places})
    keys = sorted({k for _, _, k in places})
    stmt = (
        select(
            p.c.audience,
            p.c.destination,
            p.c.op,
            p.c.member_key,
            p.c.batch_no,
            b.c.planned_by,
            b.c.attempts,
            s.c.run_id,
        )
        .select_from(
            b.join(
                p, and_(p.c.audience == b.c.audience, p.c.destination == b.c.destination, p.c.batch_no == b.c.batch_no)
            ).outerjoin(s, s.c.id == b.c.planned_by)
        )
        .where(tuple_(b.c.audience, b.c.destination).in_(pairs), p.c.member_key.in_(keys))
        .order_by(p.c.audience, p.c.destination, p.c.batch_no)
    )
    wanted = set(places)
    rows = [dict(m) for m in conn.execute(stmt).mappings()]
    return [r for r in rows if (r["audience"], r["destination"], r["member_key"]) in wanted]


def sync_at(conn: Connection, audience: str, destination: str, at: dt.datetime) -> dict[str, Any] | None:
    """The latest sync of the destination that started at or before ``at`` (the one that acknowledged a row)."""
    s = state.sync
    stmt = (
        select(s.c.id, s.c.run_id, s.c.batches, s.c.started_at)
        .where(s.c.audience == audience, s.c.destination == destination, s.c.started_at <= at)
        .order_by(s.c.id.desc())
        .limit(1)
    )
    row = conn.execute(stmt).mappings().first()
    return dict(row) if row else None


def rejects_of(conn: Connection, key_hashes: Sequence[str], last: int = 50) -> list[dict[str, Any]]:
    if not key_hashes:
        return []
    j = state.reject
    stmt = (
        select(j.c.audience, j.c.destination, j.c.op, j.c.reason, j.c.at, j.c.sync_id)
        .where(j.c.member_key_sha256.in_(list(key_hashes)))
        .order_by(j.c.id.desc())
        .limit(last)
    )
    return [dict(x) for x in conn.execute(stmt).mappings()]


def send_events_of(conn: Connection, customer_ids: Sequence[str], last: int = 20) -> list[dict[str, Any]]:
    """The person's latest messaging events as the metrics pipeline landed them (the send tasks' source)."""
    if not customer_ids:
        return []
    e = state.metric_event
    stmt = (
        select(e.c.metric, e.c.channel, e.c.occurred_at, e.c.campaign_name, e.c.delivery_id)
        .where(e.c.customer_id.in_(list(customer_ids)))
        .order_by(e.c.occurred_at.desc())
        .limit(last)
    )
    return [dict(x) for x in conn.execute(stmt).mappings()]


def record_lookup(
    conn: Connection, username: str, kind: str, value_sha256: str | None, audiences_found: int, at: dt.datetime
) -> None:
    conn.execute(
        insert(state.ui_lookup).values(
            at=at, username=username, kind=kind, value_sha256=value_sha256, audiences_found=audiences_found
        )
    )
