"""The message-metrics part of ``make demo``: warehouse exports and signed webhooks in, send tasks out."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import threading
import time
from collections import Counter
from typing import Any

import requests
import uvicorn
from sqlalchemy import Engine, func, select, text

from data_out import state
from data_out.hooks.state import connection_info
from data_out.metrics.pipeline import MetricsPipeline, load_routing
from data_out.metrics.receiver import create_app, signature
from sandbox.smtp_sink import free_port

SECRET = "cio-demo-signing-key"
FOLLOW_UPS = [
    ("delivered", 0.9),
    ("opened", 0.4),
    ("clicked", 0.1),
    ("bounced", 0.03),
    ("unsubscribed", 0.01),
    ("spammed", 0.003),
]


def _serve_receiver(engine: Engine) -> tuple[uvicorn.Server, str]:
    app = create_app(lambda: SECRET, lambda: engine)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return server, f"http://127.0.0.1:{port}/customerio"


def _events(wh: Engine, as_of: dt.datetime) -> list[dict[str, Any]]:
    """Customer.io-shaped reporting events for the last two days of sample sends."""
    since = (as_of - dt.timedelta(days=2)).replace(tzinfo=None)
    with wh.connect() as conn:
        sends = conn.execute(
            text(
                "SELECT m.delivery_id, m.customer_id, m.campaign_id, m.channel, m.sent_at, c.email "
                "FROM message_sends m JOIN customers c ON c.customer_id = m.customer_id "
                "WHERE m.sent_at >= :since ORDER BY m.delivery_id"
            ),
            {"since": since},
        ).all()
    rng = random.Random(11)
    out = []
    for delivery_id, customer_id, campaign_id, channel, sent_at, email in sends:
        sent = sent_at if isinstance(sent_at, dt.datetime) else dt.datetime.fromisoformat(str(sent_at))
        for metric, p in FOLLOW_UPS:
            if rng.random() < p:
                at = sent + dt.timedelta(minutes=rng.randrange(1, 600))
                data: dict[str, Any] = {
                    "customer_id": customer_id,
                    "delivery_id": delivery_id,
                    "campaign_id": campaign_id,
                    "recipient": email,
                    "identifiers": {"id": customer_id, "email": email},
                }
                if metric == "clicked":
                    data.update(href="https://shop.example.com/cart?utm_source=email", link_id=1)
                out.append(
                    {
                        "event_id": f"{delivery_id}:{metric}",
                        "object_type": channel,
                        "metric": metric,
                        "timestamp": int(at.replace(tzinfo=dt.UTC).timestamp()),
                        "data": data,
                    }
                )
    return out


def run(bag: Any, state_engine: Engine, wh: Engine, as_of: dt.datetime) -> None:
    routing, path = load_routing()
    pipeline = MetricsPipeline(state_engine, routing, connection_info, path)
    start = as_of - dt.timedelta(days=2)
    loaded = pipeline.load_exports(wh, start, as_of)
    tasks = pipeline.write_send_log(wh, start, as_of)
    print(
        f"\nmessage metrics: loaded {loaded:,} sends from the warehouse export of the last two days "
        f"({tasks:,} send tasks written to {routing.send_log_table})"
    )

    server, url = _serve_receiver(state_engine)
    session = requests.Session()
    events = _events(wh, as_of)
    statuses: Counter[str] = Counter()
    for e in events + events[:50]:  # Customer.io retries: the last 50 are replays
        raw = json.dumps(e).encode()
        ts = str(int(time.time()))
        r = session.post(
            url,
            data=raw,
            headers={
                "X-CIO-Timestamp": ts,
                "X-CIO-Signature": signature(SECRET, ts, raw),
                "Content-Type": "application/json",
            },
            timeout=10,
        )
        statuses[r.json()["status"]] += 1
    server.should_exit = True
    print(
        f"receiver: {sum(statuses.values()):,} signed webhooks posted -> "
        + ", ".join(f"{n:,} {s}" for s, n in sorted(statuses.items()))
    )

    logical = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)  # its data interval is the current hour
    dr = bag.get_dag("data_out_message_metrics").test(logical_date=logical)
    e = state.metric_event
    with state_engine.connect() as conn:
        by_metric = dict(conn.execute(select(e.c.metric, func.count()).group_by(e.c.metric)).all())
        routed = dict(
            conn.execute(select(state.task_route.c.route, func.count()).group_by(state.task_route.c.route)).all()
        )
    print(f"  data_out_message_metrics                 {getattr(dr, 'state', None)!s}")
    print("events landed by metric: " + ", ".join(f"{m} {n:,}" for m, n in sorted(by_metric.items())))
    print(
        "send tasks delivered: "
        + ", ".join(f"{r} {n:,}" for r, n in sorted(routed.items()))
        + f" (routing: {os.path.relpath(path)})"
    )
