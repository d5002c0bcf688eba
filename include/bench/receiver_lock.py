"""The Customer.io receiver with its events table locked by another transaction, on the local Postgres.

    python -m bench.receiver_lock --posts 4        # PYTHONPATH=plugins:include, Postgres at 127.0.0.1:5432

Serves the receiver (default limits) with uvicorn, locks ``do_metric_event`` from a second engine, sends
``--posts`` signed webhooks at once and 20 ``/health`` requests meanwhile, then releases the lock and
sends one more. Prints one line: the statuses and slowest answer of the locked posts, the median and
slowest ``/health``, and the status of the post after the release. Uses a fresh database, dropped after.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import requests
import uvicorn
from sqlalchemy import create_engine, text

from data_out.connections import ConnectionInfo, engine_for
from data_out.metrics.receiver import create_app, signature
from data_out.state import ensure_schema, metric_event
from sandbox.smtp_sink import free_port

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
KEY = "bench-signing-key-0a1b2c3d"


def _signed_post(url: str, i: int) -> requests.Response:
    body = json.dumps(
        {
            "event_id": f"bench{i}",
            "object_type": "email",
            "metric": "delivered",
            "timestamp": 1_793_000_000,
            "data": {"customer_id": f"c{i}"},
        }
    ).encode()
    stamp = str(int(time.time()))
    headers = {"X-CIO-Timestamp": stamp, "X-CIO-Signature": signature(KEY, stamp, body)}
    return requests.post(f"{url}/customerio", data=body, headers=headers, timeout=60)


def _timed(call: Callable[[], requests.Response]) -> tuple[int, float]:
    started = time.monotonic()
    status = call().status_code
    return status, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=4)
    posts = parser.parse_args().posts
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"do_bench_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        engine = engine_for(
            ConnectionInfo("bench", "postgres", host="127.0.0.1", port=5432, login="postgres", schema=name)
        )
        ensure_schema(engine)
        locker = create_engine(engine.url)
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(create_app(lambda: KEY, lambda: engine), host="127.0.0.1", port=port, log_level="error")
        )
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.01)
        url = f"http://127.0.0.1:{port}"
        with locker.connect() as lock, ThreadPoolExecutor(posts) as pool:
            tx = lock.begin()
            lock.execute(text(f"LOCK TABLE {metric_event.name} IN ACCESS EXCLUSIVE MODE"))
            pending = [pool.submit(_timed, lambda i=i: _signed_post(url, i)) for i in range(posts)]
            health = [_timed(lambda: requests.get(f"{url}/health", timeout=60)) for _ in range(20)]
            locked = [p.result() for p in pending]
            tx.rollback()
        after, _ = _timed(lambda: _signed_post(url, posts))
        server.should_exit = True
        print(
            f"receiver_lock: posts={posts} locked_statuses={sorted({s for s, _ in locked})} "
            f"locked_max_s={max(t for _, t in locked):.2f} "
            f"health_median_s={statistics.median(t for _, t in health):.3f} "
            f"health_max_s={max(t for _, t in health):.3f} after_release={after}"
        )
        engine.dispose()
        locker.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
