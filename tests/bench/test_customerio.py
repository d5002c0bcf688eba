"""The Customer.io benchmark runs end to end (at a tiny N) and ends with the one line its readers parse."""

from __future__ import annotations

import re

from tests.bench.runner import run_bench

# 2,500 people in pages of 1,000: three membership pages and the customer_count request, 0.4 s at 10/s
LINE = re.compile(
    r"^bench-customerio: members=2500 pages=4 rate=10 floor_s=0\.40 elapsed_s=[\d.]+ ratio=[\d.]+x "
    r"rss_start_mb=\d+ rss_peak_mb=\d+$"
)


def test_bench_runs_and_prints_its_line():
    out = run_bench("bench.customerio", "--members", "2500", "--page-size", "1000", line=LINE, timeout=120)
    assert "4 requests sent, 0 answered 429" in out
