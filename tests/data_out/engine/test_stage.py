"""Staging streams: memory does not grow with audience size, and unchanged rows are not recomputed."""

from __future__ import annotations

import datetime as dt
import tracemalloc

from sqlalchemy import func, select

from data_out import state
from data_out.config import AudienceConfig
from data_out.connections import ConnectionInfo, engine_for
from data_out.engine.stage import Stager, raw_fingerprint
from data_out.sources.warehouse import SqlSource
from data_out.state import ensure_schema

ROWS_SQL = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count)
SELECT 'c' || i AS customer_id, 'Person.' || i || '@Example.com' AS email, NULL AS phone FROM n
"""


def config(salt: str = "salt-1") -> AudienceConfig:
    return AudienceConfig.model_validate(
        {
            "name": "mem_test_v1",
            "owner": "t",
            "purpose": "t",
            "source": {"query": "unused"},
            "holdout": {"percent": 10, "salt": salt},
            "destinations": [{"type": "warehouse"}],
        }
    )


def stage(tmp_path, count: int, cfg: AudienceConfig, run_id: int = 1):
    engine = engine_for(ConnectionInfo("s", "sqlite", host=str(tmp_path / "state.db")))
    ensure_schema(engine)
    source = SqlSource(engine, ROWS_SQL, {"count": count}, ["customer_id", "email"], "test")
    return engine, Stager(engine, cfg, run_id).stage(source, {})


def peak_bytes(tmp_path, count: int) -> int:
    tracemalloc.start()
    try:
        stage(tmp_path / str(count), count, config())
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_does_not_grow_with_audience_size(tmp_path):
    (tmp_path / "5000").mkdir()
    (tmp_path / "40000").mkdir()
    small, large = peak_bytes(tmp_path, 5_000), peak_bytes(tmp_path, 40_000)
    print(f"staging peak traced memory: 5k rows {small / 2**20:.1f} MiB, 40k rows {large / 2**20:.1f} MiB")
    assert large < small * 1.5  # 8x the rows, not 8x the memory


def test_unchanged_rows_are_not_normalised_again(tmp_path):
    engine, first = stage(tmp_path, 2_000, config())
    assert first.recomputed == 2_000
    _, second = stage(tmp_path, 2_100, config(), run_id=2)
    assert second.recomputed == 100 and second.members == 2_100
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(state.stage)) == 0  # stage emptied after merge


def test_a_new_salt_recomputes_every_bucket(tmp_path):
    _, _ = stage(tmp_path, 500, config("salt-1"))
    _, again = stage(tmp_path, 500, config("salt-2"), run_id=2)
    assert again.recomputed == 500


def test_fingerprint_distinguishes_types_and_boundaries():
    ctx = b"ctx"
    assert raw_fingerprint(ctx, ["ab", "c"]) != raw_fingerprint(ctx, ["a", "bc"])
    assert raw_fingerprint(ctx, [None]) != raw_fingerprint(ctx, [""])
    assert raw_fingerprint(ctx, [b"x"]) != raw_fingerprint(ctx, ["x"])
    assert raw_fingerprint(b"v1", ["x"]) != raw_fingerprint(b"v2", ["x"])


def test_window_parameters_are_naive_utc_seconds():
    from data_out.sources.warehouse import window_params

    as_of = dt.datetime(2026, 11, 1, 12, 30, 15, 999, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    p = window_params(as_of, {"since": dt.timedelta(hours=6)})
    assert p == {"as_of": dt.datetime(2026, 11, 1, 10, 30, 15), "since": dt.datetime(2026, 11, 1, 4, 30, 15)}
