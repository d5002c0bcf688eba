"""A tiny HTTP framework for vendor stand-ins that enforce the real contract and keep state.

Each stand-in subclasses ``StandIn`` and declares routes. Every stand-in shares:

* auth checking (the subclass says how), request-size limits, a token-bucket rate limit that answers
  in the vendor's own rate-limit format, and a fault plan (forced statuses, a random failure rate,
  slow responses past the client's timeout, "down");
* the vendor's own semantics for a request sent twice: no vendor stand-in honours ``Idempotency-Key``
  (Meta, Google, TikTok and Segment ignore the header), so a repeated request is applied again and only
  the vendor's semantics make that harmless (set membership; Segment's ``messageId`` dedupe). Only a
  stand-in whose vendor promises it (``replays_idempotency_key``: our own signed webhooks) answers a
  repeated key from the stored response without applying it again. ``applied`` counts applications per
  key either way, so a test can see a request that really was applied twice;
* an admin API under ``/_admin`` (state, faults, reset, member edits) for tests and the demo.

Servers listen on loopback only.
"""

from __future__ import annotations

import functools
import json
import pickle
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

HEX64 = re.compile(r"^[0-9a-f]{64}$")
_COMPACT = (",", ":")


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    @functools.cached_property
    def form(self) -> dict[str, list[str]]:
        """The form-encoded body's fields, parsed once however many checks of the request read them
        (a Meta batch's body is over a megabyte of percent-encoded JSON)."""
        return parse_qs(self.body.decode("utf-8")) if self.body else {}


@dataclass
class Response:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class RawJson:
    """A body the stand-in encoded as JSON itself (from pieces it keeps encoded: a large page)."""

    data: bytes


class HttpError(Exception):
    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.response = Response(status, body, headers or {})


@dataclass
class FaultPlan:
    """What goes wrong, set by tests through ``/_admin/faults`` or directly."""

    forced: list[int] = field(default_factory=list)  # statuses for the next requests, in order
    fail_rate: float = 0.0  # share of requests answered with a random 429/500/503
    delay: float = 0.0  # seconds to sleep before answering (past the client's timeout = a timeout)
    down: bool = False  # answer 503 to everything
    down_after: int | None = None  # serve this many more requests normally, then behave as down
    lose_response: list[int] = field(default_factory=list)  # request numbers applied, then answered 503
    seed: int = 1

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)


Handler = Callable[[Request, re.Match[str]], Response]


class StandIn:
    name = "stand-in"
    max_body_bytes = 10 * 1024 * 1024
    rate_per_second: float | None = None  # None: no rate limit
    burst = 20
    persistent: tuple[str, ...] = ()  # attributes kept across restarts by save()/load() (the demo)
    #: answer a repeated ``Idempotency-Key`` from the stored response, applying nothing: only where the
    #: vendor's contract promises it, never because our client happens to send the header
    replays_idempotency_key = False

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.faults = FaultPlan()
        self.applied: Counter[str] = Counter()
        self.responses: dict[str, Response] = {}
        self.log: list[tuple[str, str, int]] = []  # (method, path, status)
        self.seen = 0  # requests received (admin calls excluded), numbering fault plans
        self.inflight = 0  # requests being answered now: a client that died may still get one applied
        self.payloads: list[bytes] = []  # every request body received, for leak scans
        self._tokens = float(self.burst)
        self._refilled = time.monotonic()
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self.setup_routes()

    # -- to override ------------------------------------------------------------------------------
    def setup_routes(self) -> None:
        raise NotImplementedError

    def check_auth(self, req: Request) -> None:
        """Raise ``HttpError`` when the request is not authorised."""

    def rate_limited(self) -> Response:
        return Response(429, {"error": "rate limited"}, {"Retry-After": "1"})

    def server_error(self, status: int) -> Response:
        headers = {"Retry-After": "1"} if status == 429 else {}
        return Response(status, {"error": f"injected {status}"}, headers)

    def state(self) -> Any:
        return {}

    def reset_state(self) -> None:
        pass

    def admin(self, req: Request, action: str) -> Response:
        return Response(404, {"error": f"unknown admin action {action}"})

    def save(self, path: str) -> None:
        with self.lock, open(path, "wb") as f:
            pickle.dump({a: getattr(self, a) for a in self.persistent}, f)

    def load(self, path: str) -> None:
        try:
            with open(path, "rb") as f:
                data = pickle.load(f)  # noqa: S301 - our own sandbox file
        except FileNotFoundError:
            return
        with self.lock:
            for attr, value in data.items():
                setattr(self, attr, value)

    # -- machinery ---------------------------------------------------------------------------------
    def route(self, method: str, pattern: str, handler: Handler) -> None:
        self.routes.append((method, re.compile(f"^{pattern}$"), handler))

    def _take_token(self) -> bool:
        if self.rate_per_second is None:
            return True
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._refilled) * self.rate_per_second)
        self._refilled = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def dispatch(self, req: Request) -> Response:
        if req.path.startswith("/_admin/"):
            return self._admin(req)
        with self.lock:
            delay = self.faults.delay
            self.inflight += 1
        try:
            if delay:
                time.sleep(delay)
            with self.lock:
                resp = self._dispatch_locked(req)
                self.log.append((req.method, req.path, resp.status))
                return resp
        finally:
            with self.lock:
                self.inflight -= 1

    def _dispatch_locked(self, req: Request) -> Response:
        self.seen += 1
        self.payloads.append(req.body)
        refused = self._refused(req)
        if refused is not None:
            return refused
        try:
            self.check_auth(req)
            key = req.headers.get("idempotency-key")
            if key and self.replays_idempotency_key and key in self.responses:
                return self.responses[key]  # the vendor's promise: answer again, apply nothing
            return self._route(req, key)
        except HttpError as exc:
            return exc.response
        except (ValueError, KeyError, TypeError) as exc:
            return Response(400, {"error": f"malformed request: {type(exc).__name__}"})

    def _refused(self, req: Request) -> Response | None:
        """What the vendor answers before it reads the request: the planted outage, forced or random
        errors, the rate limit, a body over its size limit. ``None``: the request goes through."""
        f = self.faults
        if f.down_after is not None:
            if f.down_after <= 0:
                f.down = True
            f.down_after -= 1
        if f.down:
            return self.server_error(503)
        if f.forced:
            return self.server_error(f.forced.pop(0))
        if f.fail_rate and f.rng.random() < f.fail_rate:
            return self.server_error(f.rng.choice([429, 500, 503]))
        if not self._take_token():
            return self.rate_limited()
        if len(req.body) > self.max_body_bytes:
            return Response(413, {"error": f"body of {len(req.body)} bytes exceeds {self.max_body_bytes}"})
        return None

    def _route(self, req: Request, key: str | None) -> Response:
        """The handler's answer, remembered under the idempotency key when it applied something; a
        planted lost response applies the request and answers 503."""
        for method, pattern, handler in self.routes:
            m = pattern.match(req.path)
            if m and method == req.method:
                resp = handler(req, m)
                if key and resp.status < 300:
                    self.applied[key] += 1
                    if self.replays_idempotency_key:
                        self.responses[key] = resp
                if resp.status < 300 and self.seen in self.faults.lose_response:
                    return self.server_error(503)  # applied, but the answer never arrives
                return resp
        return Response(404, {"error": f"no route {req.method} {req.path}"})

    def _admin(self, req: Request) -> Response:
        action = req.path.removeprefix("/_admin/")
        with self.lock:
            if action == "state":
                return Response(200, {"state": self.state(), "applied": dict(self.applied), "requests": len(self.log)})
            if action == "faults":
                body = req.json() or {}
                self.faults = FaultPlan(**body)
                return Response(200, {"ok": True})
            if action == "reset":
                self.faults = FaultPlan()
                self.applied.clear()
                self.responses.clear()
                self.log.clear()
                self.seen = 0
                self.payloads.clear()
                self.reset_state()
                return Response(200, {"ok": True})
            return self.admin(req, action)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        req = Request(
            self.command, parts.path, parse_qs(parts.query), {k.lower(): v for k, v in self.headers.items()}, body
        )
        resp = self.server.standin.dispatch(req)
        payload = _encoded(resp.body)
        try:
            self.send_response(resp.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for k, v in resp.headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test); nothing to do

    do_GET = do_POST = do_DELETE = do_PUT = _serve

    def log_message(self, *args: Any) -> None:  # quiet: tests read state, not access logs
        pass


def _encoded(body: Any) -> bytes:
    """A response body as sent: JSON, compact and without a cycle check (a body is a tree), or bytes a
    stand-in encoded itself (``RawJson``)."""
    if body is None:
        return b""
    if isinstance(body, RawJson):
        return body.data
    return json.dumps(body, separators=_COMPACT, check_circular=False).encode()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    standin: StandIn


class Running:
    """A stand-in served in a background thread, on 127.0.0.1 unless told otherwise."""

    def __init__(self, standin: StandIn, port: int = 0, host: str = "127.0.0.1") -> None:
        self.standin = standin
        self.server = _Server((host, port), _Handler)  # loopback unless a staging container asks for more
        self.server.standin = standin
        self.thread = threading.Thread(target=self.server.serve_forever, name=standin.name, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def bearer(req: Request, token: str) -> None:
    if req.headers.get("authorization") != f"Bearer {token}":
        raise HttpError(401, {"error": "invalid or missing bearer token"})


def require_hex64(value: Any, what: str) -> str:
    if not isinstance(value, str) or not HEX64.match(value):
        raise HttpError(400, {"error": f"{what} must be a lowercase SHA-256 hex digest"})
    return value
