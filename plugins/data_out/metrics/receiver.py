"""Receiver for Customer.io reporting webhooks (a FastAPI app, served by Airflow's api-server).

Customer.io signs each request: ``X-CIO-Timestamp`` (unix seconds) and ``X-CIO-Signature``, the hex
HMAC-SHA256 of ``v0:<timestamp>:<raw body>`` with the webhook's signing key. The receiver verifies it in
constant time, refuses timestamps outside a 5-minute window (replays of captured requests), caps the
body size before reading it whole, validates the event and stores it idempotently by ``event_id``
(Customer.io retries for days). Status codes follow what a sender expects: 200 stored or duplicate (do
not retry), 400 malformed (do not retry), 401 signature, 413 too large, 503 storage down (retry).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from data_out import state
from data_out.metrics.events import WebhookEvent, row_from_event, store_one

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024  # a reporting event is a few KB
TOLERANCE_S = 300


@dataclass
class ReceiverSettings:
    engine: Engine
    secret: str
    max_body_bytes: int = MAX_BODY_BYTES
    tolerance_s: int = TOLERANCE_S


def signature(secret: str, timestamp: str, body: bytes) -> str:
    return hmac.new(secret.encode(), b"v0:" + timestamp.encode() + b":" + body, hashlib.sha256).hexdigest()


def _reply(status: int, message: str, **extra: object) -> JSONResponse:
    return JSONResponse({"status": message, **extra}, status_code=status)


def create_app(settings: Callable[[], ReceiverSettings]) -> FastAPI:
    """``settings`` is called per request, so connections are resolved lazily (and can rotate)."""
    app = FastAPI(title="Data Out metrics receiver", docs_url=None, redoc_url=None)

    @app.post("/customerio")
    async def customerio(request: Request) -> JSONResponse:
        cfg = settings()
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cfg.max_body_bytes:
            return _reply(413, "body too large", limit=cfg.max_body_bytes)
        received = bytearray()  # the declared length can lie or be absent (chunked): count what arrives
        async for chunk in request.stream():
            received += chunk
            if len(received) > cfg.max_body_bytes:
                return _reply(413, "body too large", limit=cfg.max_body_bytes)
        body = bytes(received)
        ts = request.headers.get("x-cio-timestamp", "")
        given = request.headers.get("x-cio-signature", "")
        if not ts.isdigit() or abs(time.time() - int(ts)) > cfg.tolerance_s:
            return _reply(401, "missing or stale timestamp")
        if not hmac.compare_digest(signature(cfg.secret, ts, body), given):
            return _reply(401, "bad signature")
        try:
            event = WebhookEvent.model_validate(json.loads(body))
        except (ValueError, ValidationError) as exc:
            fields = (
                [".".join(str(p) for p in e["loc"]) for e in exc.errors()] if isinstance(exc, ValidationError) else []
            )
            return _reply(400, "malformed event", fields=fields or ["body is not JSON"])
        try:
            stored = store_one(cfg.engine, row_from_event(event, state.utcnow()))
        except SQLAlchemyError:
            log.exception("could not store metric event")
            return _reply(503, "storage unavailable; retry later")
        return _reply(200, "stored" if stored else "duplicate", event_id=event.event_id)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
