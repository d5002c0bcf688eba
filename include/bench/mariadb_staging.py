"""Memory while staging a large audience from MariaDB: the source is streamed, so RSS stays flat.

    python -m bench.mariadb_staging --members 1000000        # what ``make bench-mariadb`` runs

Builds ``bench_members`` (N rows, emails with case and whitespace noise, two thirds with a phone) in a
fresh MariaDB database (from MariaDB's sequence engine, so building costs no Python memory), then runs
the stage step of one audience whose source is that database, with the embedded SQLite state database.
The rows come through a server-side cursor (mysqlclient's ``SSCursor``, SQLAlchemy's ``stream_results``)
in batches. A thread samples this process's RSS; the bench prints the RSS after each quarter of the
run and the peak, then drops the database. It ends with one line:
``bench-mariadb: members=N seconds=S rss_mb_quarters=a/b/c/d peak_rss_mb=P``
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import tempfile
import threading
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

from data_out.config import load_audiences
from data_out.connections import ConnectionInfo, dispose, engine_for
from data_out.engine.runner import AudienceRunner
from data_out.state import ensure_schema

AUDIENCE = "bench_mariadb_v1"
AS_OF = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
AUDIENCE_YAML = f"""\
name: {AUDIENCE}
owner: bench
purpose: MariaDB staging memory benchmark
source:
  conn_id: bench_mariadb
  query: SELECT customer_id, email, phone FROM bench_members
identifiers: {{email: email, phone: phone, default_region: US}}
holdout: {{percent: 10, salt: bench}}
destinations: [{{type: warehouse, conn_id: bench_state}}]
"""


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


class Sampler(threading.Thread):
    def __init__(self, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.interval, self.samples, self.done = interval, [], threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval):
            self.samples.append(rss_mb())


def build(admin_url: str, name: str, members: int) -> None:
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
        conn.execute(
            text(
                f"CREATE TABLE `{name}`.bench_members (customer_id VARCHAR(32) PRIMARY KEY, "
                "email VARCHAR(320), phone VARCHAR(32))"
            )
        )
        conn.execute(
            text(
                f"INSERT INTO `{name}`.bench_members "
                "SELECT CONCAT('c', seq), CONCAT(IF(seq % 5 = 0, '  ', ''), 'Person.', seq, '@Example.com'), "
                "IF(seq % 3 = 0, NULL, CONCAT('(212) 555-', LPAD(seq % 10000, 4, '0'))) "
                f"FROM seq_1_to_{members}"
            )
        )
    admin.dispose()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=1_000_000)
    ap.add_argument("--mariadb-url", default="mysql://root@127.0.0.1:3306/test")
    args = ap.parse_args(argv)
    url = create_engine(args.mariadb_url).url
    name = f"do_bench_{uuid.uuid4().hex[:10]}"
    started = time.monotonic()
    build(args.mariadb_url, name, args.members)
    print(f"built {args.members:,} members in MariaDB in {time.monotonic() - started:.1f}s", flush=True)
    source = ConnectionInfo("bench_mariadb", "mysql", url.host, url.port, url.username, url.password, name)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "aud").mkdir()
            (Path(tmp) / "aud" / f"{AUDIENCE}.yaml").write_text(AUDIENCE_YAML)
            state_info = ConnectionInfo("bench_state", "sqlite", host=str(Path(tmp) / "state.sqlite"))
            state = engine_for(state_info)
            ensure_schema(state)
            runner = AudienceRunner(state, load_audiences(Path(tmp) / "aud"), AUDIENCE, {"bench_mariadb": source}.get)
            run_id = runner.start("bench", AS_OF)
            before = rss_mb()
            sampler = Sampler()
            sampler.start()
            t = time.monotonic()
            stats = runner.stage(run_id, "bench")
            seconds = time.monotonic() - t
            sampler.done.set()
            sampler.join()
            dispose(state_info)
    finally:
        dispose(source)
        admin = create_engine(args.mariadb_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
    samples = sampler.samples or [rss_mb()]
    quarters = [samples[min(len(samples) - 1, len(samples) * q // 4)] for q in (1, 2, 3, 4)]
    print(f"staged {stats.members:,} members ({stats.source_rows:,} source rows) in {seconds:.1f}s")
    per_quarter = " / ".join(f"{q:.0f}" for q in quarters)
    print(f"RSS before staging {before:.0f} MB; after each quarter of the run {per_quarter}")
    print(
        f"bench-mariadb: members={args.members} seconds={seconds:.1f} "
        f"rss_mb_quarters={'/'.join(f'{q:.0f}' for q in quarters)} peak_rss_mb={max(samples):.0f}"
    )


if __name__ == "__main__":
    main()
