"""Customer.io App API stand-in: segment membership and customer counts, as the public App API docs
describe them (the "List customers in a segment" and "Get a segment customer count" operations).

What it holds to, independently of how Data Out's client happens to call it:

* auth: ``Authorization: Bearer <App API key>``; a missing or wrong key is answered 401;
* ``GET /v1/segments/{segment_id}/membership``: ``limit`` an integer from 1 to 30,000 (default 1,000),
  ``start`` the opaque ``next`` value of the previous page. Each page carries ``identifiers`` (objects
  with ``email``, ``id`` and ``cio_id``; an unset ``id`` or ``email`` is ``null``), the older ``ids``
  array (an empty string for a person without an id) and ``next``. People are listed in the order
  Customer.io stored them and a cursor remembers the last person served, not an offset, so people who
  leave or join between pages never shift the others. A full page always carries a ``next``, even when
  nobody follows: the page after it is empty with an empty ``next``;
* ``GET /v1/segments/{segment_id}/customer_count``: ``{"segment_id": .., "count": ..}``; 404 for a
  segment that does not exist;
* at most 10 requests in any second, per workspace: past that, 429 **without** a ``Retry-After``
  header (the docs promise none). ``throttled`` counts them.

A segment's people are kept in storage order once per change, not once per request (``_Members``
counts changes), and each person's JSON is kept encoded for as long as their ``id``, ``email`` and
``cio_id`` stay the same, so a 30,000-person page of a segment of millions is served in milliseconds;
a change made between pages, to the segment or to a person, is seen by the next page all the same.

Tests can change a segment between pages (``on_page``), serve one page with an unexpected shape
(``malformed_page``), and use the shared fault plan (``base.FaultPlan``).
"""

from __future__ import annotations

import bisect
import json
import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from sandbox.standins.base import HttpError, RawJson, Request, Response, StandIn

MAX_LIMIT = 30_000
DEFAULT_LIMIT = 1_000
REQUESTS_PER_SECOND = 10


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _error(message: str) -> dict[str, Any]:
    return {"meta": {"error": message}}


class _Members(list[dict[str, Any]]):
    """A segment's people; every change in place bumps ``version``, so the storage order is worked out
    again only after a change."""

    version = 0  # a class default: unpickling appends the people before it restores the instance's

    def _changed(self) -> None:
        self.version += 1


def _bumping(name: str) -> Callable[..., Any]:
    method = getattr(list, name)

    def changed(self: _Members, *args: Any) -> Any:
        result = method(self, *args)
        self._changed()
        return self if name in ("__iadd__", "__imul__") else result

    changed.__name__ = name
    return changed


for _name in (
    "append", "extend", "insert", "remove", "pop", "clear", "sort", "reverse",
    "__setitem__", "__delitem__", "__iadd__", "__imul__",
):  # fmt: skip
    setattr(_Members, _name, _bumping(_name))


class _Segments(dict[str, _Members]):
    """Segment id -> its people; a plain list stored here is taken over as ``_Members``."""

    def __setitem__(self, seg: str, people: Iterable[dict[str, Any]]) -> None:
        super().__setitem__(seg, people if isinstance(people, _Members) else _Members(people))


class CustomerIOStandIn(StandIn):
    name = "customerio"
    rate_per_second = float(REQUESTS_PER_SECOND)
    persistent = ("segments",)

    def __init__(self, token: str = "cio-app-key") -> None:
        self.token = token
        self.segments = _Segments()
        self.on_page: Callable[[str, int], None] | None = None  # (segment, page number) after each page
        self.pages_served = 0
        self.malformed_page: int | None = None  # serve this page number with an unexpected shape
        self.throttled = 0  # requests answered 429 for going over the rate limit
        self.arrivals: list[float] = []  # when each request reached the rate limiter (monotonic seconds)
        self._window: deque[float] = deque()  # when the requests of the last second were accepted
        self._order: dict[str, int] = {}  # cio_id -> storage order, given when first seen
        self._cursors: dict[str, tuple[str, int]] = {}  # next token -> (segment, last order served)
        #: segment -> (its people as last seen, their version, in storage order, their order numbers)
        self._sorted: dict[str, tuple[_Members, int, list[dict[str, Any]], list[int]]] = {}
        #: (email, id, cio_id) -> that person's entry of ``identifiers`` and of ``ids``, encoded
        self._encoded: dict[tuple[Any, Any, Any], tuple[bytes, bytes]] = {}
        super().__init__()

    @property
    def segments(self) -> _Segments:
        """Segment id (text) -> its people, each ``{"id", "email", "cio_id"}`` (``id``/``email`` may be absent)."""
        return self._segments

    @segments.setter
    def segments(self, value: dict[str, list[dict[str, Any]]]) -> None:  # also what ``load`` restores
        self._segments = _Segments()
        for seg, people in value.items():
            self._segments[seg] = people

    def setup_routes(self) -> None:
        self.route("GET", r"/v1/segments/(?P<seg>[0-9]+)/membership", self.membership)
        self.route("GET", r"/v1/segments/(?P<seg>[0-9]+)/customer_count", self.count)
        self.route("GET", r"/v1/segments", self.list_segments)

    # -- the vendor's rules ------------------------------------------------------------------------
    def check_auth(self, req: Request) -> None:
        if req.headers.get("authorization") != f"Bearer {self.token}":
            raise HttpError(401, _error("Unauthorized request"))

    def _take_token(self) -> bool:
        """A sliding window: at most ``REQUESTS_PER_SECOND`` accepted in any second."""
        now = time.monotonic()
        self.arrivals.append(now)
        while self._window and now - self._window[0] >= 1.0:
            self._window.popleft()
        if len(self._window) >= REQUESTS_PER_SECOND:
            self.throttled += 1
            return False
        self._window.append(now)
        return True

    def rate_limited(self) -> Response:
        return Response(429, _error("Too many requests"))

    def server_error(self, status: int) -> Response:
        return Response(status, _error(f"injected {status}"))  # no Retry-After, not even on 429

    def _segment(self, seg: str) -> tuple[list[dict[str, Any]], list[int]]:
        """The segment's people in storage order (the order they were first stored) and their order numbers."""
        if seg not in self.segments:
            raise HttpError(404, _error(f"segment {seg} not found"))
        members = self.segments[seg]
        cached = self._sorted.get(seg)
        if cached is not None and cached[0] is members and cached[1] == members.version:
            return cached[2], cached[3]
        order = self._order
        for p in members:
            order.setdefault(p["cio_id"], len(order))
        people = sorted(members, key=lambda p: order[p["cio_id"]])
        numbers = [order[p["cio_id"]] for p in people]
        self._sorted[seg] = (members, members.version, people, numbers)
        return people, numbers

    @staticmethod
    def _limit(req: Request) -> int:
        raw = req.query.get("limit", [str(DEFAULT_LIMIT)])[-1]
        if not re.fullmatch(r"[0-9]{1,9}", raw) or not 1 <= int(raw) <= MAX_LIMIT:
            raise HttpError(400, _error(f"limit must be an integer between 1 and {MAX_LIMIT}"))
        return int(raw)

    def membership(self, req: Request, m: re.Match[str]) -> Response:
        seg = m["seg"]
        members, numbers = self._segment(seg)
        limit = self._limit(req)
        after = -1
        start = req.query.get("start", [""])[-1]
        if start:
            if self._cursors.get(start, ("", 0))[0] != seg:
                raise HttpError(400, _error("start is not a value of next from this segment"))
            after = self._cursors[start][1]
        first = bisect.bisect_right(numbers, after)
        page = members[first : first + limit]
        nxt = ""
        if len(page) == limit:
            nxt = secrets.token_urlsafe(24)
            self._cursors[nxt] = (seg, self._order[page[-1]["cio_id"]])
        self.pages_served += 1
        if self.malformed_page == self.pages_served:
            return Response(200, {"identifiers": {"unexpected": True}, "next": nxt})
        body = self._page_body(page, nxt)
        if self.on_page:
            self.on_page(seg, self.pages_served)
        return Response(200, body)

    def _page_body(self, page: list[dict[str, Any]], nxt: str) -> RawJson:
        """``{"identifiers": [..], "ids": [..], "next": ..}``, from each person's entries as last encoded."""
        encoded = self._encoded
        people, ids = [], []
        for p in page:
            seen = (p.get("email"), p.get("id"), p["cio_id"])
            entry = encoded.get(seen)
            if entry is None:
                person = {"email": seen[0], "id": seen[1], "cio_id": seen[2]}
                entry = encoded[seen] = (_json(person), _json(seen[1] or ""))
            people.append(entry[0])
            ids.append(entry[1])
        return RawJson(
            b'{"identifiers":[' + b",".join(people) + b'],"ids":[' + b",".join(ids) + b'],"next":' + _json(nxt) + b"}"
        )

    def list_segments(self, req: Request, m: re.Match[str]) -> Response:
        """``GET /v1/segments``: the workspace's segments (App API "List segments")."""
        listed = [{"id": int(seg), "name": f"segment {seg}", "type": "dynamic"} for seg in sorted(self.segments)]
        return Response(200, {"segments": listed})

    def count(self, req: Request, m: re.Match[str]) -> Response:
        return Response(200, {"segment_id": int(m["seg"]), "count": len(self._segment(m["seg"])[0])})

    # -- for tests and the demo --------------------------------------------------------------------
    def state(self) -> Any:
        return {seg: len(members) for seg, members in self.segments.items()}

    def reset_state(self) -> None:
        self.segments.clear()
        self.pages_served = 0
        self.throttled = 0
        self.arrivals.clear()
        self._window.clear()
        self._cursors.clear()
        self._order.clear()
        self._sorted.clear()
        self._encoded.clear()
