"""Membership of a Customer.io segment through the App API, page by page.

Connection (type ``data_out_customerio``): ``password`` the App API key; ``host`` the API base URL, or
extra ``region: eu`` for https://api-eu.customer.io (default US, https://api.customer.io); extra
``requests_per_second`` (default 9.5). Pages are requested with ``limit`` up to 30,000 and followed by
``next`` until it is empty; 429 and 5xx are retried by the shared HTTP client. The segment's
``customer_count`` is read first and compared with what was streamed, since a segment can change while
it is being paged.

Customer.io allows 10 App API requests a second and answers more with a 429 that carries no
``Retry-After``, so every request, retries included, waits its turn in a token bucket paced under the
limit (``Pacer``). The default, 9.5 a second, spaces requests 105 ms apart: any ten of them span at
least 1.05 s, so a request reaching Customer.io up to 50 ms later or earlier than its neighbour (network
and scheduling jitter) still never makes eleven in one second, and a segment is read within 5% of the
fastest pace the limit allows. A refused key (401, 403) fails at once: no retry can fix a credential.
People without an id cannot be keyed by customer id: they are counted as rows without a member key, and
their number is logged (never their email).

Pages are fetched one ahead of the consumer, in a thread (``_Ahead``): while staging works on one page
the next is on its way, so neither the request's latency nor staging's work adds to the pacing
interval. At most two pages are held (the one staging works on, the one being fetched), whatever the
segment's size. An error of the fetching thread is raised in the consumer as it was raised; a consumer
that stops early (closes the generator) stops the thread before the next request is sent.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Generator, Iterator
from typing import Any, NamedTuple

import requests
from requests.adapters import HTTPAdapter

from data_out.chunking import chunks
from data_out.connections import ConnectionInfo
from data_out.destinations.base import DestinationError
from data_out.destinations.http import HttpClient
from data_out.sources.base import CustomerIOError, Row

log = logging.getLogger(__name__)

MAX_PAGE = 30_000
CUSTOMERIO_REQUESTS_PER_SECOND = 10
#: under Customer.io's 10 requests a second by 5%, so jitter on the way never makes ten requests count as
#: eleven (see the module docstring)
DEFAULT_REQUESTS_PER_SECOND = 9.5
_AUTH_REFUSED = {401, 403}


class Pacer:
    """A token bucket holding one token: requests leave at most ``rate`` a second, evenly spaced.

    Spacing is counted from when a request really left: one that leaves late (the process was busy)
    pushes the next one back, so two requests never leave closer than ``interval``.
    """

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self, cancel: threading.Event | None = None) -> bool:
        """Wait for this request's turn; False when ``cancel`` was set while waiting (nothing may be sent)."""
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            # pacing, not waiting for a condition: the vendor counts requests per second
            if cancel is not None:
                if cancel.wait(slot - now):
                    return False
            else:
                time.sleep(slot - now)
        with self._lock:
            self._next = max(self._next, time.monotonic() + self.interval)
        return True


class _Stopped(Exception):
    """The consumer stopped reading: a request that has not left yet is not sent."""


class _PacedAdapter(HTTPAdapter):
    """Every request this session sends (first tries and retries alike) waits for the pacer; the last
    status is kept so a refused key can be told from other refusals."""

    def __init__(self, pacer: Pacer) -> None:
        super().__init__()
        self.pacer = pacer
        self.last_status: int | None = None
        self.stop = threading.Event()  # set when the consumer stops reading

    # override: HTTPAdapter.send names its keyword arguments, which pass through here unchanged
    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if self.stop.is_set() or not self.pacer.wait(self.stop):
            raise _Stopped
        self.last_status = None
        resp = super().send(request, **kwargs)
        self.last_status = resp.status_code
        return resp


class CustomerIOSource:
    def __init__(self, conn: ConnectionInfo, segment_id: int, page_size: int, label: str) -> None:
        region = str(conn.extra.get("region", "us")).lower()
        from data_out.sources.customerio_hook import REGIONS, CustomerIOHook  # the bearer key and region's host

        self.client: HttpClient = CustomerIOHook(
            connection=conn, default_base_url=REGIONS.get(region, REGIONS["us"])
        ).client()
        rate = float(conn.extra.get("requests_per_second", DEFAULT_REQUESTS_PER_SECOND))
        if rate >= CUSTOMERIO_REQUESTS_PER_SECOND:
            log.warning(
                "%s: connection %s paces Customer.io at %g requests/s, at or over its limit of %d: expect 429s",
                label,
                conn.conn_id,
                rate,
                CUSTOMERIO_REQUESTS_PER_SECOND,
            )
        self.adapter = _PacedAdapter(Pacer(rate))
        self.client.session.mount("https://", self.adapter)
        self.client.session.mount("http://", self.adapter)
        self.conn_id = conn.conn_id
        self.segment_id = segment_id
        self.page_size = min(page_size, MAX_PAGE)
        self.label = label
        self.reported_count: int | None = None
        self.missing_ids = 0  # people in the segment without an id (counted, never logged by value)

    def _get(self, path: str, where: str, **params: Any) -> Any:
        try:
            resp = self.client.request("GET", path, params=params)
        except DestinationError as exc:
            status = self.adapter.last_status
            if status in _AUTH_REFUSED:
                raise CustomerIOError(
                    f"{self.label}: Customer.io refused the App API key of connection {self.conn_id!r} "
                    f"(HTTP {status}) {where}; nothing was staged from this run. Set that connection's password "
                    "to a valid App API key with access to this workspace's segments (Customer.io: Settings, "
                    "API Credentials, App API Keys; the EU region also needs extra region: eu), then clear "
                    "the stage task",
                    retryable=False,
                ) from None
            raise CustomerIOError(
                f"{self.label}: {exc} ({where}); nothing was staged from this run", retryable=exc.retryable
            ) from None
        try:
            return resp.json()
        except ValueError:  # an empty body, or a proxy's HTML page answered with a 2xx
            raise CustomerIOError(
                f"{self.label}: GET {path} answered {resp.status_code} with {len(resp.content)} bytes that are not "
                f"JSON ({where}); nothing was staged from this run. Check the connection's host (base URL) and "
                "clear the task"
            ) from None

    def iter_batches(self, batch_size: int) -> Iterator[list[Row]]:
        base = f"/v1/segments/{self.segment_id}"
        self.adapter.stop.clear()  # a source read again after an early stop
        count = self._get(f"{base}/customer_count", "reading the segment's customer count")
        reported = count.get("count") if isinstance(count, dict) else None
        self.reported_count = reported if isinstance(reported, int) and not isinstance(reported, bool) else None
        streamed, pages = 0, 0
        for page in _Ahead(self._pages(base), self.adapter.stop, f"customerio-{self.segment_id}"):
            rows = self._rows(page)
            del page  # the people as Customer.io sent them: only the rows are kept
            self.missing_ids += sum(1 for r in rows if r["customer_id"] in (None, ""))
            streamed += len(rows)
            pages += 1
            for chunk in chunks(rows, batch_size):
                yield list(chunk)
        self._report(streamed, pages)

    def _pages(self, base: str) -> Generator[_Page]:
        """The segment's pages, in order; runs in ``_Ahead``'s thread, which does no more than it must
        before the next request can leave (that request needs this page's ``next``)."""
        start, number, fetched = "", 0, 0
        while True:
            number += 1
            params: dict[str, Any] = {"limit": self.page_size}
            if start:
                params["start"] = start
            where = _page(number, start, fetched)
            body = self._get(f"{base}/membership", where, **params)
            ids = body.get("identifiers") if isinstance(body, dict) else None
            nxt = body.get("next", "") if isinstance(body, dict) else None
            del body  # held while the next page is fetched otherwise
            if not isinstance(ids, list) or not isinstance(nxt, str):
                raise self._unexpected(number, where)
            fetched += len(ids)
            yield _Page(number, where, ids)
            del ids
            if not nxt:
                return
            start = nxt

    def _rows(self, page: _Page) -> list[Row]:
        """A page's people as rows, ``customer_id`` (their ``id``), ``email`` and ``cio_id``, made from the
        decoded objects in place (a third of the time new dicts take); in the consumer, while the
        fetching thread is already on the next page."""
        people: list[Any] = page.identifiers
        try:
            for p in people:
                p["customer_id"] = p.pop("id", None)
                if "email" not in p or "cio_id" not in p:
                    p.setdefault("email", None)
                    p.setdefault("cio_id", None)
        except (AttributeError, TypeError):  # one of them is not an object
            raise self._unexpected(page.number, page.where) from None
        return people

    def _unexpected(self, number: int, where: str) -> CustomerIOError:
        return CustomerIOError(
            f"{self.label}: page {number} of Customer.io segment {self.segment_id} has an unexpected shape "
            f'(expected identifiers: [..] and next: "..."; {where}); nothing was staged from this run'
        )

    def _report(self, streamed: int, pages: int) -> None:
        log.info("%s: %d members in %d pages", self.label, streamed, pages)
        if self.missing_ids:
            log.warning(
                "%s: %d of %d members have no id in Customer.io and cannot be synced by customer id; "
                "they are counted as rows without a member key",
                self.label,
                self.missing_ids,
                streamed,
            )
        if self.reported_count is not None and streamed != self.reported_count:
            log.warning(
                "%s: streamed %d members, Customer.io reported %d before paging (the segment changed)",
                self.label,
                streamed,
                self.reported_count,
            )


def _page(page: int, start: str, streamed: int) -> str:
    """Where paging stood, for an error: the page number, its ``start`` cursor (opaque, not a secret)."""
    cursor = f"start={start[:80]!r}" if start else "the first page, no start cursor"
    return f"stopped at page {page}, {cursor}, after {streamed} members"


class _Page(NamedTuple):
    number: int
    where: str  # where paging stood, for an error
    identifiers: list[Any]


class _Ahead:
    """Iterates ``pages`` in a thread, one page ahead of the consumer.

    The thread fetches a page, hands it over, and fetches the next one only once the consumer has taken
    it: at most two pages are held at a time. An exception of the thread is raised in the consumer; when
    the consumer stops (an exception, or the generator closed), ``stop`` is set, the thread sends no
    further request, and the consumer waits for it to end.
    """

    def __init__(self, pages: Generator[_Page], stop: threading.Event, name: str) -> None:
        self._pages = pages
        self._stop = stop
        self._handed: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
        self._taken = threading.Semaphore(0)
        self._thread = threading.Thread(target=self._fetch, name=name, daemon=True)

    def __iter__(self) -> Iterator[_Page]:
        self._thread.start()
        try:
            while True:
                kind, item = self._handed.get()
                self._taken.release()
                if kind == "error":
                    raise item
                if kind == "done":
                    return
                yield item
        finally:
            self._stop.set()
            self._taken.release()  # a thread waiting for its page to be taken wakes up and sees the stop
            self._thread.join()

    def _fetch(self) -> None:
        try:
            for page in self._pages:
                self._handed.put(("page", page))
                del page  # the consumer holds it now; this thread keeps no reference to it
                self._taken.acquire()
                if self._stop.is_set():
                    return
            self._handed.put(("done", None))
        except _Stopped:
            return
        except BaseException as exc:  # noqa: BLE001 - whatever it is, the consumer raises it
            self._handed.put(("error", exc))
        finally:
            self._pages.close()
