"""Every check with data that just passes and data that just breaches its threshold."""

from __future__ import annotations

import pytest

from data_out import checks


@pytest.mark.parametrize(
    ("passing", "breaching"),
    [
        (checks.destination_gap(1000, 950, 5.0), checks.destination_gap(1000, 949, 5.0)),
        (checks.source_gap(1000, 950, 5.0), checks.source_gap(1000, 949, 5.0)),
        (checks.day_over_day(1300, 1000, 30.0), checks.day_over_day(1301, 1000, 30.0)),
        (checks.baseline(150, [90, 100, 110], 50.0), checks.baseline(151, [90, 100, 110], 50.0)),
        (checks.match_rate(1000, 300, 0.3), checks.match_rate(1000, 299, 0.3)),
        (checks.holdout_share(120, 1000, 10.0, 2.0), checks.holdout_share(121, 1000, 10.0, 2.0)),
        (checks.reject_rate(50, 1000, 0.05), checks.reject_rate(51, 1000, 0.05)),
        (checks.failed_sync_rate(1, 5, 0.2), checks.failed_sync_rate(2, 5, 0.2)),
        (
            checks.metric_volume("opened", 50, [100, 100, 100], 50.0, 100.0),
            checks.metric_volume("opened", 49, [100, 100, 100], 50.0, 100.0),
        ),
        (
            checks.metric_volume("clicked", 200, [100, 100, 100], 50.0, 100.0),
            checks.metric_volume("clicked", 201, [100, 100, 100], 50.0, 100.0),
        ),
    ],
    ids=[
        "destination_gap",
        "source_gap",
        "day_over_day",
        "baseline",
        "match_rate",
        "holdout_share",
        "reject_rate",
        "failed_sync_rate",
        "volume_drop",
        "volume_spike",
    ],
)
def test_just_passes_and_just_breaches(passing, breaching):
    assert passing.status == checks.OK, passing
    assert breaching.status == checks.BREACH, breaching
    assert passing.check == breaching.check


@pytest.mark.parametrize(
    "result",
    [
        checks.destination_gap(10, None, 5),
        checks.day_over_day(10, None, 5),
        checks.baseline(10, [], 5),
        checks.match_rate(0, None, 0.3),
        checks.metric_volume("sent", 10, [], 50, 100),
    ],
)
def test_unmeasurable_is_skipped_not_ok(result):
    assert result.status == checks.SKIPPED and result.value is None
