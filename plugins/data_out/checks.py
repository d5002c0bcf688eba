"""Reconciliation checks as pure functions: numbers in, a verdict against a threshold out.

Each check returns a ``CheckResult``; ``None`` as the value means "not measurable" (no baseline yet,
destination does not report a size, nothing was sent), which is recorded as ``skipped``, never as ok.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

OK, BREACH, SKIPPED = "ok", "breach", "skipped"


@dataclass(frozen=True)
class CheckResult:
    check: str
    value: float | None
    threshold: float
    status: str
    detail: str = ""

    @property
    def breached(self) -> bool:
        return self.status == BREACH


def _pct(a: float, b: float) -> float:
    return abs(a - b) / max(b, 1) * 100


def _at_most(check: str, value: float | None, threshold: float, detail: str) -> CheckResult:
    if value is None:
        return CheckResult(check, None, threshold, SKIPPED, detail)
    return CheckResult(check, round(value, 4), threshold, OK if value <= threshold else BREACH, detail)


def _at_least(check: str, value: float | None, threshold: float, detail: str) -> CheckResult:
    if value is None:
        return CheckResult(check, None, threshold, SKIPPED, detail)
    return CheckResult(check, round(value, 4), threshold, OK if value >= threshold else BREACH, detail)


def destination_gap(acked: int, destination_size: int | None, max_pct: float) -> CheckResult:
    """What we believe the destination holds versus what it reports holding."""
    value = None if destination_size is None else _pct(destination_size, acked)
    return _at_most(
        "destination_gap_pct", value, max_pct, f"acknowledged {acked}, destination reports {destination_size}"
    )


def source_gap(desired: int, acked: int, max_pct: float) -> CheckResult:
    """Who should be there (latest snapshot) versus who was acknowledged: failing syncs show here."""
    return _at_most("source_gap_pct", _pct(acked, desired), max_pct, f"source {desired}, acknowledged {acked}")


def day_over_day(acked: int, previous: int | None, max_pct: float) -> CheckResult:
    value = None if previous is None else _pct(acked, previous)
    return _at_most("day_over_day_pct", value, max_pct, f"today {acked}, previous {previous}")


def baseline(acked: int, history: Sequence[int], max_pct: float) -> CheckResult:
    """Against the median of the last N reconciliations (robust to one bad day)."""
    if not history:
        return _at_most("baseline_pct", None, max_pct, "no history yet")
    median = statistics.median(history)
    return _at_most("baseline_pct", _pct(acked, median), max_pct, f"today {acked}, median of {len(history)} {median}")


def match_rate(received: int, matched: int | None, min_rate: float) -> CheckResult:
    value = None if not received or matched is None else matched / received
    return _at_least("match_rate", value, min_rate, f"{matched} matched of {received} received")


def holdout_share(observed: int, eligible: int, configured_pct: float, max_pp: float) -> CheckResult:
    """Observed holdout share versus the configured percent, in percentage points."""
    value = None if not eligible else abs(observed / eligible * 100 - configured_pct)
    return _at_most(
        "holdout_share_pp", value, max_pp, f"{observed} of {eligible} held out, configured {configured_pct}%"
    )


def reject_rate(rejected: int, attempted: int, max_rate: float) -> CheckResult:
    value = None if not attempted else rejected / attempted
    return _at_most("reject_rate", value, max_rate, f"{rejected} rejected of {attempted} rows sent")


def failed_sync_rate(failed: int, total: int, max_rate: float) -> CheckResult:
    value = None if not total else failed / total
    return _at_most("failed_sync_rate", value, max_rate, f"{failed} failed of {total} syncs")


def metric_volume(
    metric: str, today: int, history: Sequence[int], max_drop_pct: float, max_spike_pct: float
) -> CheckResult:
    """Message-metric volume against the median of previous days: drops and spikes both breach."""
    check = f"volume_{metric}"
    if not history:
        return CheckResult(check, None, max_drop_pct, SKIPPED, "no history yet")
    median = statistics.median(history)
    change = (today - median) / max(median, 1) * 100
    limit = max_spike_pct if change > 0 else max_drop_pct
    status = OK if abs(change) <= limit else BREACH
    return CheckResult(check, round(change, 2), limit, status, f"today {today}, median {median}")
