"""Scale benchmark: one audience of N members synced to the warehouse destination and the Meta stand-in.

    python -m bench.scale --members 1000000 --churn 0.01        # what ``make bench`` runs (N=... to change)

On a fresh Postgres database it builds a source table of N members (emails with case and whitespace
noise, US phone numbers, some missing), then measures, each in its own child process so that peak RSS
is that phase's alone:

1. ``first``: Data Out's first sync (everything is new);
2. ``churn``: Data Out's sync after a churn (``churn`` x N members leave, as many new ones join), with the
   full comparison of the source with the snapshot (as on the day of its scheduled full comparison);
3. ``nochange``: Data Out's sync when nothing changed, again with the full comparison;
4. ``quiet``: the sync of a quiet day with no change: the audience's change column (``updated_at``) lets
   it read only the rows changed since the last snapshot, plus a key-only pass for members who left;
5. ``quiet_churn``: the same after another churn of the same size, the joiners stamped with the time;
6. ``pandas``: the pandas way on the first churn: ``read_sql`` of both snapshots, an outer merge with an
   indicator, then hashing the changed rows in Python;
7. ``floor``: a ``COPY`` of the source table to nowhere: the least any sync must pay to read the source.

The state database is the warehouse database (Data Out's co-located mode: staging and diffs run in it).
It ends with exactly one line, times for the churn run:
``bench: members=N churn=C data_out_s=X pandas_s=Y floor_s=Z speedup_vs_pandas=Ax floor_ratio=Bx
data_out_rss_mb=R pandas_rss_mb=P first_s=F nochange_s=U quiet_s=Q quiet_churn_s=W``
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

AUDIENCE = "bench_scale_v1"
AS_OF = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
PHASES = ("first", "churn", "nochange", "quiet", "quiet_churn")
#: phases that compare the source with the snapshot in full although the audience has a change column
FULL_COMPARISON = ("churn", "nochange")

AUDIENCE_YAML = """\
name: {name}
owner: bench
purpose: scale benchmark
source:
  conn_id: data_out_warehouse
  query: SELECT customer_id, email, phone, updated_at FROM bench_members
  change_column: updated_at
identifiers: {{email: email, phone: phone, default_region: US}}
holdout: {{percent: 10, salt: bench}}
destinations:
  - type: warehouse
  - type: meta
    audience_id: "990001"
"""

# Emails with the noise real sources have (case, surrounding spaces), 2% missing; a third of phones
# missing, the rest valid US numbers in mixed formats. ``updated_at``: when the row last changed, spread over
# the day before ``:at`` (so a day's run re-reads, within its hour of lookback, only the last hour's changes).
POPULATE_SQL = """
INSERT INTO bench_members (customer_id, email, phone, updated_at)
SELECT 'c' || lpad(i::text, 10, '0'),
       CASE WHEN i % 50 = 0 THEN NULL
            WHEN i % 7 = 0 THEN ' User' || i || '@Example.com '
            ELSE 'user' || i || '@example.com' END,
       CASE WHEN i % 3 = 0 THEN NULL
            WHEN i % 3 = 1 THEN '+1 415 ' || (2000000 + i % 7000000)::text
            ELSE '(650) ' || (2000000 + i % 7000000)::text END,
       CAST(:at AS timestamptz) - (i % 1440) * interval '1 minute'
FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS i
"""

# 1 in 1/churn existing members leaves (a stable pseudo-random choice per seed), then as many new ones join.
CHURN_DELETE_SQL = """
DELETE FROM bench_members
WHERE (('x' || substr(md5(customer_id || :seed), 1, 8))::bit(32)::bigint % :every) = 0
"""


def rss_mb() -> float:
    """Peak resident set size of this process (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class TreeMemory:
    """Peak memory of this process together with its worker processes (the normalising pool).

    Each worker is forked from this process and shares most of its pages, so adding up resident sizes
    would count the shared pages once per process. The proportional set size (PSS: shared pages split
    between the processes sharing them) adds up to what the tree really occupies; it is sampled every
    ``interval`` seconds while the sync runs.
    """

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="tree-memory", daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.wait(self.interval):
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_full_info().pss
                except psutil.Error:  # a worker that just exited
                    continue
            self.peak_mb = max(self.peak_mb, total / 2**20)


# -- phases (each runs in a child process) ------------------------------------------------------------


def phase_dataout(db_url: str, meta_conn: dict[str, Any], audiences_dir: str, label: str) -> dict[str, Any]:
    from sqlalchemy import select

    from data_out import state
    from data_out.config import load_audiences
    from data_out.connections import ConnectionInfo, engine_for
    from data_out.engine.runner import AudienceRunner
    from data_out.state import ensure_schema

    url = make_url(db_url)
    pg = ConnectionInfo("data_out_state", "postgres", url.host, url.port, url.username, None, url.database)
    meta = ConnectionInfo(
        "data_out_meta",
        meta_conn["conn_type"],
        host=meta_conn["host"],
        password=meta_conn["password"],
        extra=meta_conn.get("extra", {}),  # the app secret: the stand-in requires appsecret_proof
    )

    def resolve(conn_id: str) -> ConnectionInfo:
        return meta if conn_id == "data_out_meta" else pg

    engine = engine_for(pg)
    ensure_schema(engine)
    quiet_steps = _QuietSteps()
    quiet_log = logging.getLogger("data_out.engine.quiet")
    quiet_log.addHandler(quiet_steps)
    quiet_log.setLevel(logging.INFO)
    runner = AudienceRunner(engine, load_audiences(Path(audiences_dir)), AUDIENCE, resolve)
    started = time.monotonic()
    with TreeMemory() as tree:
        # destinations in parallel, as the DAG's per-destination tasks run under the scheduler
        run_id = runner.run(f"bench/{label}", AS_OF, parallel=len(runner.cfg.destinations))
    wall = time.monotonic() - started
    with engine.connect() as conn:
        run = conn.execute(select(state.run).where(state.run.c.id == run_id)).mappings().one()
        syncs = conn.execute(select(state.sync).where(state.sync.c.run_id == run_id)).mappings().all()
    out: dict[str, Any] = {
        "seconds": round(wall, 2),
        # the process's peak RSS, or more if it and its normalising workers together occupied more
        "rss_mb": round(max(rss_mb(), tree.peak_mb), 1),
        "process_rss_mb": round(rss_mb(), 1),
        "tree_pss_mb": round(tree.peak_mb, 1),
        "members": run["members"],
        "recomputed": run["recomputed"],
        "comparison": run["comparison"],
        "stages": {"stage": run["stage_seconds"]},
    }
    for step, seconds in quiet_steps.seconds.items():  # the parts of staging a quiet day has
        out["stages"][f"stage: {step.replace('_', ' ')}"] = round(seconds, 2)
    for s in syncs:
        out["stages"][f"{s['destination']}.plan"] = s["plan_seconds"]
        out["stages"][f"{s['destination']}.push"] = s["push_seconds"]
        out[f"{s['destination']}_added"] = s["added"]
        out[f"{s['destination']}_removed"] = s["removed"]
        out[f"{s['destination']}_size"] = s["destination_size"]
    return out


class _QuietSteps(logging.Handler):
    """Keeps the step timings ``engine/quiet.py`` logs with a quiet day's staging."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seconds: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.seconds.update(getattr(record, "quiet_seconds", {}))


def phase_pandas(db_url: str) -> dict[str, Any]:
    """The usual script: both snapshots into DataFrames, an outer merge, hash what changed."""
    import hashlib

    import pandas as pd
    import phonenumbers

    engine = create_engine(db_url)
    started = time.monotonic()
    prev = pd.read_sql("SELECT customer_id, email, phone FROM bench_members_prev", engine)
    cur = pd.read_sql("SELECT customer_id, email, phone FROM bench_members", engine)
    merged = prev.merge(cur, on="customer_id", how="outer", suffixes=("_prev", ""), indicator=True)
    del prev, cur
    both = merged["_merge"] == "both"
    changed = both & (merged["email"].fillna("") != merged["email_prev"].fillna("")) | both & (
        merged["phone"].fillna("") != merged["phone_prev"].fillna("")
    )
    adds = merged[(merged["_merge"] == "right_only") | changed]
    removes = merged[merged["_merge"] == "left_only"]

    def sha(value: str) -> str:
        return hashlib.sha256(value.encode()).hexdigest()

    def email_hash(v: Any) -> str | None:
        return sha(v.strip().lower()) if isinstance(v, str) and v.strip() else None

    def phone_hash(v: Any) -> str | None:
        if not isinstance(v, str):
            return None
        try:
            n = phonenumbers.parse(v, "US")
        except phonenumbers.NumberParseException:
            return None
        return sha(phonenumbers.format_number(n, phonenumbers.PhoneNumberFormat.E164).lstrip("+"))

    hashed = 0
    for frame, email_col, phone_col in ((adds, "email", "phone"), (removes, "email_prev", "phone_prev")):
        e = frame[email_col].map(email_hash)
        p = frame[phone_col].map(phone_hash)
        hashed += int(e.notna().sum() + p.notna().sum())
    wall = time.monotonic() - started
    return {
        "seconds": round(wall, 2),
        "rss_mb": round(rss_mb(), 1),
        "adds": int(len(adds)),
        "removes": int(len(removes)),
        "hashed": hashed,
    }


def phase_floor(db_url: str) -> dict[str, Any]:
    """COPY the source table out and throw the bytes away: the cost of reading the source at all."""
    engine = create_engine(db_url)
    started = time.monotonic()
    n = 0
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cur, cur.copy("COPY bench_members TO STDOUT") as copy:
            for chunk in copy:
                n += len(chunk)
    finally:
        raw.close()
    return {"seconds": round(time.monotonic() - started, 2), "rss_mb": round(rss_mb(), 1), "bytes": n}


# -- the driver ---------------------------------------------------------------------------------------


def run_child(*args: str) -> dict[str, Any]:
    """Run one phase in a fresh interpreter; its last stdout line is the JSON result."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.scale", "phase", *args], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"bench phase {args[0]} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def start_meta_standin() -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """The Meta stand-in in its own process, so its in-memory audience does not count as our RSS."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox.standins", "--port-base", "0", "meta"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the stand-in is listening and prints its connection
    if not line.startswith("export AIRFLOW_CONN_DATA_OUT_META="):
        proc.kill()
        raise SystemExit(f"the Meta stand-in did not start: {line!r}")
    return proc, json.loads(line.split("=", 1)[1].strip().strip("'"))


def build_source(engine: Any, members: int) -> float:
    """The source table, its rows last changed three to four days ago, with an index on ``updated_at`` as a
    table with a change column usually has (or, in a columnar warehouse, its pruning by that column)."""
    started = time.monotonic()
    day_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS bench_members"))
        conn.execute(
            text("CREATE TABLE bench_members (customer_id text, email text, phone text, updated_at timestamptz)")
        )
        step = 1_000_000
        for lo in range(1, members + 1, step):
            conn.execute(text(POPULATE_SQL), {"lo": lo, "hi": min(lo + step - 1, members), "at": day_ago})
        conn.execute(text("CREATE INDEX bench_members_updated_at ON bench_members (updated_at)"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE bench_members"))
    return time.monotonic() - started


def apply_churn(engine: Any, members: int, churn: float, seed: int = 0) -> tuple[int, int]:
    """Remove and add ``churn`` x N members, the joiners stamped over the day before: yesterday for the first
    churn (``seed`` 0, which keeps the snapshot before it for the pandas reference), today for the next."""
    every = max(1, round(1 / churn))
    with engine.begin() as conn:
        if seed == 0:
            conn.execute(text("DROP TABLE IF EXISTS bench_members_prev"))
            conn.execute(text("CREATE TABLE bench_members_prev AS SELECT * FROM bench_members"))
        removed = conn.execute(text(CHURN_DELETE_SQL), {"every": every, "seed": str(seed or "")}).rowcount
        joined = max(1, round(members * churn))
        lo = members + 1 + seed * joined
        at = dt.datetime.now(dt.UTC) - dt.timedelta(days=0 if seed else 1)
        conn.execute(text(POPULATE_SQL), {"lo": lo, "hi": lo + joined - 1, "at": at})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE bench_members"))
        if seed == 0:
            conn.execute(text("VACUUM ANALYZE bench_members_prev"))
    return removed, joined


def expire_mark(engine: Any) -> None:
    """Make the next sync the one of the day's scheduled full comparison (``full_compare_every``)."""
    with engine.begin() as conn:
        conn.execute(text("UPDATE do_snapshot SET compared_at = compared_at - interval '2 days'"))


def _memory(result: dict[str, Any]) -> str:
    return f"{result['process_rss_mb']:.0f} / {result['tree_pss_mb']:.0f}"


def settle(admin: Any) -> None:
    """A CHECKPOINT before each timed phase, so that none pays for flushing what the one before wrote.

    (A first sync of 10M members leaves gigabytes of dirty pages; a daily sync starts long after they
    were written out.) Needs a superuser or the ``pg_checkpoint`` role; without it phases just run.
    """
    try:
        with admin.connect() as conn:
            conn.execute(text("CHECKPOINT"))
    except SQLAlchemyError as exc:
        print(f"  (no CHECKPOINT between phases: {type(exc).__name__})", flush=True)


def table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(v).rjust(w) for v, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=1_000_000)
    ap.add_argument("--churn", type=float, default=0.01)
    ap.add_argument(
        "--pg-url",
        default=os.environ.get("DATA_OUT_BENCH_PG_URL", DEFAULT_PG_URL),
        help="an admin connection; the benchmark creates and drops its own database",
    )
    ap.add_argument("--keep", action="store_true", help="keep the benchmark database afterwards")
    run_bench(ap.parse_args(argv))


def run_bench(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The benchmark at ``args.members``; prints its progress, table and line, and returns every phase's result."""
    admin = create_engine(args.pg_url, isolation_level="AUTOCOMMIT")
    db = f"do_bench_{args.members}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{db}"'))
    db_url = (
        make_url(args.pg_url).set(drivername="postgresql+psycopg", database=db).render_as_string(hide_password=False)
    )
    engine = create_engine(db_url)
    standin, meta_conn = start_meta_standin()
    try:
        print(f"bench: building a source of {args.members:,} members in database {db}", flush=True)
        print(f"  built in {build_source(engine, args.members):.1f}s", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, f"{AUDIENCE}.yaml").write_text(AUDIENCE_YAML.format(name=AUDIENCE))
            meta_json = json.dumps(meta_conn)
            results: dict[str, dict[str, Any]] = {}
            for phase in PHASES:
                if phase in ("churn", "quiet_churn"):
                    removed, joined = apply_churn(engine, args.members, args.churn, seed=int(phase != "churn"))
                    print(f"  {phase}: {removed:,} members left, {joined:,} joined", flush=True)
                if phase in FULL_COMPARISON:
                    expire_mark(engine)
                settle(admin)
                results[phase] = run_child("dataout", db_url, meta_json, tmp, phase)
                r = results[phase]
                print(
                    f"  data out {phase}: {r['seconds']:.1f}s ({r['comparison']} comparison), "
                    f"peak RSS {r['rss_mb']:.0f} MB",
                    flush=True,
                )
        settle(admin)
        results["pandas"] = run_child("pandas", db_url)
        print(f"  pandas: {results['pandas']['seconds']:.1f}s, peak RSS {results['pandas']['rss_mb']:.0f} MB")
        settle(admin)
        results["floor"] = run_child("floor", db_url)
        print(f"  floor (COPY out): {results['floor']['seconds']:.1f}s", flush=True)
    finally:
        standin.terminate()
        standin.wait(timeout=30)
        engine.dispose()
        if not args.keep:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))

    stages = sorted({s for p in PHASES for s in results[p]["stages"]}, key=lambda s: (not s.startswith("stage"), s))
    rows = [(stage, *(f"{results[p]['stages'].get(stage) or 0:.2f}" for p in PHASES)) for stage in stages]
    rows.append(("wall (whole run)", *(f"{results[p]['seconds']:.2f}" for p in PHASES)))
    rows.append(("peak RSS MB", *(f"{results[p]['rss_mb']:.0f}" for p in PHASES)))
    rows.append(("process RSS / with workers PSS", *(_memory(results[p]) for p in PHASES)))
    rows.append(("recomputed rows", *(f"{results[p]['recomputed']:,}" for p in PHASES)))
    rows.append(("comparison", *(str(results[p]["comparison"]) for p in PHASES)))
    rows.append(
        ("meta added/removed", *(f"{results[p]['meta_added']:,}/{results[p]['meta_removed']:,}" for p in PHASES))
    )
    print()
    print(table(rows, ("stage (seconds)", *PHASES)))
    print(
        f"\npandas diff: {results['pandas']['adds']:,} adds, {results['pandas']['removes']:,} removes; "
        f"no-change sync = {results['nochange']['seconds'] / results['first']['seconds']:.1%} of the first sync"
    )
    churn, pandas, floor = results["churn"], results["pandas"], results["floor"]
    print(
        f"bench: members={args.members} churn={args.churn:g} data_out_s={churn['seconds']:.2f} "
        f"pandas_s={pandas['seconds']:.2f} floor_s={floor['seconds']:.2f} "
        f"speedup_vs_pandas={pandas['seconds'] / churn['seconds']:.2f}x "
        f"floor_ratio={churn['seconds'] / floor['seconds']:.2f}x "
        f"data_out_rss_mb={churn['rss_mb']:.0f} pandas_rss_mb={pandas['rss_mb']:.0f} "
        f"first_s={results['first']['seconds']:.2f} nochange_s={results['nochange']['seconds']:.2f} "
        f"quiet_s={results['quiet']['seconds']:.2f} quiet_churn_s={results['quiet_churn']['seconds']:.2f}"
    )
    return results


def phase_main(argv: list[str]) -> None:
    kind, *rest = argv
    if kind == "dataout":
        db_url, meta_json, audiences_dir, label = rest
        result = phase_dataout(db_url, json.loads(meta_json), audiences_dir, label)
    elif kind == "pandas":
        result = phase_pandas(rest[0])
    elif kind == "floor":
        result = phase_floor(rest[0])
    else:
        raise SystemExit(f"unknown phase {kind!r}")
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "phase":
        phase_main(sys.argv[2:])
    else:
        main()
