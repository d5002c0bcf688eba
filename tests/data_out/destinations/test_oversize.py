"""A 413 from a vendor splits the batch, sends the halves and reports the sizing bug; it never fails the
batch on every run."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from data_out.connections import ConnectionInfo, engine_for
from data_out.destinations.base import BatchResult, DestinationError, MemberRow, Op, PayloadTooLarge, planned_key
from data_out.destinations.oversize import push_within_limits
from data_out.state import ensure_schema
from sandbox.standins.base import Running
from tests.conftest import People
from tests.data_out.destinations.cases import CASES
from tests.data_out.destinations.test_contract import Env, person


def test_a_413_splits_the_batch_and_the_sync_completes(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    case = CASES["meta"]
    standin = case.make()
    standin.max_body_bytes = 900  # a vendor (or a proxy before it) that takes less than Data Out sized for
    engine = engine_for(ConnectionInfo("db", "sqlite", host=str(tmp_path / "db.sqlite")))
    ensure_schema(engine)
    rows = [person(i) for i in range(20)]
    with Running(standin) as running, caplog.at_level(logging.ERROR, logger="data_out.destinations.oversize"):
        env = Env(case, standin, running.url, tmp_path, People(engine), engine)
        env.write(batch_size=20)
        env.people.set(rows)
        env.run("t/1")
    assert env.last_sync()["status"] == "success"
    assert env.held() == env.expected(rows)
    assert any(status == 413 for _, _, status in standin.log)
    assert "sizing bug" in caplog.text and "HTTP 413" in caplog.text


class _Limited:
    """A destination that takes at most ``limit`` rows a request and records the keys it was given."""

    type_name = "limited"

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.calls: list[tuple[str, int]] = []

    def push(self, op: Op, rows: list[MemberRow], key: str) -> BatchResult:
        self.calls.append((key, len(rows)))
        if len(rows) > self.limit:
            raise PayloadTooLarge(f"{len(rows)} rows")
        return BatchResult(received=len(rows), matched=len(rows))


def rows(n: int) -> list[MemberRow]:
    return [MemberRow(f"m{i}", None, None, None, None, False) for i in range(n)]


def test_halves_have_their_own_stable_keys_and_results_add_up():
    dest = _Limited(3)
    result = push_within_limits(dest, Op.ADD, rows(10), "do-k")  # type: ignore[arg-type]
    assert (result.received, result.matched, result.rejected) == (10, 10, {})
    accepted = [(k, n) for k, n in dest.calls if n <= 3]
    assert sum(n for _, n in accepted) == 10
    assert len({k for k, _ in accepted}) == len(accepted)  # a key per part
    assert {planned_key(k) for k, _ in dest.calls} == {"do-k"}
    again = _Limited(3)
    push_within_limits(again, Op.ADD, rows(10), "do-k")  # type: ignore[arg-type]
    assert again.calls == dest.calls  # a retry splits the same way, under the same keys


def test_one_member_too_large_on_its_own_is_rejected_by_row():
    result = push_within_limits(_Limited(0), Op.ADD, rows(2), "do-k")  # type: ignore[arg-type]
    assert set(result.rejected) == {"m0", "m1"} and "413" in result.rejected["m0"]


def test_other_refusals_still_fail_the_batch():
    class Refusing(_Limited):
        def push(self, op: Op, rows: list[MemberRow], key: str) -> BatchResult:
            raise DestinationError("refused", retryable=False)

    with pytest.raises(DestinationError, match="refused"):
        push_within_limits(Refusing(1), Op.ADD, rows(4), "do-k")  # type: ignore[arg-type]
