"""Signed JSON webhooks for internal services and helpdesks.

Connection (type ``data_out_webhook``): ``host`` the receiver's base URL, ``password`` the shared signing
secret. Per audience: ``path``, the hashed ``fields`` to include, ``batch_size``.

Each request is ``{"audience", "destination", "op", "batch_id", "sent_at", "members": [...]}`` signed in
``X-DataOut-Signature: t=<unix seconds>,v1=<hex>`` where ``v1`` is HMAC-SHA256 over ``<t>.<raw body>``, with
the batch's idempotency key in ``Idempotency-Key``. A receiver may answer
``{"rejected": [{"member_key", "reason"}]}`` to refuse single rows; the rest of the batch stands.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import time
from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from data_out.destinations import register
from data_out.destinations.base import BatchResult, Destination, DestinationSettings, MemberRow, Op
from data_out.destinations.http import HttpClient
from data_out.redact import scrub

FIELD_COLUMNS = {
    "email_sha256": ("email_sha256", "email_sha256"),
    "phone_sha256": ("phone_sha256", "phone_e164_sha256"),
    "external_id": ("external_id", "external_id"),
}


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    ts = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={ts},v1={digest}"


class WebhookSettings(DestinationSettings):
    type: Literal["webhook"]
    path: str = Field("/", pattern=r"^/[\w\-./]*$")
    fields: list[Literal["email_sha256", "phone_sha256", "external_id"]] = Field(default_factory=list)


@register
class WebhookDestination(Destination):
    type_name = "webhook"
    pool = "data_out_webhook"  # see deploy/pools.json
    settings_model = WebhookSettings
    default_conn_id = "data_out_webhook"
    max_batch_rows = 1_000
    activation = False

    settings: WebhookSettings

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.secret = self.connection.password or ""
        self.client = HttpClient("webhook", self.connection, default_base_url="http://127.0.0.1")

    @classmethod
    def columns_for(cls, settings: DestinationSettings) -> dict[str, str]:
        assert isinstance(settings, WebhookSettings)
        return dict(FIELD_COLUMNS[f] for f in settings.fields)

    @property
    def identity_columns(self) -> dict[str, str]:  # type: ignore[override]
        return self.columns_for(self.settings)

    def push(self, op: Op, rows: Sequence[MemberRow], idempotency_key: str) -> BatchResult:
        members = []
        for r in rows:
            m: dict[str, object] = {"member_key": r.member_key, "in_holdout": bool(r.in_holdout)}
            for f in self.settings.fields:
                m[f] = getattr(r, FIELD_COLUMNS[f][0])
            members.append(m)
        body = json.dumps(
            {
                "audience": self.audience,
                "destination": self.settings.label,
                "op": op.value,
                "batch_id": idempotency_key,
                "sent_at": dt.datetime.now(dt.UTC).isoformat(),
                "members": members,
            },
            separators=(",", ":"),
        ).encode()
        resp = self.client.request(
            "POST",
            self.settings.path,
            data=body,
            headers={
                "Content-Type": "application/json",
                "Idempotency-Key": idempotency_key,
                "X-DataOut-Signature": sign(self.secret, body),
            },
        )
        answer = resp.json() if resp.content else {}
        sent = {r.member_key for r in rows}
        rejected = {
            str(x["member_key"]): scrub(str(x.get("reason", "rejected by receiver")))
            for x in answer.get("rejected", [])
            if str(x.get("member_key")) in sent
        }
        return BatchResult(rejected=rejected, received=len(rows))

    def close(self) -> None:
        self.client.close()
