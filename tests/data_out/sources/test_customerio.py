"""Customer.io segment source against its stand-in over loopback HTTP.

The stand-in follows Customer.io's App API docs (``include/sandbox/standins/customerio.py``): 10
requests a second answered by 429 without Retry-After, opaque cursors, 401 for a wrong key.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException
from sqlalchemy import select

from data_out import state
from data_out.config import load_audiences
from data_out.connections import ConnectionInfo, engine_for
from data_out.engine.runner import AudienceRunner, RunFailed
from data_out.errors import next_step_of
from data_out.history import history_rows, history_table
from data_out.operators.audience import AudienceStepOperator
from data_out.sources.base import CustomerIOError, SourceError
from data_out.sources.customerio import CustomerIOSource
from data_out.state import ensure_schema
from sandbox.standins.base import Running
from sandbox.standins.customerio import CustomerIOStandIn
from tests.conftest import write_audience
from tests.support.memory_destination import MemoryDestination
from tests.support.recorder import Answer, recording

AUD = "cio_segment_test_v1"


class World:
    def __init__(self, tmp: Path, url: str, standin: CustomerIOStandIn, store) -> None:  # type: ignore[no-untyped-def]
        self.tmp, self.url, self.standin, self.store = tmp, url, standin, store
        self.engine = engine_for(ConnectionInfo("db", "sqlite", host=str(tmp / "db.sqlite")))
        ensure_schema(self.engine)
        self.rps: float | None = None  # the source's own default pacing
        self.key = "cio-app-key"
        write_audience(
            tmp / "aud",
            AUD,
            f"""
            name: {AUD}
            owner: tests
            purpose: Customer.io segment source
            source: {{type: customerio, segment_id: 1234, page_size: 100}}
            identifiers: {{email: email}}
            destinations: [{{type: memory, batch_size: 500}}]
            guard: {{allow_empty_source: true, max_removal_share: 1}}
        """,
        )

    def resolve(self, conn_id: str) -> ConnectionInfo:
        if conn_id == "data_out_customerio":
            return ConnectionInfo(
                conn_id,
                "data_out_customerio",
                host=self.url,
                password=self.key,
                extra={
                    **({"requests_per_second": self.rps} if self.rps else {}),
                    "backoff_initial": 0.01,
                    "max_attempts": 6,
                },
            )
        return ConnectionInfo(conn_id, "memory")

    def run(self, holder: str) -> dict:
        runner = AudienceRunner(self.engine, load_audiences(self.tmp / "aud"), AUD, self.resolve)
        run_id = runner.run(holder, dt.datetime(2026, 11, 1, tzinfo=dt.UTC))
        with self.engine.connect() as conn:
            return dict(conn.execute(select(state.run).where(state.run.c.id == run_id)).mappings().one())

    def write_page_size(self, size: int) -> None:
        path = self.tmp / "aud" / f"{AUD}.yaml"
        path.write_text(path.read_text().replace("page_size: 100", f"page_size: {size}"))

    def segment(self, n: int, offset: int = 0) -> list[dict]:
        return [{"id": f"u{i}", "email": f"u{i}@example.com", "cio_id": f"cio{i}"} for i in range(offset, offset + n)]


@pytest.fixture
def w(tmp_path: Path, store, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(MemoryDestination, "max_batch_rows", 500)  # the audience's batch_size
    standin = CustomerIOStandIn()
    with Running(standin) as running:
        yield World(tmp_path, running.url, standin, store)


def test_pages_through_a_large_segment(w: World):
    w.standin.segments["1234"] = w.segment(2_450)
    run = w.run("t/1")
    assert run["members"] == 2_450 and run["source_reported"] == 2_450
    assert w.standin.pages_served == 25
    assert set(w.store.audience("aud-1")) == {f"u{i}" for i in range(2_450)}


def test_the_default_pace_provokes_no_429_and_faster_paging_is_retried(w: World):
    w.standin.segments["1234"] = w.segment(3_000)
    w.run("t/1")
    # the count, 30 full pages, and the empty page a full last page leads to
    assert w.standin.throttled == 0 and len(w.standin.log) == 32
    span = w.standin.arrivals[-1] - w.standin.arrivals[0]
    assert span >= 0.98 * 31 / 9.5, f"31 intervals in {span:.2f}s: paced at the limit, not under it"
    # Customer.io's rule, checked on the stand-in's clock: no ten requests within one second
    arrivals = w.standin.arrivals
    assert min(b - a for a, b in zip(arrivals, arrivals[10:], strict=False)) >= 1.0
    w.standin.reset_state()
    w.standin.segments["1234"] = w.segment(3_000)
    w.rps = 1_000.0  # a client that does not pace: Customer.io answers 429 (no Retry-After), retried
    run = w.run("t/2")
    assert w.standin.throttled > 0, "expected the stand-in to rate-limit"
    assert run["members"] == 3_000


def test_a_segment_changing_between_pages(w: World):
    w.standin.segments["1234"] = w.segment(300)

    def churn(seg: str, page: int) -> None:
        if page == 2:  # someone joins at the end, someone already paged leaves
            w.standin.segments[seg].append({"id": "late", "email": "late@example.com", "cio_id": "ciolate"})
            del w.standin.segments[seg][0]

    w.standin.on_page = churn
    run = w.run("t/1")
    # u0 was paged before it left and late joined at the end: a cursor skips nobody (an offset would skip u200)
    assert run["source_reported"] == 300 and run["members"] == 301
    w.standin.on_page = None
    run = w.run("t/2")  # the next run catches up
    assert run["members"] == 300
    assert "u0" not in w.store.audience("aud-1") and "late" in w.store.audience("aud-1")


def test_an_empty_segment(w: World):
    w.standin.segments["1234"] = []
    run = w.run("t/1")
    assert (run["members"], run["source_reported"], run["status"]) == (0, 0, "success")


def test_a_page_with_an_unexpected_shape_fails_clearly_and_keeps_state(w: World):
    w.standin.segments["1234"] = w.segment(250)
    w.run("t/1")
    before = dict(w.store.audience("aud-1"))
    w.standin.pages_served = 0
    w.standin.malformed_page = 2
    with pytest.raises(RunFailed, match="page 2 of Customer.io segment 1234 has an unexpected shape"):
        w.run("t/2")
    assert w.store.audience("aud-1") == before


def test_a_wrong_key_fails_at_once_naming_the_connection(w: World, caplog: pytest.LogCaptureFixture):
    w.standin.segments["1234"] = w.segment(10)
    w.key = "not-the-key"
    with pytest.raises(RunFailed, match="refused the App API key of connection 'data_out_customerio'"):
        w.run("t/1")
    assert [s for _, _, s in w.standin.log] == [401]  # asked once: a credential does not heal by itself
    source = CustomerIOSource(w.resolve("data_out_customerio"), 1234, 100, "audience x")
    with pytest.raises(SourceError) as caught:
        list(source.iter_batches(100))
    assert caught.value.retryable is False and "not-the-key" not in str(caught.value)
    # and the stage task fails without spending its retries
    op = AudienceStepOperator(task_id="stage", audience=AUD)

    def step(context):  # noqa: ANN001, ANN202
        raise caught.value

    op.step = step  # type: ignore[method-assign]
    with pytest.raises(Exception) as failed:
        op.execute({})
    assert isinstance(failed.value, AirflowFailException)
    assert "Customer.io" in next_step_of(failed.value)


def test_a_failure_after_an_outage_names_the_page_it_stopped_at(w: World):
    w.standin.segments["1234"] = w.segment(1_000)
    w.standin.faults.down_after = 4  # the count and three pages, then 503 for good
    with pytest.raises(RunFailed) as failed:
        w.run("t/1")
    message = str(failed.value)
    assert "stopped at page 4, start=" in message and "after 300 members" in message
    assert "still failing after 6 attempts" in message


def test_65000_members_arrive_once_removals_match_and_no_429(w: World, monkeypatch: pytest.MonkeyPatch, caplog):
    """65,000 people, 1,300 of them without an id; then 5,000 leave, 2,000 join, some of them while
    the segment is being paged."""
    monkeypatch.setattr(MemoryDestination, "max_batch_rows", 10_000)  # the 65,000 go in a few batches
    w.write_page_size(2_000)
    people = w.segment(65_000)
    for p in people[::50]:
        del p["id"]  # 1,300 people Customer.io knows by email only
    w.standin.segments["1234"] = people
    caplog.set_level(logging.WARNING, logger="data_out.sources.customerio")
    run = w.run("t/1")
    with_id = {p["id"] for p in people if "id" in p}
    assert len(with_id) == 63_700
    assert (run["members"], run["missing_keys"], run["duplicate_keys"]) == (63_700, 1_300, 0)
    added = Counter(r.member_key for op, _, rows in w.store.requests if op == "add" for r in rows)
    assert set(added) == with_id and set(added.values()) == {1}  # every member with an id, exactly once
    assert set(w.store.audience("aud-1")) == with_id
    assert w.standin.throttled == 0
    assert any("1300 of 65000 members have no id" in r.getMessage() for r in caplog.records)
    assert "@" not in caplog.text

    # churn: 5,000 leave (half of them already paged when they go), 2,000 join while paging
    w.store.requests.clear()
    segment = w.standin.segments["1234"]
    leaving = {p["cio_id"] for p in segment[10_000:12_500] + segment[40_000:42_500]}
    joining = w.segment(2_000, offset=100_000)

    def churn(seg: str, page: int) -> None:
        if page == 20:  # page 20 of this run: the first 2,500 leavers were paged already, the rest not yet
            w.standin.segments[seg] = [p for p in w.standin.segments[seg] if p["cio_id"] not in leaving]
            w.standin.segments[seg] += joining

    w.standin.pages_served = 0
    w.standin.on_page = churn
    w.run("t/2")  # paged mid-change: the early leavers were seen, the late ones not
    w.standin.on_page = None
    run = w.run("t/3")  # the next run catches up
    final = {p["id"] for p in w.standin.segments["1234"] if "id" in p}
    assert set(w.store.audience("aud-1")) == final
    assert len(final) == 63_700 - len({p["id"] for p in segment if p["cio_id"] in leaving and "id" in p}) + 2_000
    assert run["members"] == len(final)
    removed = Counter(r.member_key for op, _, rows in w.store.requests if op == "remove" for r in rows)
    assert set(removed) == with_id - final and set(removed.values()) == {1}
    assert w.standin.throttled == 0


def test_history_shows_members_without_an_id(w: World):
    people = w.segment(40)
    for p in people[:3]:
        del p["id"]
    w.standin.segments["1234"] = people
    w.run("t/1")
    table = history_table(history_rows(w.engine, AUD))
    header, _, row = table.splitlines()[:3]
    columns = [c.strip() for c in header.strip("|").split("|")]
    values = [c.strip() for c in row.strip("|").split("|")]
    assert dict(zip(columns, values, strict=True))["no key"] == "3"


# -- the page fetched ahead of the consumer -------------------------------------------------------------


def _fetchers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("customerio-")]


def test_the_next_page_is_fetched_while_the_consumer_works_and_order_is_kept(w: World):
    w.standin.segments["1234"] = w.segment(650)  # 7 pages of 100, the last one short
    consumed = 0
    ahead: list[int] = []  # per page served: how many pages ahead of the consumer it was
    second_page = threading.Event()

    def served(seg: str, page: int) -> None:
        ahead.append(page - consumed)
        if page == 2:
            second_page.set()

    w.standin.on_page = served
    source = CustomerIOSource(w.resolve("data_out_customerio"), 1234, 100, "audience x")
    batches = source.iter_batches(100)
    got = list(next(batches))
    consumed = 1
    # the consumer holds page 1 and has not asked for more: page 2 is fetched all the same
    assert second_page.wait(timeout=10)
    for batch in batches:
        assert len(batch) <= 100
        got += batch
        consumed += 1
    assert [r["customer_id"] for r in got] == [f"u{i}" for i in range(650)]  # the order Customer.io stored them
    assert w.standin.pages_served == 7 and consumed == 7
    # never more than one page past the one the consumer holds: memory stays at two pages
    assert max(ahead) <= 2
    assert not _fetchers()


def test_an_error_of_the_fetching_thread_reaches_the_consumer_typed(w: World):
    w.standin.segments["1234"] = w.segment(1_000)
    w.standin.faults.down_after = 3  # the count and two pages, then 503 for good
    conn = w.resolve("data_out_customerio")
    conn.extra["max_attempts"] = 2
    source = CustomerIOSource(conn, 1234, 100, "audience x")
    got: list[dict] = []
    with pytest.raises(CustomerIOError) as failed:
        for batch in source.iter_batches(100):
            got += batch
    assert len(got) == 200  # the two pages served, then the error, in the consumer
    assert "stopped at page 3, start=" in str(failed.value) and "after 200 members" in str(failed.value)
    assert "still failing after 2 attempts" in str(failed.value)
    assert failed.value.retryable is True
    assert not _fetchers()


def test_a_person_that_is_not_an_object_fails_the_page_typed():
    pages = [
        {"identifiers": [{"id": "a", "email": None, "cio_id": "c1"}], "next": "n2"},
        {"identifiers": [{"id": "b", "email": None, "cio_id": "c2"}, "b@example.com"], "next": ""},
    ]

    def answer(seen) -> Answer:  # noqa: ANN001
        if seen.path.startswith("/v1/segments/7/customer_count"):
            return Answer(200, {"count": 2})
        return Answer(200, pages[1] if "start=n2" in seen.path else pages[0])

    with recording(answer) as api:
        conn = ConnectionInfo("data_out_customerio", "data_out_customerio", host=api.url, password="k")
        source = CustomerIOSource(conn, 7, 100, "audience x")
        batches = source.iter_batches(100)
        assert [r["customer_id"] for r in next(batches)] == ["a"]
        with pytest.raises(CustomerIOError, match="page 2 of Customer.io segment 7 has an unexpected shape") as failed:
            next(batches)
    assert "stopped at page 2, start='n2', after 1 members" in str(failed.value)
    assert "b@example.com" not in str(failed.value)
    assert not _fetchers()


def test_a_consumer_that_stops_early_stops_the_fetching_thread(w: World):
    w.standin.segments["1234"] = w.segment(1_000)
    source = CustomerIOSource(w.resolve("data_out_customerio"), 1234, 100, "audience x")
    batches = source.iter_batches(100)
    next(batches)
    batches.close()  # staging failed on the first batch, say
    assert not _fetchers()  # closing waited for the thread: nothing more can be sent
    assert w.standin.pages_served <= 2
    # the same source reads the whole segment afterwards
    assert sum(len(b) for b in source.iter_batches(500)) == 1_000


def test_stopping_early_does_not_wait_for_the_next_requests_turn(w: World):
    w.standin.segments["1234"] = w.segment(1_000)
    w.rps = 0.5  # a turn every 2 seconds
    source = CustomerIOSource(w.resolve("data_out_customerio"), 1234, 100, "audience x")
    batches = source.iter_batches(100)
    next(batches)  # the count, then page 1 two seconds later; page 2 waits for its turn
    started = time.monotonic()
    batches.close()
    assert time.monotonic() - started < 1.0  # well under the 2 s turn page 2 was waiting for
    assert not _fetchers() and w.standin.pages_served == 1
