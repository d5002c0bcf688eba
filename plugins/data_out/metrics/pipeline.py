"""Send tasks: metric events of one time window become task records, routed exactly once.

Everything here works on a window ``[start, end)`` of *received* time (webhook arrival, or the event
time for warehouse exports), so one data interval is one unit of work: re-running it, or backfilling a
date range twice, yields the same send log, because

* each task has a deterministic dedupe key (delivery, metric, link), the send log's primary key;
* each (task, route) delivery is recorded in ``do_task_route`` and never sent again, and the receivers
  dedupe a replayed request too (Segment by ``messageId`` = dedupe key, webhooks by ``Idempotency-Key``).

Which metrics go to which route is configuration (``include/metrics/routing.yaml``); the default is
narrow, sends and failures only, as the operator guides advise.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    Index,
    MetaData,
    String,
    Table,
    delete,
    func,
    insert,
    select,
    text,
)

from data_out import state
from data_out.chunking import chunks
from data_out.connections import ConnectionInfo
from data_out.destinations.http import HttpClient
from data_out.destinations.segment.batch import JSON_HEADERS, MAX_EVENT_BYTES, batch_bodies, encode_message
from data_out.destinations.webhook.signing import fresh_signature, signing_secret
from data_out.hashing import sha256_hex
from data_out.metrics.events import METRICS, Metric, store_many
from data_out.sources.warehouse import window_params
from data_out.timestamps import parse_timestamp

log = logging.getLogger(__name__)

ROUTING_ENV = "DATA_OUT_METRICS_ROUTING"
DEFAULT_ROUTING = Path(__file__).resolve().parents[3] / "include" / "metrics" / "routing.yaml"
NARROW: list[Metric] = ["sent", "failed", "bounced", "dropped"]

#: metric -> Segment's Email Events spec name (email channel only): Email Delivered, Email Opened, Email
#: Link Clicked, Email Bounced, Email Marked as Spam, Unsubscribed
SEGMENT_EMAIL_SPEC = {
    "delivered": "Email Delivered",
    "opened": "Email Opened",
    "clicked": "Email Link Clicked",
    "bounced": "Email Bounced",
    "spammed": "Email Marked as Spam",
    "unsubscribed": "Unsubscribed",
}
#: metrics (and channels) the spec has no event for keep a name that says whose event it is, so no tool
#: mistakes it for a spec event: "Customer.io Email Sent", "Customer.io SMS Delivered", ...
SEGMENT_PRODUCT_PREFIX = "Customer.io"
CHANNEL_NAMES = {"email": "Email", "sms": "SMS", "push": "Push", "in_app": "In-App", "webhook": "Webhook"}


class Routing(BaseModel):
    """Metric routing, and where warehouse exports come from."""

    model_config = ConfigDict(extra="forbid")

    warehouse: list[Metric] = Field(default_factory=lambda: list(NARROW))
    segment: list[Metric] = Field(default_factory=lambda: list(NARROW))
    webhook: list[Metric] = Field(default_factory=lambda: list(NARROW))
    warehouse_conn_id: str = "data_out_warehouse"
    send_log_table: str = Field("cio_send_log", pattern=r"^[a-z][a-z0-9_]{0,62}$")
    segment_conn_id: str = "data_out_segment"
    webhook_conn_id: str = "data_out_webhook"
    webhook_path: str = "/hooks/send-tasks"
    export_sql_file: str | None = Field(None, description="SQL over the warehouse's Customer.io export")


def load_routing(path: Path | None = None) -> tuple[Routing, Path]:
    path = path or Path(os.environ.get(ROUTING_ENV) or DEFAULT_ROUTING)
    if not path.is_file():
        return Routing(), path
    return Routing.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")) or {}), path


def send_log_table(name: str) -> Table:
    """The warehouse's messaging history: one row per send task."""
    return Table(
        name,
        MetaData(),
        Column("dedupe_key", String(64), primary_key=True),
        Column("customer_id", String(256)),
        Column("cio_id", String(64)),
        Column("email_sha256", String(64)),
        Column("delivery_id", String(128)),
        Column("campaign_id", BigInteger),
        Column("campaign_name", String(200)),
        Column("broadcast_id", BigInteger),
        Column("action_id", BigInteger),
        Column("channel", String(32), nullable=False),
        Column("status", String(16), nullable=False),
        Column("link", String(500)),
        Column("occurred_at", DateTime(timezone=False), nullable=False),
        Column("event_id", String(64), nullable=False),
        Index(f"ix_{name}_customer", "customer_id", "status", "occurred_at"),
    )


def dedupe_key(delivery_id: str | None, event_id: str, metric: str, link_id: int | None) -> str:
    """One task per delivery and metric (and link, for clicks); events without a delivery stand alone."""
    basis = f"{delivery_id}|{metric}|{link_id or ''}" if delivery_id else f"event|{event_id}"
    return sha256_hex(basis)[:40]


def _batch_digest(dedupe_keys: Iterable[str]) -> str:
    """What keys a delivered batch: stable for the same tasks in the same order, so a re-sent batch keeps it."""
    return sha256_hex("|".join(dedupe_keys))[:40]


@dataclass
class _Part:
    """One request of a delivery route: the tasks it carries and what to POST."""

    tasks: list[dict[str, Any]]
    path: str
    body: bytes
    headers: dict[str, str]
    attempt_headers: Callable[[], dict[str, str]] | None = None


@dataclass
class WindowResult:
    loaded: int = 0
    tasks: int = 0
    routed: dict[str, int] | None = None


class MetricsPipeline:
    def __init__(self, engine: Engine, routing: Routing, resolve: Any, routing_path: Path | None = None) -> None:
        self.engine = engine
        self.routing = routing
        self.resolve = resolve
        self.routing_path = routing_path or DEFAULT_ROUTING

    # -- in ----------------------------------------------------------------------------------------
    def load_exports(self, wh: Engine, start: dt.datetime, end: dt.datetime) -> int:
        """Copy events of ``[start, end)`` from the warehouse's Customer.io export into the landing table."""
        if not self.routing.export_sql_file:
            return 0
        sql = (self.routing_path.parent / self.routing.export_sql_file).read_text(encoding="utf-8")
        params = window_params(end, {})
        params.update(start=window_params(start, {})["as_of"], end=params.pop("as_of"))
        loaded = 0
        with wh.connect() as src, self.engine.begin() as dst:
            result = src.execution_options(stream_results=True, yield_per=5000).execute(text(sql), params)
            for part in result.mappings().partitions(5000):
                rows = [self._export_row(dict(r)) for r in part]
                store_many(dst, rows)
                loaded += len(rows)
        return loaded

    @staticmethod
    def _export_row(r: dict[str, Any]) -> dict[str, Any]:
        occurred = parse_timestamp(r["occurred_at"])
        if r.get("metric") not in METRICS:
            raise ValueError(f"export row {r.get('event_id')!r}: unknown metric {r.get('metric')!r}")
        return {
            "event_id": str(r["event_id"])[:64],
            "metric": r["metric"],
            "channel": r.get("channel") or "email",
            "occurred_at": occurred,
            "day": occurred.date().isoformat(),
            "received_at": occurred,
            "customer_id": None if r.get("customer_id") is None else str(r["customer_id"]),
            "cio_id": r.get("cio_id"),
            "email_sha256": None,
            "delivery_id": r.get("delivery_id"),
            "campaign_id": r.get("campaign_id"),
            "campaign_name": r.get("campaign_name"),
            "broadcast_id": r.get("broadcast_id"),
            "action_id": r.get("action_id"),
            "link_id": r.get("link_id"),
            "href": None,
        }

    # -- tasks -------------------------------------------------------------------------------------
    def tasks(self, start: dt.datetime, end: dt.datetime) -> Iterator[dict[str, Any]]:
        e = state.metric_event
        with self.engine.connect() as conn:
            rows = (
                conn.execution_options(yield_per=5000)
                .execute(
                    select(e)
                    .where(e.c.received_at >= start, e.c.received_at < end)
                    .order_by(e.c.received_at, e.c.event_id)
                )
                .mappings()
            )
            for r in rows:
                occurred = r["occurred_at"]
                yield {
                    "dedupe_key": dedupe_key(r["delivery_id"], r["event_id"], r["metric"], r["link_id"]),
                    "customer_id": r["customer_id"],
                    "cio_id": r["cio_id"],
                    "email_sha256": r["email_sha256"],
                    "delivery_id": r["delivery_id"],
                    "campaign_id": r["campaign_id"],
                    "campaign_name": r["campaign_name"],
                    "broadcast_id": r["broadcast_id"],
                    "action_id": r["action_id"],
                    "channel": r["channel"],
                    "status": r["metric"],
                    "link": r["href"],
                    "occurred_at": (occurred.astimezone(dt.UTC) if occurred.tzinfo else occurred).replace(tzinfo=None),
                    "event_id": r["event_id"],
                }

    def write_send_log(self, wh: Engine, start: dt.datetime, end: dt.datetime) -> int:
        table = send_log_table(self.routing.send_log_table)
        state.create_tables(wh, table.metadata)
        wanted = set(self.routing.warehouse)
        written, buffer = 0, []
        with wh.begin() as conn:  # streamed: a long backfill window never sits in memory whole
            for t in self.tasks(start, end):
                if t["status"] in wanted:
                    buffer.append(t)
                if len(buffer) == 5000:
                    conn.execute(state.insert_ignore(wh, table), buffer)
                    written, buffer = written + len(buffer), []
            if buffer:
                conn.execute(state.insert_ignore(wh, table), buffer)
        return written + len(buffer)

    # -- routes ------------------------------------------------------------------------------------
    def _undelivered(self, route: str, tasks: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        r = state.task_route
        keys = list({t["dedupe_key"] for t in tasks})
        done: set[str] = set()
        with self.engine.connect() as conn:
            for chunk in chunks(keys, 5000):
                done |= set(
                    conn.execute(select(r.c.dedupe_key).where(r.c.route == route, r.c.dedupe_key.in_(chunk))).scalars()
                )
        seen, out = set(), []
        for t in tasks:
            if t["dedupe_key"] not in done and t["dedupe_key"] not in seen:
                seen.add(t["dedupe_key"])
                out.append(t)
        return out

    def _mark(self, route: str, tasks: Sequence[dict[str, Any]]) -> None:
        now = state.utcnow()
        with self.engine.begin() as conn:
            conn.execute(
                state.insert_ignore(self.engine, state.task_route),
                [{"dedupe_key": t["dedupe_key"], "route": route, "delivered_at": now} for t in tasks],
            )

    def route_segment(self, start: dt.datetime, end: dt.datetime) -> int:
        tasks = self._pending("segment", self.routing.segment, start, end)
        if not tasks:
            return 0
        conn: ConnectionInfo = self.resolve(self.routing.segment_conn_id)
        from data_out.destinations.http_hook import http_hook  # the HTTP provider: loaded to send

        client = HttpClient(
            "segment", conn, hook=http_hook(conn, "https://api.segment.io"), auth=(conn.password or "", "")
        )
        self._deliver("segment", client, self._segment_parts(tasks))
        return len(tasks)

    @staticmethod
    def _segment_parts(tasks: list[dict[str, Any]]) -> Iterator[_Part]:
        """Segment batches of the tasks' events; a task without a customer id or with an oversized event is skipped."""
        sent_at = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        routed, encoded = [], []
        for t in tasks:
            if not t["customer_id"]:
                continue
            message = encode_message(segment_event(t))
            if len(message) > MAX_EVENT_BYTES:
                log.error(
                    "send task %s: its Segment event is over %d bytes; not sent", t["dedupe_key"], MAX_EVENT_BYTES
                )
                continue
            routed.append(t)
            encoded.append(message)
        done = 0
        for n, body in batch_bodies(encoded, sent_at):
            part = routed[done : done + n]
            key = "seg-" + _batch_digest(t["dedupe_key"] for t in part)
            # Segment dedupes a re-sent part by messageId (the dedupe key); Idempotency-Key only traces it
            yield _Part(part, "/v1/batch", body, {**JSON_HEADERS, "Idempotency-Key": key})
            done += n

    def route_webhook(self, start: dt.datetime, end: dt.datetime, batch_size: int = 500) -> int:
        tasks = self._pending("webhook", self.routing.webhook, start, end)
        if not tasks:
            return 0
        conn: ConnectionInfo = self.resolve(self.routing.webhook_conn_id)
        secret = signing_secret(conn)
        from data_out.destinations.http_hook import http_hook  # the HTTP provider: loaded to send

        client = HttpClient("webhook", conn, hook=http_hook(conn, "http://127.0.0.1"))
        self._deliver("webhook", client, self._webhook_parts(tasks, batch_size, secret))
        return len(tasks)

    def _webhook_parts(self, tasks: list[dict[str, Any]], batch_size: int, secret: str) -> Iterator[_Part]:
        """Signed ``send_tasks`` bodies of ``batch_size`` tasks, each keyed by its tasks' dedupe keys."""
        for chunk in chunks(tasks, batch_size):
            key = "tasks-" + _batch_digest(sorted(t["dedupe_key"] for t in chunk))
            body = json.dumps(
                {"kind": "send_tasks", "batch_id": key, "tasks": [_jsonable(t) for t in chunk]},
                separators=(",", ":"),
            ).encode()
            headers = {"Content-Type": "application/json", "Idempotency-Key": key}
            yield _Part(list(chunk), self.routing.webhook_path, body, headers, fresh_signature(secret, body))

    def _pending(
        self, route: str, statuses: Iterable[str], start: dt.datetime, end: dt.datetime
    ) -> list[dict[str, Any]]:
        """The window's tasks in one of ``statuses`` that ``route`` has not delivered yet."""
        wanted = set(statuses)
        return self._undelivered(route, [t for t in self.tasks(start, end) if t["status"] in wanted])

    def _deliver(self, route: str, client: HttpClient, parts: Iterable[_Part]) -> None:
        """POST each part and mark its tasks delivered on ``route`` once the far side accepted it; close the client."""
        try:
            for part in parts:
                client.request(
                    "POST", part.path, data=part.body, headers=part.headers, attempt_headers=part.attempt_headers
                )
                self._mark(route, part.tasks)
        finally:
            client.close()

    # -- volumes -----------------------------------------------------------------------------------
    def count_volumes(self, start: dt.datetime, end: dt.datetime) -> dict[str, int]:
        """Recount per metric the days whose events arrived in the window (idempotent: recomputed, not added)."""
        e, v = state.metric_event, state.metric_volume
        with self.engine.begin() as conn:
            days = sorted(
                set(
                    conn.execute(
                        select(e.c.day).where(e.c.received_at >= start, e.c.received_at < end).distinct()
                    ).scalars()
                )
            )
            if not days:
                return {}
            counts = conn.execute(
                select(e.c.day, e.c.metric, func.count()).where(e.c.day.in_(days)).group_by(e.c.day, e.c.metric)
            ).all()
            conn.execute(delete(v).where(v.c.day.in_(days)))
            conn.execute(insert(v), [{"day": d, "metric": m, "count": int(n)} for d, m, n in counts])
        return {f"{d}/{m}": int(n) for d, m, n in counts}


def segment_event(t: dict[str, Any]) -> dict[str, Any]:
    """A Segment track call: Segment's Email Events spec where it has the event, with the spec's property
    names and types (``campaign_id`` a string), and Data Out's own properties beside them."""
    channel = t["channel"] or "email"
    name = SEGMENT_EMAIL_SPEC.get(t["status"]) if channel == "email" else None
    if name is None:
        label = CHANNEL_NAMES.get(channel, channel.replace("_", " ").title())
        name = f"{SEGMENT_PRODUCT_PREFIX} {label} {t['status'].replace('_', ' ').title()}"
    props: dict[str, Any] = {
        "email_id": t["delivery_id"],
        "campaign_id": None if t["campaign_id"] is None else str(t["campaign_id"]),
        "campaign_name": t["campaign_name"],
    }
    if t["link"]:
        props["link_url"] = t["link"]
    props.update(  # Data Out's own, beside the spec's
        broadcast_id=t["broadcast_id"],
        action_id=t["action_id"],
        channel=channel,
        metric=t["status"],
    )
    return {
        "type": "track",
        "userId": t["customer_id"],
        "event": name,
        "messageId": t["dedupe_key"],
        "timestamp": t["occurred_at"].replace(tzinfo=dt.UTC).isoformat(timespec="milliseconds"),
        "properties": props,
    }


def _jsonable(t: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.replace(tzinfo=dt.UTC).isoformat() if isinstance(v, dt.datetime) else v) for k, v in t.items()}
