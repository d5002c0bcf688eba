"""Time and memory of reading a large Customer.io segment, against the floor the App API's paging sets.

    python -m bench.customerio --members 1000000        # what ``make bench-customerio`` runs

Starts the Customer.io stand-in (``sandbox.standins.customerio``, which enforces the App API's 10
requests a second in any one-second window) on loopback in a separate process, with one segment of N
people, and reads it through ``CustomerIOSource.iter_batches``, the code path staging uses, with a
consumer that walks every row and builds its member key. Customer.io serves at most 30,000 people a
page, so reading N people takes ``pages`` requests (the membership pages and the ``customer_count``
request) and no client can do it in less than ``pages / 10`` seconds: the floor. The bench prints
one line:
``bench-customerio: members=N pages=P rate=10 floor_s=F elapsed_s=E ratio=Rx rss_start_mb=S rss_peak_mb=M``
(``rss_peak_mb``: this process's peak resident memory, ``ru_maxrss``; the stand-in is not counted).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time
from multiprocessing.connection import Connection
from typing import Any

from data_out.connections import ConnectionInfo
from data_out.sources.base import member_key
from data_out.sources.customerio import CUSTOMERIO_REQUESTS_PER_SECOND, MAX_PAGE, CustomerIOSource

SEGMENT = 4242
TOKEN = "bench-app-key"  # noqa: S105 - the stand-in's key, on loopback only


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def serve(members: int, conn: Connection) -> None:
    """The stand-in's process: build the segment, send the URL, serve until told to stop."""
    from sandbox.standins.base import Running
    from sandbox.standins.customerio import CustomerIOStandIn

    standin = CustomerIOStandIn(token=TOKEN)
    standin.segments[str(SEGMENT)] = [
        {"id": f"c{i}", "email": f"person.{i}@example.com", "cio_id": f"cio{i:09x}"} for i in range(members)
    ]
    # storage order and each person's JSON, as the real workspace has them before anyone asks: the
    # bench times the reader, not the stand-in's first look at its people
    people, _ = standin._segment(str(SEGMENT))
    standin._page_body(people, "")
    with Running(standin) as running:
        serving = time.process_time()
        conn.send(running.url)
        conn.recv()  # the reader is done
        conn.send({"throttled": standin.throttled, "cpu": time.process_time() - serving})


def source(url: str, page_size: int) -> CustomerIOSource:
    """The source as staging builds it (building it imports the connection's hook: not timed)."""
    conn = ConnectionInfo("bench_customerio", "data_out_customerio", host=url, password=TOKEN)
    return CustomerIOSource(conn, SEGMENT, page_size, "bench")


def read(source: CustomerIOSource, batch_size: int) -> tuple[int, int, int]:
    """Read the segment as staging does; returns (rows, member keys, requests sent)."""
    rows = keys = 0
    for batch in source.iter_batches(batch_size):
        for row in batch:
            rows += 1
            if member_key(row["customer_id"]) is not None:
                keys += 1
    return rows, keys, source.client.attempts


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=1_000_000)
    ap.add_argument("--page-size", type=int, default=MAX_PAGE)
    ap.add_argument("--batch-size", type=int, default=10_000, help="rows per batch, as an audience's batch_size")
    args = ap.parse_args(argv)
    ctx = mp.get_context("spawn")  # the stand-in's memory and CPU stay out of this process
    ours, theirs = ctx.Pipe()
    server = ctx.Process(target=serve, args=(args.members, theirs), daemon=True)
    server.start()
    try:
        segment = source(ours.recv(), args.page_size)
        start_mb = rss_mb()
        started, cpu = time.monotonic(), time.process_time()
        rows, keys, sent = read(segment, args.batch_size)
        elapsed, cpu = time.monotonic() - started, time.process_time() - cpu
        ours.send("done")
        served: dict[str, Any] = ours.recv()
    finally:
        server.join(timeout=10)
        if server.is_alive():
            server.terminate()
    if rows != args.members or keys != args.members:
        raise SystemExit(f"read {rows} rows and {keys} member keys, expected {args.members}")
    pages = -(-args.members // args.page_size) + (1 if args.members % args.page_size == 0 else 0)
    requests = pages + 1  # the membership pages and the customer_count request
    print(
        f"{sent} requests sent, {served['throttled']} answered 429; CPU: the reader {cpu:.2f}s, "
        f"the stand-in {served['cpu']:.2f}s"
    )
    rate = CUSTOMERIO_REQUESTS_PER_SECOND
    floor = requests / rate
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"bench-customerio: members={args.members} pages={requests} rate={rate} floor_s={floor:.2f} "
        f"elapsed_s={elapsed:.2f} ratio={elapsed / floor:.2f}x rss_start_mb={start_mb:.0f} rss_peak_mb={peak_mb:.0f}"
    )


if __name__ == "__main__":
    main()
