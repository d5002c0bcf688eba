"""Receiver for Customer.io reporting webhooks (a FastAPI app, served by Airflow's api-server).

Customer.io signs each request: ``X-CIO-Timestamp`` (unix seconds) and ``X-CIO-Signature``, the hex
HMAC-SHA256 of ``v0:<timestamp>:<raw body>`` with the webhook's signing key. The receiver verifies it in
constant time, refuses timestamps outside a 5-minute window (replays of captured requests), caps the
body size before reading it whole, validates the event and stores it idempotently by ``event_id``
(Customer.io retries for days). Status codes follow what a sender expects: 200 stored or duplicate (do
not retry), 400 malformed (do not retry), 401 signature, 413 too large, 503 not configured or storage
busy (retry later).

The app shares the api-server's event loop with Airflow's own UI and API, so the handler only reads the
body there; the key lookup, the signature check and the database work run in the threadpool, in that
order (nothing touches the state database before the signature holds), and every statement is bounded in
time so a locked table answers a quick 503 instead of holding a thread. See docs/receiver.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import DataError, SQLAlchemyError

from data_out import state
from data_out.connections import SQLITE_BUSY_TIMEOUT_MS
from data_out.metrics.events import WebhookEvent, row_from_event
from data_out.signing import unusable_secret

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024  # a reporting event is a few KB
TOLERANCE_S = 300
#: how long one insert may wait for a lock or run before the sender is told to retry
STATEMENT_TIMEOUT_S = 2.0
#: seconds a signing key read from its connection is trusted before it is read again
KEY_TTL_S = 30.0
#: at most one extra read of the key per this many seconds when a signature does not match (a rotation)
KEY_REFRESH_MIN_INTERVAL_S = 1.0
RETRY_AFTER_S = 30
#: JSON numbers longer than this are never valid ids or timestamps (2**63 has 19 digits)
_MAX_INT_DIGITS = 20
_TIMESTAMP_HEADER = re.compile(r"[0-9]{1,12}")
_DIGITS = re.compile(r"[0-9]+")
_UNION_TAGS = frozenset({"int", "str", "float", "bool", "none"})


def signature(secret: str, timestamp: str, body: bytes) -> str:
    return hmac.new(secret.encode(), b"v0:" + timestamp.encode() + b":" + body, hashlib.sha256).hexdigest()


class SigningKey:
    """The signing key, re-read from its source after ``ttl_s`` and, at most once per
    ``min_refresh_s``, when a signature fails (the key may just have been rotated): a new key takes
    effect without restarting the api-server, and forged requests cannot hammer the secrets backend."""

    def __init__(
        self,
        load: Callable[[], str | None],
        *,
        source: str = "the signing key",
        ttl_s: float = KEY_TTL_S,
        min_refresh_s: float = KEY_REFRESH_MIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self.source = source
        self.ttl_s = ttl_s
        self.min_refresh_s = min_refresh_s
        self._clock = clock
        self._lock = threading.Lock()
        self._key: str | None = None
        self._loaded_at = float("-inf")
        self._refreshed_at = float("-inf")
        self._reported: str | None = None  # the problem last logged, so it is logged once, not per request

    def get(self) -> str | None:
        """The key, or None while it is unusable (every webhook is then refused)."""
        with self._lock:
            if self._clock() - self._loaded_at >= self.ttl_s:
                self._read()
            return self._key

    def refresh(self) -> bool:
        """Read the key again after a signature mismatch; True when it changed."""
        with self._lock:
            now = self._clock()
            if now - self._refreshed_at < self.min_refresh_s:
                return False
            self._refreshed_at = now
            before = self._key
            self._read()
            return self._key != before

    def _read(self) -> None:
        try:
            raw = self._load()
            problem = unusable_secret(raw)
        except Exception as exc:  # a missing connection or an unreachable secrets backend
            raw, problem = None, f"it could not be read ({type(exc).__name__})"
        self._loaded_at = self._clock()
        self._key = None if problem else (raw or "").strip()
        if problem and problem != self._reported:
            log.error(
                "Customer.io webhooks are refused: %s is unusable because %s. Set the signing key from "
                "Customer.io (Data & Integrations > Reporting Webhooks) as its password; see docs/receiver.md.",
                self.source,
                problem,
            )
        elif not problem and self._reported:
            log.warning("Customer.io webhooks are accepted again: %s is set", self.source)
        self._reported = problem


#: worker threads the receiver may hold at once: the api-server's threadpool also runs Airflow's own
#: endpoints, so a burst of webhooks against a slow database queues here instead of starving them. Four
#: is what the state engine's pool holds (``connections``: 2 + 2 overflow), so no thread waits for one.
RECEIVER_THREADS = 4


@dataclass(frozen=True)
class ReceiverLimits:
    max_body_bytes: int = MAX_BODY_BYTES
    tolerance_s: int = TOLERANCE_S
    statement_timeout_s: float = STATEMENT_TIMEOUT_S
    threads: int = RECEIVER_THREADS


class ThreadBudget:
    """A capacity limiter per event loop (anyio binds one to the loop that uses it)."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = (
            weakref.WeakKeyDictionary()
        )

    def limiter(self) -> anyio.CapacityLimiter:
        loop = asyncio.get_running_loop()
        if loop not in self._by_loop:
            self._by_loop[loop] = anyio.CapacityLimiter(self.tokens)
        return self._by_loop[loop]

    def in_use(self) -> tuple[int, int]:
        """(threads held, requests waiting for one), over every loop."""
        stats = [limiter.statistics() for limiter in list(self._by_loop.values())]
        return sum(int(s.borrowed_tokens) for s in stats), sum(s.tasks_waiting for s in stats)


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] | None = None

    def response(self) -> JSONResponse:
        return JSONResponse(self.body, status_code=self.status, headers=self.headers)


def _reply(status: int, message: str, **extra: object) -> Reply:
    retry = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return Reply(status, {"status": message, **extra}, retry)


class _TooLong:
    """A JSON number too long to be any field's value; validation names the field that holds it."""

    def __repr__(self) -> str:
        return f"<a number over {_MAX_INT_DIGITS} digits>"


def _parse_int(digits: str) -> int | _TooLong:
    return int(digits) if len(digits.lstrip("-")) <= _MAX_INT_DIGITS else _TooLong()


def _field_name(loc: tuple[int | str, ...]) -> str:
    """``data.customer_id`` from a pydantic location, without the union-member tags it adds
    (``data.customer_id.constrained-int``)."""
    parts = [str(p) for p in loc if isinstance(p, int) or (p.isidentifier() and p not in _UNION_TAGS)]
    return ".".join(parts) or "body"


def parse_event(body: bytes) -> WebhookEvent | Reply:
    """The event, or a 400 naming the fields at fault (never an exception: Customer.io would retry it)."""
    try:
        raw = json.loads(body, parse_int=_parse_int)
    except RecursionError:
        return _reply(400, "malformed event", fields=["body"], detail="JSON nested too deeply")
    except ValueError:
        return _reply(400, "malformed event", fields=["body is not JSON"])
    try:
        return WebhookEvent.model_validate(raw)
    except ValidationError as exc:
        fields = sorted({_field_name(e["loc"]) for e in exc.errors()})
        return _reply(400, "malformed event", fields=fields)
    except RecursionError:
        return _reply(400, "malformed event", fields=["body"], detail="JSON nested too deeply")


def store_bounded(engine: Engine, row: dict[str, Any], timeout_s: float) -> bool:
    """Insert one event, waiting at most ``timeout_s`` for locks; ``False`` for a replayed ``event_id``.

    Postgres bounds the statement and its lock waits for this transaction only (``SET LOCAL``); SQLite's
    busy timeout is per connection, so it is restored before the connection returns to the shared pool.
    """
    ms = max(1, int(timeout_s * 1000))
    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            conn.exec_driver_sql(f"PRAGMA busy_timeout={ms}")
            conn.commit()  # ends the implicit transaction the PRAGMA opened
        try:
            with conn.begin():
                if not sqlite:
                    conn.exec_driver_sql(f"SET LOCAL statement_timeout = {ms}")
                    conn.exec_driver_sql(f"SET LOCAL lock_timeout = {ms}")
                return bool(conn.execute(state.insert_ignore(engine, state.metric_event), row).rowcount)
        finally:
            if sqlite:
                conn.exec_driver_sql(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
                conn.commit()


class CustomerioReceiver:
    """Verifies, validates and stores one request; every method here runs in a worker thread."""

    def __init__(self, key: SigningKey, engine: Callable[[], Engine], limits: ReceiverLimits) -> None:
        self.key = key
        self.engine = engine
        self.limits = limits

    def handle(self, timestamp: str, given: str, body: bytes) -> Reply:
        secret = self.key.get()
        if secret is None and self.key.refresh():  # set since it was last read: no need to wait out the TTL
            secret = self.key.get()
        if secret is None:
            return _reply(503, "receiver not configured: no usable signing key; retry later")
        if not _TIMESTAMP_HEADER.fullmatch(timestamp) or abs(time.time() - int(timestamp)) > self.limits.tolerance_s:
            return _reply(401, "missing or stale timestamp")
        if not self._verified(secret, timestamp, given, body):
            return _reply(401, "bad signature")
        parsed = parse_event(body)
        if isinstance(parsed, Reply):
            return parsed
        try:
            engine = self.engine()
        except Exception as exc:  # the state connection is missing or its database is down
            log.warning(
                "metric event %s: no state database (%s); the sender will retry", parsed.event_id, type(exc).__name__
            )
            return _reply(503, "storage unavailable; retry later")
        try:
            stored = store_bounded(engine, row_from_event(parsed, state.utcnow()), self.limits.statement_timeout_s)
        except DataError:
            # the database refused a value validation let through: retrying cannot help
            log.warning("metric event %s refused by the state database (a value out of range)", parsed.event_id)
            return _reply(400, "malformed event", fields=["data"], detail="a value does not fit the state database")
        except SQLAlchemyError as exc:
            log.warning(
                "could not store metric event %s (%s); the sender will retry", parsed.event_id, type(exc).__name__
            )
            return _reply(503, "storage busy or unavailable; retry later")
        return _reply(200, "stored" if stored else "duplicate", event_id=parsed.event_id)

    def _verified(self, secret: str, timestamp: str, given: str, body: bytes) -> bool:
        # as bytes: compare_digest refuses str with non-ASCII characters, which a forged header may hold
        # (the server decodes header values as latin-1, so this encoding never fails)
        raw = given.encode("latin-1")
        if hmac.compare_digest(signature(secret, timestamp, body).encode(), raw):
            return True
        if self.key.refresh():  # the key was rotated since it was last read
            fresh = self.key.get()
            return fresh is not None and hmac.compare_digest(signature(fresh, timestamp, body).encode(), raw)
        return False


def create_app(
    signing_key: SigningKey | Callable[[], str | None],
    engine: Callable[[], Engine],
    limits: ReceiverLimits = ReceiverLimits(),
) -> FastAPI:
    """``signing_key`` reads the key (wrapped in a :class:`SigningKey` unless it is one); ``engine`` is
    called only for requests whose signature holds, so a forged request never opens a connection."""
    key = signing_key if isinstance(signing_key, SigningKey) else SigningKey(signing_key)
    receiver = CustomerioReceiver(key, engine, limits)
    budget = ThreadBudget(limits.threads)
    app = FastAPI(title="Data Out metrics receiver", docs_url=None, redoc_url=None)
    app.state.thread_budget = budget

    @app.post("/customerio")
    async def customerio(request: Request) -> JSONResponse:
        declared = request.headers.get("content-length", "")
        if _DIGITS.fullmatch(declared) and (len(declared) > 12 or int(declared) > limits.max_body_bytes):
            return _reply(413, "body too large", limit=limits.max_body_bytes).response()
        received = bytearray()  # the declared length can lie or be absent (chunked): count what arrives
        async for chunk in request.stream():
            received += chunk
            if len(received) > limits.max_body_bytes:
                return _reply(413, "body too large", limit=limits.max_body_bytes).response()
        ts = request.headers.get("x-cio-timestamp", "")
        given = request.headers.get("x-cio-signature", "")
        body = bytes(received)
        reply = await anyio.to_thread.run_sync(receiver.handle, ts, given, body, limiter=budget.limiter())
        return reply.response()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
