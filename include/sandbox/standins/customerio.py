"""Customer.io App API stand-in: segment membership pages and customer counts.

Enforces the bearer App API key, ``limit`` of 1 to 30,000, the opaque ``start``/``next`` cursor and
about 10 requests a second (429 with Retry-After past that). Segments can be changed between pages
(``on_page``), as real segments do while someone pages through them.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from typing import Any

from sandbox.standins.base import HttpError, Request, Response, StandIn, bearer

MAX_LIMIT = 30_000


class CustomerIOStandIn(StandIn):
    name = "customerio"
    rate_per_second = 10.0
    burst = 10
    persistent = ("segments",)

    def __init__(self, token: str = "cio-app-key") -> None:
        self.token = token
        self.segments: dict[str, list[dict[str, Any]]] = {}
        self.on_page: Callable[[str, int], None] | None = None  # (segment, page number) after each page
        self.pages_served = 0
        self.malformed_page: int | None = None  # serve this page number with an unexpected shape
        super().__init__()

    def setup_routes(self) -> None:
        self.route("GET", r"/v1/segments/(?P<seg>\d+)/membership", self.membership)
        self.route("GET", r"/v1/segments/(?P<seg>\d+)/customer_count", self.count)

    def check_auth(self, req: Request) -> None:
        bearer(req, self.token)

    def _segment(self, seg: str) -> list[dict[str, Any]]:
        if seg not in self.segments:
            raise HttpError(404, {"meta": {"error": f"segment {seg} not found"}})
        return self.segments[seg]

    def membership(self, req: Request, m: re.Match[str]) -> Response:
        members = self._segment(m["seg"])
        limit = int(req.query.get("limit", ["1000"])[0])
        if not 1 <= limit <= MAX_LIMIT:
            raise HttpError(400, {"meta": {"error": f"limit must be between 1 and {MAX_LIMIT}"}})
        start_token = req.query.get("start", [""])[0]
        start = int(base64.b64decode(start_token).decode()) if start_token else 0
        page = members[start : start + limit]
        nxt = base64.b64encode(str(start + limit).encode()).decode() if start + limit < len(members) else ""
        self.pages_served += 1
        if self.malformed_page == self.pages_served:
            return Response(200, {"identifiers": {"unexpected": True}, "next": nxt})
        body = {
            "identifiers": [{"id": p.get("id"), "email": p.get("email"), "cio_id": p["cio_id"]} for p in page],
            "ids": [p.get("id") for p in page],
            "next": nxt,
        }
        if self.on_page:
            self.on_page(m["seg"], self.pages_served)
        return Response(200, body)

    def count(self, req: Request, m: re.Match[str]) -> Response:
        return Response(200, {"count": len(self._segment(m["seg"]))})

    def state(self) -> Any:
        return {seg: len(members) for seg, members in self.segments.items()}

    def reset_state(self) -> None:
        self.segments.clear()
        self.pages_served = 0
