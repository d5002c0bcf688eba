"""The webhook connection type: a base URL and a signing secret; ping probes the receiver."""

from __future__ import annotations

import json

from data_out.connection_types import kind
from data_out.destinations.http_hook import RETRY_EXTRAS, DataOutHttpHook
from data_out.destinations.webhook.signing import fresh_signature, signing_secret


class WebhookHook(DataOutHttpHook):
    conn_type = default_conn_name = kind("webhook").conn_type
    hook_name = "Data Out: signed webhook"
    vendor = "webhook"
    host_placeholder = "https://crm.internal.example.com"
    password_label = "Signing secret"
    extra_placeholders = RETRY_EXTRAS

    def probe(self) -> str:
        """A signed ``{"kind": "ping"}`` POST to the base URL (docs/webhooks.md): the receiver checks the
        signature as for a batch and answers 2xx; a 401 means the signing secrets differ."""
        secret = signing_secret(self.info)
        body = json.dumps({"kind": "ping"}, separators=(",", ":")).encode()
        client = self.client()
        try:
            client.request(
                "POST",
                "/",
                data=body,
                headers={"Content-Type": "application/json"},
                attempt_headers=fresh_signature(secret, body),
            )
        finally:
            client.close()
        return "webhook: the receiver accepted a signed ping"
