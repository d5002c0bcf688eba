"""Customer.io segment source against its stand-in over loopback HTTP."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from data_out import state
from data_out.config import load_audiences
from data_out.connections import ConnectionInfo, engine_for
from data_out.runner import AudienceRunner, RunFailed
from data_out.state import ensure_schema
from sandbox.standins.base import Running
from sandbox.standins.customerio import CustomerIOStandIn
from tests.conftest import write_audience

AUD = "cio_segment_test_v1"


class World:
    def __init__(self, tmp: Path, url: str, standin: CustomerIOStandIn, store) -> None:  # type: ignore[no-untyped-def]
        self.tmp, self.url, self.standin, self.store = tmp, url, standin, store
        self.engine = engine_for(ConnectionInfo("db", "sqlite", host=str(tmp / "db.sqlite")))
        ensure_schema(self.engine)
        self.rps = 100.0
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
                password="cio-app-key",
                extra={"requests_per_second": self.rps, "backoff_initial": 0.01, "max_attempts": 6},
            )
        return ConnectionInfo(conn_id, "memory")

    def run(self, holder: str) -> dict:
        runner = AudienceRunner(self.engine, load_audiences(self.tmp / "aud"), AUD, self.resolve)
        run_id = runner.run(holder, dt.datetime(2026, 11, 1, tzinfo=dt.UTC))
        with self.engine.connect() as conn:
            return dict(conn.execute(select(state.run).where(state.run.c.id == run_id)).mappings().one())

    def segment(self, n: int, offset: int = 0) -> list[dict]:
        return [{"id": f"u{i}", "email": f"u{i}@example.com", "cio_id": f"cio{i}"} for i in range(offset, offset + n)]


@pytest.fixture
def w(tmp_path: Path, store) -> Iterator[World]:  # type: ignore[no-untyped-def]
    standin = CustomerIOStandIn()
    with Running(standin) as running:
        yield World(tmp_path, running.url, standin, store)


def test_pages_through_a_large_segment(w: World):
    w.standin.segments["1234"] = w.segment(2_450)
    run = w.run("t/1")
    assert run["members"] == 2_450 and run["source_reported"] == 2_450
    assert w.standin.pages_served == 25
    assert set(w.store.audience("aud-1")) == {f"u{i}" for i in range(2_450)}


def test_rate_limit_is_respected_and_429s_are_retried(w: World):
    w.standin.segments["1234"] = w.segment(1_500)
    w.rps = 10.0  # the client paces itself: no 429 at all
    w.run("t/1")
    assert not [s for _, _, s in w.standin.log if s == 429]
    w.standin.__init__()  # a fresh stand-in with an empty bucket, and a client that does not pace
    w.standin.segments["1234"] = w.segment(3_000)
    w.rps = 1_000.0
    run = w.run("t/2")
    assert [s for _, _, s in w.standin.log if s == 429], "expected the stand-in to rate-limit"
    assert run["members"] == 3_000


def test_a_segment_changing_between_pages(w: World):
    w.standin.segments["1234"] = w.segment(300)

    def churn(seg: str, page: int) -> None:
        if page == 2:  # someone joins at the end, someone already paged leaves
            w.standin.segments[seg].append({"id": "late", "email": "late@example.com", "cio_id": "ciolate"})
            del w.standin.segments[seg][0]

    w.standin.on_page = churn
    run = w.run("t/1")
    assert run["source_reported"] == 300 and run["members"] == 300  # u0 paged before it left, late seen
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
