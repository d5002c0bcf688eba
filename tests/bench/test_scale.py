"""The benchmark itself runs end to end (at a tiny N) and ends with the one line its readers parse."""

from __future__ import annotations

import re

import pytest

from tests.bench.runner import run_bench
from tests.conftest import PG_ADMIN_URL

LINE = re.compile(
    r"^bench: members=2000 churn=0\.05 data_out_s=[\d.]+ pandas_s=[\d.]+ floor_s=[\d.]+ "
    r"speedup_vs_pandas=[\d.]+x floor_ratio=[\d.]+x data_out_rss_mb=\d+ pandas_rss_mb=\d+ "
    r"first_s=[\d.]+ nochange_s=[\d.]+ quiet_s=[\d.]+ quiet_churn_s=[\d.]+$"
)


@pytest.mark.postgres
def test_bench_runs_and_prints_its_line(pg_admin):
    args = ("--members", "2000", "--churn", "0.05", "--pg-url", PG_ADMIN_URL)
    out = run_bench("bench.scale", *args, line=LINE, timeout=300)
    assert re.search(r"  churn: \d+ members left, 100 joined", out)
    assert re.search(r"quiet_churn: \d+ members left, 100 joined", out)
    # only new members were normalised by the churn runs, and nothing by the runs without a change
    assert re.search(r"recomputed rows \|\s+2,000 \|\s+100 \|\s+0 \|\s+0 \|\s+100 \|", out), out
    # the churn and no-change runs compared in full; the quiet ones read what the change column flagged
    assert re.search(r"stage: key pass \|", out), out
    assert re.search(r"comparison \|\s+full \|\s+full \|\s+full \|\s+changed \|\s+changed \|", out), out
