"""UI benchmark: the Data Out pages' server time over a year of hourly runs in a Postgres state database.

    python -m bench.ui --days 365 --audiences 200        # what ``make bench-ui`` runs (DAYS=... to change)

Builds, in a fresh Postgres database, the history 200 audiences x 4 destinations leave after ``days``
days of hourly runs (365 days: 1.75M runs, 7M destination syncs, plus rejects, daily reconciliation checks,
acknowledged counts and open alerts), written set-based with ``generate_series`` inside Postgres, secondary
indexes built after the load. Then it times what each page's handler does (the page model's queries and
the template rendering; the HTTP and auth layers add a constant) and prints p50/p95 per page, ending with
one line: ``bench-ui: audiences=A destinations=D days=N runs=R syncs=S overview_p50_ms=... ...``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import time
import uuid
from collections.abc import Callable

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from data_out.state import ensure_schema
from data_out.ui import pages
from data_out.ui.app import filter_rows, render
from data_out.ui.catalog import AudienceInfo, Catalog

PG_URL = os.environ.get("DATA_OUT_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
DESTINATIONS = ("warehouse", "meta", "google", "segment")

#: secondary indexes rebuilt after the bulk load (a load into an indexed table pays per row)
_REBUILT = {
    "ix_do_run_audience": "CREATE INDEX ix_do_run_audience ON do_run (audience, id)",
    "ix_do_sync_audience": "CREATE INDEX ix_do_sync_audience ON do_sync (audience, destination, id)",
    "ix_do_reject_sync": "CREATE INDEX ix_do_reject_sync ON do_reject (sync_id)",
    "ix_do_reject_member": "CREATE INDEX ix_do_reject_member ON do_reject (member_key_sha256)",
}

_LOAD = [
    # one run per audience and hour; ids in time order, as real runs are numbered
    """
    INSERT INTO do_run (id, audience, dag_run_id, as_of, status, started_at, finished_at, source_rows, members,
                        held_out, excluded, duplicate_keys, missing_keys, stage_seconds)
    SELECT h * :a + a, 'bench_' || lpad(a::text, 4, '0') || '_v1',
           'scheduled__' || to_char(:start + h * interval '1 hour', 'YYYY-MM-DD"T"HH24:MI:SS'),
           :start + h * interval '1 hour',
           CASE WHEN (h * 7 + a) % 997 = 0 THEN 'failed' ELSE 'success' END,
           :start + h * interval '1 hour',
           :start + h * interval '1 hour' + ((20 + (h * 13 + a) % 40) * interval '1 second'),
           10000 + a * 50 + h % 500, 10000 + a * 50 + h % 500, (10000 + a * 50 + h % 500) / 10, 0, 0, 0, 1.5
    FROM generate_series(0, :hours - 1) AS h CROSS JOIN generate_series(1, :a) AS a
    """,
    """
    INSERT INTO do_sync (id, run_id, audience, destination, destination_type, mode, status, started_at,
                         finished_at, desired, planned_adds, planned_removes, added, removed, rejected, batches,
                         received, matched, destination_size, acked_size, guard, plan_seconds, push_seconds)
    SELECT r.id * :d + d - 1, r.id, r.audience, (ARRAY[:dests])[d], (ARRAY[:dests])[d], 'incremental',
           CASE WHEN r.status = 'failed' THEN 'failed' ELSE 'success' END,
           r.started_at + interval '5 second', r.finished_at,
           r.members, 40 + r.id % 30, 35 + r.id % 25, 40 + r.id % 30, 35 + r.id % 25,
           CASE WHEN r.id % 50 = 0 THEN 3 ELSE 0 END, 1,
           75 + r.id % 55, 60 + r.id % 40, r.members - d * 10 - r.id % 7, r.members - d * 10,
           CASE WHEN r.id % 5000 = 0 THEN 'override: planned mass removal' ELSE 'passed' END, 0.4, 0.8
    FROM do_run r CROSS JOIN generate_series(1, :d) AS d
    """,
    """
    INSERT INTO do_reject (sync_id, audience, destination, op, member_key_sha256, reason, at)
    SELECT s.id, s.audience, s.destination, 'add', md5(s.id::text || k) || md5(k || s.id::text),
           CASE WHEN k = 1 THEN 'invalid email hash' ELSE 'rate limited, will retry' END, s.finished_at
    FROM do_sync s CROSS JOIN generate_series(1, 3) AS k WHERE s.rejected > 0
    """,
    """
    INSERT INTO do_recon (recon_id, at, audience, destination, "check", value, threshold, status, detail, repaired)
    SELECT day, :start + day * interval '1 day', 'bench_' || lpad(a::text, 4, '0') || '_v1', (ARRAY[:dests])[d], c,
           (day + a) % 7, 5, CASE WHEN (day + a + d) % 61 = 0 THEN 'breach' ELSE 'ok' END, 'bench', false
    FROM generate_series(0, :days - 1) AS day CROSS JOIN generate_series(1, :a) AS a
         CROSS JOIN generate_series(1, :d) AS d
         CROSS JOIN unnest(ARRAY['destination_gap_pct', 'day_over_day_pct', 'match_rate']) AS c
    """,
    """
    INSERT INTO do_ack_count (audience, destination, acked)
    SELECT 'bench_' || lpad(a::text, 4, '0') || '_v1', (ARRAY[:dests])[d], 10000 + a * 50
    FROM generate_series(1, :a) AS a CROSS JOIN generate_series(1, :d) AS d
    """,
    """
    INSERT INTO do_alert_state (audience, destination, "check", open, since)
    SELECT 'bench_' || lpad(a::text, 4, '0') || '_v1', 'meta', 'destination_gap_pct', true, :start
    FROM generate_series(1, :a, 17) AS a
    """,
]


def build(engine: Engine, audiences: int, days: int, destinations: int) -> dict[str, int]:
    ensure_schema(engine)
    start = time.monotonic()
    dests = list(DESTINATIONS[:destinations])
    params = {
        "a": audiences,
        "d": destinations,
        "days": days,
        "hours": days * 24,
        "start": dt.datetime(2025, 12, 1, tzinfo=dt.UTC),
    }
    with engine.begin() as conn:
        for name in _REBUILT:
            conn.exec_driver_sql(f"DROP INDEX IF EXISTS {name}")
        for stmt in _LOAD:
            sql = stmt.replace(":dests", ", ".join(f"'{d}'" for d in dests))
            conn.execute(text(sql), params)
    with engine.begin() as conn:
        for ddl in _REBUILT.values():
            conn.exec_driver_sql(ddl)
        for seq_table in ("do_run", "do_sync"):
            conn.exec_driver_sql(
                f"SELECT setval(pg_get_serial_sequence('{seq_table}', 'id'), (SELECT max(id) FROM {seq_table}))"
            )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE")
    counts = {t: _count(engine, t) for t in ("do_run", "do_sync", "do_reject", "do_recon")}
    counts["load_s"] = round(time.monotonic() - start, 1)
    return counts


def _count(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def catalog(audiences: int, destinations: int) -> Catalog:
    infos = {}
    for a in range(1, audiences + 1):
        name = f"bench_{a:04d}_v1"
        infos[name] = AudienceInfo(
            name=name,
            dag_id=f"audience__{name}",
            owner=f"team-{a % 5}",
            purpose="benchmark",
            status="active",
            role="targeting",
            tags=(f"tag{a % 3}",),
            destinations=DESTINATIONS[:destinations],
            holdout_percent=10.0,
        )
    return Catalog(infos, {n: "SELECT 1" for n in infos})


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    fn()  # warm: the first request of a worker pays for template compilation and connections
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    return statistics.median(samples), samples[max(int(len(samples) * 0.95) - 1, 0)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--audiences", type=int, default=200)
    ap.add_argument("--destinations", type=int, default=4, choices=range(1, len(DESTINATIONS) + 1))
    ap.add_argument("--repeat", type=int, default=30, help="timed requests per page")
    ap.add_argument("--keep", action="store_true", help="keep the database (its name is printed)")
    ap.add_argument("--database", help="time the pages again on a database a --keep run built (same sizes)")
    args = ap.parse_args(argv)

    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    name = args.database or f"do_bench_ui_{uuid.uuid4().hex[:10]}"
    if not args.database:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine = create_engine(make_url(PG_URL).set(database=name))
    try:
        if args.database:
            ensure_schema(engine)
            counts: dict[str, float] = {t: _count(engine, t) for t in ("do_run", "do_sync", "do_reject", "do_recon")}
            counts["load_s"] = 0.0
        else:
            counts = build(engine, args.audiences, args.days, args.destinations)
        print(
            f"{'reused' if args.database else 'built'} {name} in {counts['load_s']}s: "
            + ", ".join(f"{k} {v:,}" for k, v in counts.items() if k != "load_s")
        )
        cat = catalog(args.audiences, args.destinations)
        one = cat.audiences[f"bench_{args.audiences // 2:04d}_v1"]

        def overview() -> None:
            rows = pages.overview(engine, cat)
            render(
                "overview.html",
                rows=filter_rows(rows, None, None, None, False),
                all=rows,
                tags=[],
                owners=[],
                destinations=[],
                errors=(),
                filters={},
            )

        def health() -> None:
            render("health.html", h=pages.health(engine, cat, one, 100), runs=100)

        results = {"overview": timed(overview, args.repeat), "health": timed(health, args.repeat)}
        for page, (p50, p95) in results.items():
            print(f"{page:<9} p50 {p50:7.1f} ms   p95 {p95:7.1f} ms   ({args.repeat} requests)")
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} "
            f"{platform.python_version()}, Postgres at {make_url(PG_URL).host}"
        )
        print(
            f"bench-ui: audiences={args.audiences} destinations={args.destinations} days={args.days} "
            f"runs={counts['do_run']} syncs={counts['do_sync']} "
            + " ".join(f"{p}_p50_ms={v[0]:.1f} {p}_p95_ms={v[1]:.1f}" for p, v in results.items())
        )
    finally:
        engine.dispose()
        if not args.keep and not args.database:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
