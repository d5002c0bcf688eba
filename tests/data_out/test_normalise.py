"""Normalising in worker processes gives what normalising here gives, in order, with bounded memory."""

from __future__ import annotations

import gc
import multiprocessing

import pytest

from data_out import normalise
from data_out.config import AudienceConfig
from data_out.normalise import Normaliser, in_order, workers_for


def _config() -> AudienceConfig:
    return AudienceConfig.model_validate(
        {
            "name": "norm_v1",
            "owner": "t",
            "purpose": "t",
            "source": {"query": "SELECT 1"},
            "identifiers": {"email": "email", "phone": "phone", "default_region": "US", "extra": {"FN": "first"}},
            "holdout": {"percent": 10, "salt": "salt-1"},
            "destinations": [{"type": "warehouse"}],
        }
    )


def _parts(n_parts: int, size: int) -> list[list[tuple]]:
    """(key, fingerprint, n, email, phone, external id, first name) rows, some invalid, some duplicated."""
    parts = []
    for p in range(n_parts):
        part = []
        for i in range(size):
            k = p * size + i
            email = f" User{k}@Example.com " if k % 3 else "not-an-email"
            phone = f"+1 415 555 {k % 10000:04d}" if k % 4 else None
            part.append((f"c{k}", f"fp{k}", 1, email, phone, None, "Ann" if k % 2 else None))
        parts.append(part)
    parts[-1].append(parts[-1][-1][:2] + (2,) + parts[-1][-1][3:])  # a key twice, identical: once
    parts[-1][-2] = parts[-1][-2][:2] + (2,) + parts[-1][-2][3:]
    return parts


def test_worker_processes_give_the_same_rows_in_the_same_order():
    normaliser = Normaliser.for_audience(_config())
    parts = _parts(9, 50)
    here = list(in_order(normaliser.member_rows, parts, workers=1))
    pooled = list(in_order(normaliser.member_rows, iter(parts), workers=2))
    assert pooled == here
    first = [dict(zip(normalise.MEMBER_COLUMNS, r, strict=True)) for r in here[0]]
    assert [r["member_key"] for r in first[:3]] == ["c0", "c1", "c2"]
    assert len(here[-1]) == 50  # the duplicated key came out once
    assert first[0]["email_issue"] == "invalid" and first[1]["email_sha256"]
    assert any(r["extra"] for r in first) and all(r["bucket"] is not None for r in first)


def test_member_rows_put_each_value_in_its_column():
    """Rows are built as tuples: their order must be the table's, checked against the dict of ``identity``."""
    assert ("audience", "member_key", "raw_fp", *normalise.IDENTITY_COLUMNS) == normalise.MEMBER_COLUMNS
    normaliser = Normaliser.for_audience(_config())
    part = _parts(2, 30)[0]  # the first part: no duplicated keys
    rows = normaliser.member_rows(part)
    for (key, fp, _, *raw), row in zip(part, rows, strict=True):
        want = {"audience": "norm_v1", "member_key": key, "raw_fp": fp, **normaliser.identity(key, tuple(raw))}
        assert dict(zip(normalise.MEMBER_COLUMNS, row, strict=True)) == want
    assert {r[normalise.MEMBER_COLUMNS.index("phone_issue")] for r in rows} == {None, "missing"}


def test_parts_are_read_as_results_are_taken():
    pulled = []

    def parts():
        for i in range(40):
            pulled.append(i)
            yield [i]

    results = in_order(sum, parts(), workers=2)
    assert next(results) == 0
    assert len(pulled) <= 2 * 2  # at most two parts per worker in flight, not the whole stream
    assert list(results) == list(range(1, 40))


def test_the_heap_is_frozen_while_workers_live_and_thawed_after():
    """Collections here would copy the pages the forked workers share (``heap.frozen_heap``)."""
    assert gc.get_freeze_count() == 0
    first = in_order(sum, [[i] for i in range(6)], workers=2)
    assert next(first) == 0
    assert gc.get_freeze_count() > 0  # the objects that existed when the workers were forked
    second = in_order(sum, [[i] for i in range(6)], workers=2)
    assert next(second) == 0
    assert list(first) == list(range(1, 6))
    assert gc.get_freeze_count() > 0  # the second pool's workers still share the heap
    second.close()  # a caller that stops early thaws it too
    assert gc.get_freeze_count() == 0
    alone = in_order(sum, [[1], [2]], workers=1)
    assert next(alone) == 1
    assert gc.get_freeze_count() == 0  # no workers: nothing to freeze for
    assert list(alone) == [2]


def _run_in_daemon(queue) -> None:  # a daemonic process may not start children: normalise here instead
    queue.put(list(in_order(sum, [[1, 2], [3]], workers=2)))


def test_a_process_that_may_not_have_children_normalises_itself():
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_run_in_daemon, args=(queue,), daemon=True)
    proc.start()
    assert queue.get(timeout=60) == [3, 3]
    proc.join(timeout=60)
    assert proc.exitcode == 0


def test_how_many_workers(monkeypatch):
    monkeypatch.delenv("DATA_OUT_NORMALISE_WORKERS", raising=False)
    assert workers_for(normalise.POOL_MIN_ROWS - 1) == 1  # a small change: not worth the processes
    assert 1 <= workers_for(normalise.POOL_MIN_ROWS) <= normalise.MAX_WORKERS
    monkeypatch.setenv("DATA_OUT_NORMALISE_WORKERS", "3")
    assert workers_for(10**6) == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("DATA_OUT_NORMALISE_WORKERS", bad)
        with pytest.raises(ValueError, match="DATA_OUT_NORMALISE_WORKERS"):
            workers_for(10**6)


@pytest.mark.parametrize("workers", [1, 2])
def test_the_callers_own_work_runs_once_before_the_first_result(workers):
    events: list[str] = []

    def parts():
        for i in range(10):
            events.append(f"part {i}")
            yield [i]

    results = in_order(sum, parts(), workers, started=lambda: events.append("started"))
    assert next(results) == 0
    assert events.count("started") == 1
    # with workers, the first parts are already handed out when the caller's work starts
    assert events.index("started") == (0 if workers == 1 else max(2 * workers, normalise.PREFETCH_PARTS))
    assert list(results) == list(range(1, 10)) and events.count("started") == 1
    assert list(in_order(sum, [], workers, started=lambda: events.append("empty"))) == []
    assert events[-1] == "empty"  # runs even when there is nothing to normalise
