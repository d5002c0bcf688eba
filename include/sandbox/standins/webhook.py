"""Signed-webhook receiver stand-in for internal services and helpdesks.

Verifies ``X-DataOut-Signature: t=<unix>,v1=<hex>`` (HMAC-SHA256 over ``<t>.<body>`` with the shared
secret, constant-time comparison, 5-minute replay window), keeps members per audience and can reject
chosen members row by row in its answer, the way an internal service reports bad rows.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from typing import Any

from sandbox.standins.base import HttpError, Request, Response, StandIn

TOLERANCE_S = 300


def verify(
    secret: str, header: str | None, body: bytes, now: float | None = None, tolerance_s: float = TOLERANCE_S
) -> None:
    try:
        parts = dict(p.split("=", 1) for p in (header or "").split(","))
        ts = int(parts["t"])
        given = parts["v1"]
    except (ValueError, KeyError):
        raise HttpError(401, {"error": "missing or malformed signature"}) from None
    if abs((now or time.time()) - ts) > tolerance_s:
        raise HttpError(401, {"error": "signature timestamp outside the replay window"})
    expected = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, given):
        raise HttpError(401, {"error": "bad signature"})


class WebhookStandIn(StandIn):
    name = "webhook"
    max_body_bytes = 5 * 1024 * 1024
    persistent = ("members",)
    replays_idempotency_key = True  # our own webhook contract promises it

    def __init__(self, secret: str = "webhook-secret", tolerance_s: float = TOLERANCE_S) -> None:
        self.secret = secret
        self.tolerance_s = tolerance_s  # the replay window: how old a signature's timestamp may be
        self.members: dict[str, dict[str, dict[str, Any]]] = {}
        self.reject: dict[str, str] = {}
        self.tasks: dict[str, dict[str, Any]] = {}  # send tasks by dedupe key
        self.task_deliveries = 0  # task rows received in total (duplicates included)
        super().__init__()

    def setup_routes(self) -> None:
        self.route("POST", "/", self.ping)
        self.route("POST", "/hooks/send-tasks", self.send_tasks)
        self.route("POST", "/hooks/(?P<name>[\\w-]+)", self.receive)

    def check_auth(self, req: Request) -> None:
        verify(self.secret, req.headers.get("x-dataout-signature"), req.body, tolerance_s=self.tolerance_s)

    def ping(self, req: Request, m: re.Match[str]) -> Response:
        """The connection test (docs/webhooks.md): a signed ``{"kind": "ping"}``; the signature was checked."""
        if req.json().get("kind") != "ping":
            raise HttpError(400, {"error": "the base URL takes only a ping"})
        return Response(200, {"ok": True})

    def receive(self, req: Request, m: re.Match[str]) -> Response:
        body = req.json()
        if body.get("op") not in {"add", "remove"} or not isinstance(body.get("members"), list):
            raise HttpError(400, {"error": "op must be add or remove and members a list"})
        audience = self.members.setdefault(body["audience"], {})
        rejected = []
        for member in body["members"]:
            key = member["member_key"]
            if key in self.reject:
                rejected.append({"member_key": key, "reason": self.reject[key]})
            elif body["op"] == "add":
                audience[key] = member
            else:
                audience.pop(key, None)
        return Response(200, {"accepted": len(body["members"]) - len(rejected), "rejected": rejected})

    def send_tasks(self, req: Request, m: re.Match[str]) -> Response:
        body = req.json()
        if body.get("kind") != "send_tasks" or not isinstance(body.get("tasks"), list):
            raise HttpError(400, {"error": "expected {kind: send_tasks, tasks: [...]}"})
        for task in body["tasks"]:
            self.task_deliveries += 1
            self.tasks[task["dedupe_key"]] = task
        return Response(200, {"accepted": len(body["tasks"])})

    def state(self) -> Any:
        return {aud: sorted(members) for aud, members in self.members.items()}

    def reset_state(self) -> None:
        self.members.clear()
        self.reject.clear()
        self.tasks.clear()
        self.task_deliveries = 0
