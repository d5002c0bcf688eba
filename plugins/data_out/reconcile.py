"""Daily reconciliation: source vs state vs destination, drift, match rate, holdouts, rejects, volumes.

For every active (audience, destination) the reconciler measures the latest source snapshot, the
acknowledged state and the size the destination reports, runs the checks in ``checks.py`` against the
audience's thresholds (with the destination's overrides) and records everything in ``do_recon``.
When a gap breaches and ``drift.repair`` is on, it rebuilds the destination from the warehouse (a fresh
stage, then a full resync of that destination) and measures again, so a missed update is repaired by
the next morning. A failure in one audience is recorded as a finding and never stops the others.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field, replace

from sqlalchemy import Engine, Integer, cast, func, insert, select, update

from data_out import checks, state
from data_out.checks import CheckResult
from data_out.config import LoadedAudience, LoadResult
from data_out.destinations.base import DriftSettings
from data_out.engine.plan import count_desired
from data_out.engine.runner import AudienceRunner, Resolver
from data_out.modes import SyncMode
from data_out.state.errors import error_text, translated

log = logging.getLogger(__name__)

ALL = "*"
VOLUME_DEFAULTS = {"max_drop_pct": 50.0, "max_spike_pct": 100.0, "days": 7}


@dataclass
class Finding:
    audience: str
    destination: str
    result: CheckResult
    repaired: bool = False


@dataclass
class Measure:
    desired: int
    acked: int
    destination_size: int | None
    size_error: str | None = None


@dataclass(frozen=True)
class RecentSyncs:
    """One destination's syncs of the last 24 hours; ``matched`` is ``None`` when no vendor reported a match."""

    total: int
    received: int
    matched: int | None
    rejected: int
    attempted: int
    failed: int


@dataclass
class ReconResult:
    recon_id: int
    findings: list[Finding] = field(default_factory=list)
    repaired: list[tuple[str, str]] = field(default_factory=list)

    @property
    def breaches(self) -> list[Finding]:
        return [f for f in self.findings if f.result.breached]


class Reconciler:
    def __init__(self, engine: Engine, audiences: LoadResult, resolve: Resolver, now: dt.datetime | None = None):
        self.engine = engine
        self.audiences = audiences
        self.resolve = resolve
        self.now = now or state.utcnow()

    def run(self, dag_run_id: str | None = None, repair: bool = True) -> ReconResult:
        with self.engine.begin() as conn:
            recon_id = state.inserted_id(
                conn.execute(insert(state.recon_run).values(dag_run_id=dag_run_id, started_at=state.utcnow()))
            )
        result = ReconResult(recon_id)
        for name, loaded in sorted(self.audiences.audiences.items()):
            if loaded.config.status != "active":
                continue
            try:
                with translated(f"reconciliation of {name}"):  # a driver's text, redacted, before it is logged
                    self._audience(loaded, result, repair)
            except Exception as exc:  # one audience never blocks the others
                log.exception("reconciliation of %s failed", name)
                result.findings.append(
                    Finding(name, ALL, CheckResult("reconcile_error", None, 0, checks.BREACH, error_text(exc)[:500]))
                )
        result.findings += [Finding(ALL, ALL, r) for r in self.volume_checks()]
        self._record(result)
        return result

    # -- measuring ---------------------------------------------------------------------------------
    def measure(self, runner: AudienceRunner, label: str) -> Measure:
        a = state.ack
        with runner.destination_ctx(label) as dest:
            with self.engine.connect() as conn:
                desired = count_desired(conn, runner.cfg, dest)
                acked = state.scalar_int(
                    conn,
                    select(func.count()).where(
                        a.c.audience == runner.cfg.name, a.c.destination == label, a.c.rejected.is_(False)
                    ),
                )
            try:
                size, error = dest.size(), None
            except Exception as exc:  # a size read failing is a finding, not a crash
                size, error = None, error_text(exc)[:300]
        return Measure(desired, acked, size, error)

    def _history(self, audience: str, label: str, n: int) -> list[int]:
        m = state.recon_measure
        with self.engine.connect() as conn:
            rows = (
                conn.execute(
                    select(m.c.acked)
                    .where(m.c.audience == audience, m.c.destination == label)
                    .order_by(m.c.id.desc())
                    .limit(n)
                )
                .scalars()
                .all()
            )
        return [int(r) for r in rows if r is not None]

    def _recent_syncs(self, audience: str, label: str) -> RecentSyncs:
        s = state.sync
        since = self.now - dt.timedelta(hours=24)
        with self.engine.connect() as conn:
            row = conn.execute(
                select(
                    func.count(),
                    func.sum(func.coalesce(s.c.received, 0)),
                    func.sum(s.c.matched),
                    func.sum(func.coalesce(s.c.rejected, 0)),
                    func.sum(
                        func.coalesce(s.c.added, 0)
                        + func.coalesce(s.c.removed, 0)
                        + func.coalesce(s.c.refreshed, 0)  # a refresh's rejects count in ``rejected`` too
                        + func.coalesce(s.c.rejected, 0)
                    ),
                    func.sum(cast(s.c.status.in_(["failed", "guarded", "size_mismatch"]), Integer)),
                ).where(s.c.audience == audience, s.c.destination == label, s.c.started_at >= since)
            ).one()
        total, received, matched, rejected, attempted, failed = row
        return RecentSyncs(
            total=int(total or 0),
            received=int(received or 0),
            matched=None if matched is None else int(matched),
            rejected=int(rejected or 0),
            attempted=int(attempted or 0),
            failed=int(failed or 0),
        )

    def _checks(self, loaded: LoadedAudience, label: str, m: Measure) -> list[CheckResult]:
        cfg = loaded.config
        d: DriftSettings = cfg.drift_for(label)
        history = self._history(cfg.name, label, d.baseline_runs)
        syncs = self._recent_syncs(cfg.name, label)
        gap = checks.destination_gap(m.acked, m.destination_size, d.max_gap_pct)
        if m.size_error:
            gap = CheckResult(gap.check, None, gap.threshold, checks.SKIPPED, f"size read failed: {m.size_error}")
        return [
            gap,
            checks.source_gap(m.desired, m.acked, d.max_source_gap_pct),
            checks.day_over_day(m.acked, history[0] if history else None, d.max_day_over_day_pct),
            checks.baseline(m.acked, history, d.max_baseline_pct),
            checks.match_rate(syncs.received, syncs.matched, d.min_match_rate),
            checks.reject_rate(syncs.rejected, syncs.attempted, d.max_reject_rate),
            checks.failed_sync_rate(syncs.failed, syncs.total, d.max_failed_sync_rate),
        ]

    def _holdout(self, loaded: LoadedAudience) -> CheckResult | None:
        cfg = loaded.config
        if not cfg.holdout:
            return None
        r = state.run
        with self.engine.connect() as conn:
            row = conn.execute(
                select(r.c.held_out, r.c.members, r.c.excluded)
                .where(r.c.audience == cfg.name, r.c.status == "success")
                .order_by(r.c.id.desc())
                .limit(1)
            ).first()
        if row is None:
            return None
        held, members, excluded = (int(v or 0) for v in row)
        return checks.holdout_share(held, members - excluded, cfg.holdout.percent, cfg.drift.max_holdout_pp)

    # -- one audience ------------------------------------------------------------------------------
    def _audience(self, loaded: LoadedAudience, result: ReconResult, repair: bool) -> None:
        cfg = loaded.config
        runner = AudienceRunner(self.engine, self.audiences, cfg.name, self.resolve)
        for dest in cfg.destinations:
            label = dest.label
            m = self.measure(runner, label)
            results = self._checks(loaded, label, m)
            gaps = {r.check for r in results if r.breached and r.check in {"destination_gap_pct", "source_gap_pct"}}
            repaired = False
            if repair and not gaps and self._rebuild_due(cfg.name, label, cfg.drift_for(label).rebuild_every_days):
                log.info("%s/%s: scheduled rebuild is due", cfg.name, label)
                self._repair(runner, label, result)
            elif gaps and repair and cfg.drift_for(label).repair:
                repaired = self._repair(runner, label, result)
                if repaired:
                    before = {r.check: r for r in results}
                    m = self.measure(runner, label)
                    results = [
                        replace(
                            r,
                            detail=f"before repair {before[r.check].value:.4g} "
                            f"({before[r.check].detail}); after: {r.detail}",
                        )
                        if r.check in gaps
                        else r
                        for r in self._checks(loaded, label, m)
                    ]
            self._save_measure(result.recon_id, cfg.name, label, m)
            result.findings += [Finding(cfg.name, label, r, repaired and r.check in gaps) for r in results]
        if (h := self._holdout(loaded)) is not None:
            result.findings.append(Finding(cfg.name, ALL, h))

    def _rebuild_due(self, audience: str, label: str, every_days: int | None) -> bool:
        if not every_days:
            return False
        s = state.sync
        with self.engine.connect() as conn:
            last = conn.scalar(
                select(func.max(s.c.started_at)).where(
                    s.c.audience == audience,
                    s.c.destination == label,
                    s.c.status == "success",
                    s.c.mode.in_([SyncMode.FULL_RESYNC.value, SyncMode.REPLACE.value]),
                )
            )
        if last is None:
            return True
        last = last if last.tzinfo else last.replace(tzinfo=dt.UTC)
        return self.now - last >= dt.timedelta(days=every_days)

    def _repair(self, runner: AudienceRunner, label: str, result: ReconResult) -> bool:
        """Rebuild from the warehouse: stage afresh, then re-send everything the destination should hold."""
        holder = f"reconcile/{result.recon_id}"
        try:
            runner.run(holder, self.now, mode=SyncMode.FULL_RESYNC, destinations=[label])
        except Exception as exc:
            log.warning("repair of %s/%s failed: %s", runner.cfg.name, label, error_text(exc))
            return False
        result.repaired.append((runner.cfg.name, label))
        log.info("repaired %s/%s with a full resync", runner.cfg.name, label)
        return True

    # -- volumes -----------------------------------------------------------------------------------
    def volume_checks(self) -> list[CheckResult]:
        v = state.metric_volume
        today = self.now.date()
        start = (today - dt.timedelta(days=VOLUME_DEFAULTS["days"])).isoformat()
        with self.engine.connect() as conn:
            rows = conn.execute(select(v.c.metric, v.c.day, v.c.count).where(v.c.day >= start)).all()
        by_metric: dict[str, dict[str, int]] = {}
        for metric, day, count in rows:
            by_metric.setdefault(metric, {})[day] = int(count)
        out = []
        yesterday = (today - dt.timedelta(days=1)).isoformat()  # the last complete day
        for metric, days in sorted(by_metric.items()):
            history = [c for d, c in days.items() if d < yesterday]
            out.append(
                checks.metric_volume(
                    metric,
                    days.get(yesterday, 0),
                    history,
                    VOLUME_DEFAULTS["max_drop_pct"],
                    VOLUME_DEFAULTS["max_spike_pct"],
                )
            )
        return out

    # -- recording ---------------------------------------------------------------------------------
    def _save_measure(self, recon_id: int, audience: str, label: str, m: Measure) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(state.recon_measure).values(
                    recon_id=recon_id,
                    at=self.now,
                    audience=audience,
                    destination=label,
                    desired=m.desired,
                    acked=m.acked,
                    destination_size=m.destination_size,
                )
            )

    def _record(self, result: ReconResult) -> None:
        rows = [
            {
                "recon_id": result.recon_id,
                "at": self.now,
                "audience": f.audience,
                "destination": f.destination,
                "check": f.result.check,
                "value": f.result.value,
                "threshold": f.result.threshold,
                "status": f.result.status,
                "detail": f.result.detail,
                "repaired": f.repaired,
            }
            for f in result.findings
        ]
        with self.engine.begin() as conn:
            if rows:
                conn.execute(insert(state.recon), rows)
            conn.execute(
                update(state.recon_run)
                .where(state.recon_run.c.id == result.recon_id)
                .values(finished_at=state.utcnow(), breaches=len(result.breaches), repaired=len(result.repaired))
            )
