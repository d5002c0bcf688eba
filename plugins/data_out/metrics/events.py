"""Metric events: validation of Customer.io reporting webhooks and the idempotent landing table.

Only what routing needs is kept, and identifiers are hashed on the way in: the landing table holds the
customer id, Customer.io's ``cio_id`` and the SHA-256 of the normalised email, never a raw address.
Links keep their scheme, host and path; query strings (which often carry tokens or emails) are dropped.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection

from data_out import state
from data_out.identity import normalize_email, sha256_hex

METRICS = (
    "sent",
    "delivered",
    "opened",
    "clicked",
    "converted",
    "bounced",
    "spammed",
    "dropped",
    "unsubscribed",
    "failed",
)
Metric = Literal[
    "sent", "delivered", "opened", "clicked", "converted", "bounced", "spammed", "dropped", "unsubscribed", "failed"
]


#: Customer.io's numeric ids, bounded to the state database's BIGINT: anything larger is refused as a
#: malformed field (400), never left to fail at insert time as an outage (503) the sender retries for days
Id = Annotated[int, Field(ge=0, le=2**63 - 1)]
#: unix seconds up to the last second of year 9999, the largest datetime Python represents
UnixSeconds = Annotated[int, Field(gt=0, le=253_402_300_799)]


class WebhookData(BaseModel):
    model_config = ConfigDict(extra="allow")

    customer_id: Annotated[str, Field(max_length=256)] | Id | None = None
    identifiers: dict[str, Any] = Field(default_factory=dict)
    delivery_id: str | None = Field(None, max_length=128)
    campaign_id: Id | None = None
    campaign_name: str | None = None
    broadcast_id: Id | None = None
    action_id: Id | None = None
    recipient: str | None = None
    href: str | None = None
    link_id: Id | None = None


class WebhookEvent(BaseModel):
    """One Customer.io reporting webhook (``event_id``, ``object_type``, ``metric``, ``timestamp``, ``data``)."""

    model_config = ConfigDict(extra="allow")

    event_id: str = Field(min_length=1, max_length=64)
    object_type: str = Field(min_length=1, max_length=32)
    metric: Metric
    timestamp: UnixSeconds
    data: WebhookData


def safe_link(href: str | None) -> str | None:
    """Scheme, host and path of a clicked link. The query and fragment go (tokens, UTM tags with emails),
    and so does a path segment holding an email (``/unsubscribe/jane@example.com``): the link is
    forwarded to Segment and webhooks."""
    if not href:
        return None
    parts = urlsplit(href)
    path = "/".join("<email>" if "@" in unquote(seg) else seg for seg in parts.path.split("/"))
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))[:500]


def row_from_event(event: WebhookEvent, received_at: dt.datetime) -> dict[str, Any]:
    d = event.data
    ids = d.identifiers or {}
    email = normalize_email(ids.get("email") or (d.recipient if event.object_type == "email" else None))
    occurred = dt.datetime.fromtimestamp(event.timestamp, dt.UTC)
    customer = d.customer_id if d.customer_id is not None else ids.get("id")
    return {
        "event_id": event.event_id,
        "metric": event.metric,
        "channel": event.object_type,
        "occurred_at": occurred,
        "day": occurred.date().isoformat(),
        "received_at": received_at,
        "customer_id": None if customer is None else str(customer)[:256],
        "cio_id": (str(ids["cio_id"])[:64] if ids.get("cio_id") else None),
        "email_sha256": sha256_hex(email.value) if email.value else None,
        "delivery_id": d.delivery_id,
        "campaign_id": d.campaign_id,
        "campaign_name": (d.campaign_name or None) and d.campaign_name[:200],
        "broadcast_id": d.broadcast_id,
        "action_id": d.action_id,
        "link_id": d.link_id,
        "href": safe_link(d.href),
    }


def store_many(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert events in bulk; events whose ``event_id`` is already stored are ignored."""
    if rows:
        conn.execute(state.insert_ignore(conn.dialect, state.metric_event), rows)
