"""Membership of a Customer.io segment through the App API, page by page.

Connection (type ``data_out_customerio``): ``password`` the App API key; ``host`` the API base URL, or
extra ``region: eu`` for https://api-eu.customer.io (default US, https://api.customer.io); extra
``requests_per_second`` (default 10, Customer.io's limit). Pages are requested with ``limit`` up to
30,000 and followed by ``next`` until it is empty; 429 and 5xx are retried by the shared HTTP client.
The segment's ``customer_count`` is read first and compared with what was streamed, since a segment can
change while it is being paged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from data_out.connections import ConnectionInfo
from data_out.destinations.base import DestinationError
from data_out.destinations.http import HttpClient
from data_out.sources.base import Row, SourceError

log = logging.getLogger(__name__)

REGIONS = {"us": "https://api.customer.io", "eu": "https://api-eu.customer.io"}
MAX_PAGE = 30_000


class CustomerIOSource:
    def __init__(self, conn: ConnectionInfo, segment_id: int, page_size: int, label: str) -> None:
        region = str(conn.extra.get("region", "us")).lower()
        self.client = HttpClient(
            "customerio",
            conn,
            default_base_url=REGIONS.get(region, REGIONS["us"]),
            headers={"Authorization": f"Bearer {conn.password or ''}"},
        )
        self.min_interval = 1.0 / float(conn.extra.get("requests_per_second", 10))
        self.segment_id = segment_id
        self.page_size = min(page_size, MAX_PAGE)
        self.label = label
        self.reported_count: int | None = None
        self._last = 0.0

    def _get(self, path: str, **params: Any) -> Any:
        wait = self._last + self.min_interval - time.monotonic()
        if wait > 0:
            time.sleep(wait)  # stay under the API's rate limit instead of provoking 429s
        self._last = time.monotonic()
        try:
            resp = self.client.request("GET", path, params=params)
        except DestinationError as exc:
            raise SourceError(f"{self.label}: {exc}") from None
        try:
            return resp.json()
        except ValueError:  # an empty body, or a proxy's HTML page answered with a 2xx
            raise SourceError(
                f"{self.label}: GET {path} answered {resp.status_code} with {len(resp.content)} bytes that are not "
                "JSON; nothing was staged from this run. Check the connection's host (base URL) and clear the task"
            ) from None

    def iter_batches(self, batch_size: int) -> Iterator[list[Row]]:
        base = f"/v1/segments/{self.segment_id}"
        count = self._get(f"{base}/customer_count")
        reported = count.get("count") if isinstance(count, dict) else None
        self.reported_count = reported if isinstance(reported, int) and not isinstance(reported, bool) else None
        start, page, streamed = "", 0, 0
        while True:
            page += 1
            params: dict[str, Any] = {"limit": self.page_size}
            if start:
                params["start"] = start
            body = self._get(f"{base}/membership", **params)
            ids = body.get("identifiers") if isinstance(body, dict) else None
            nxt = body.get("next", "") if isinstance(body, dict) else None
            if not isinstance(ids, list) or not isinstance(nxt, str) or not all(isinstance(i, dict) for i in ids):
                raise SourceError(
                    f"{self.label}: page {page} of Customer.io segment {self.segment_id} has an unexpected shape "
                    '(expected identifiers: [..] and next: "..."); nothing was staged from this run'
                )
            rows = [{"customer_id": i.get("id"), "email": i.get("email"), "cio_id": i.get("cio_id")} for i in ids]
            streamed += len(rows)
            for k in range(0, len(rows), batch_size):
                yield rows[k : k + batch_size]
            if not nxt:
                break
            start = nxt
        if self.reported_count is not None and streamed != self.reported_count:
            log.warning(
                "%s: streamed %d members, Customer.io reported %d before paging (the segment changed)",
                self.label,
                streamed,
                self.reported_count,
            )
