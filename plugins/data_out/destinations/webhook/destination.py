"""Signed JSON webhooks for internal services and helpdesks.

Connection (type ``data_out_webhook``): ``host`` the receiver's base URL, ``password`` the shared signing
secret. Per audience: ``path``, the hashed ``fields`` to include, ``batch_size``.

Each request is ``{"audience", "destination", "op", "batch_id", "sent_at", "members": [...]}`` signed in
``X-DataOut-Signature: t=<unix seconds>,v1=<hex>`` where ``v1`` is HMAC-SHA256 over ``<t>.<raw body>``, with
the batch's idempotency key in ``Idempotency-Key``. Every attempt is signed afresh, so a retry after a long
``Retry-After`` still falls inside the receiver's replay window; the body (and so ``batch_id``) stays the
same. A receiver may answer ``{"rejected": [{"member_key", "reason"}]}`` to refuse single rows; the rest of
the batch stands. docs/webhooks.md has the contract and a verifier to copy.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence

from data_out.connection_types import kind
from data_out.connections import ConnectionInfo
from data_out.destinations import register
from data_out.destinations.base import (
    BatchResult,
    Destination,
    DestinationSettings,
    MemberRow,
    Op,
)
from data_out.destinations.http import HttpClient
from data_out.destinations.webhook.settings import WebhookSettings
from data_out.destinations.webhook.signing import fresh_signature, signing_secret
from data_out.redact import scrub

FIELD_COLUMNS = {
    "email_sha256": ("email_sha256", "email_sha256"),
    "phone_sha256": ("phone_sha256", "phone_e164_sha256"),
    "external_id": ("external_id", "external_id"),
}


@register
class WebhookDestination(Destination):
    type_name = "webhook"
    pool = kind("webhook").pool  # sized in deploy/pools.json
    settings_model = WebhookSettings
    default_conn_id = kind("webhook").conn_type
    max_batch_rows = 1_000
    activation = False

    settings: WebhookSettings

    def __init__(self, audience: str, settings: DestinationSettings, connection: ConnectionInfo) -> None:
        super().__init__(audience, settings, connection)
        self.secret = signing_secret(self.connection)
        from data_out.destinations.webhook.hook import WebhookHook  # signed per attempt, no credential on the session

        self.client: HttpClient = WebhookHook(connection=self.connection, default_base_url="http://127.0.0.1").client()

    @classmethod
    def columns_for(cls, settings: DestinationSettings) -> dict[str, str]:
        assert isinstance(settings, WebhookSettings)
        return dict(FIELD_COLUMNS[f] for f in settings.fields)

    @property
    def identity_columns(self) -> dict[str, str]:  # type: ignore[override]  # class-wide in the base
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
        sent = {r.member_key for r in rows}
        resp = self.client.request(
            "POST",
            self.settings.path,
            data=body,
            members=sent,  # masked if the receiver's error quotes them
            headers={"Content-Type": "application/json", "Idempotency-Key": idempotency_key},
            attempt_headers=fresh_signature(self.secret, body),
        )
        answer = resp.json() if resp.content else {}
        rejected = {
            str(x["member_key"]): scrub(str(x.get("reason", "rejected by receiver")), members=sent)
            for x in answer.get("rejected", [])
            if str(x.get("member_key")) in sent
        }
        return BatchResult(rejected=rejected, received=len(rows))

    def close(self) -> None:
        self.client.close()
