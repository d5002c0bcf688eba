"""One audience run, step by step, without Airflow: start, stage, plan and push each destination, finish.

Operators call these steps from separate tasks; tests and the benchmark call them in one process.
Every step records its outcome in ``do_run``/``do_sync`` before returning or raising, so run history
explains failures as well as successes.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any, TypeVar, cast

from sqlalchemy import BigInteger, Engine, case, delete, func, insert, literal, null, select, update

from data_out import state
from data_out.config import CustomerIOSource, LoadedAudience, LoadResult
from data_out.connections import ConnectionInfo, engine_for
from data_out.destinations import destination_class
from data_out.destinations.base import LIVE_SIZE_MIN_SHARE, Destination
from data_out.engine import changes, lease
from data_out.engine.plan import GuardTripped, Plan, Planner, Replacer
from data_out.engine.push import Pusher, PushResult
from data_out.engine.stage import DEFAULT_BATCH_SIZE, Stager, StageStats
from data_out.errors import (
    REQUEST_NEXT_STEP,
    SIZE_MISMATCH_NEXT_STEP,
    ConfigurationError,
    RetryableError,
    TerminalError,
    next_step_of,
)
from data_out.modes import SyncMode
from data_out.sources.base import Source
from data_out.sources.customerio import CustomerIOSource as CustomerIOSourceReader
from data_out.sources.warehouse import SqlSource, window_params
from data_out.state import errors as state_errors

log = logging.getLogger(__name__)

Resolver = Callable[[str], ConnectionInfo]
_Step = TypeVar("_Step", bound=Callable[..., Any])


#: ``do_sync.status`` of a sync whose destination reported far fewer members than acknowledged
SIZE_MISMATCH = "size_mismatch"
#: ``do_sync.status`` of a sync whose attempt died and which a later attempt replaced
SUPERSEDED = "superseded"

#: statuses of a sync whose attempt may have died: a later attempt's sync supersedes it
_UNFINISHED = ("planning", "resuming", "planned")

#: destinations synced at once by ``run(parallel=...)``: each holds a state connection for its whole
#: plan transaction, and the state engine's pool has four (connections.py)
MAX_PARALLEL_DESTINATIONS = 2


class RunFailed(TerminalError):
    """The run finished with failed steps; the message lists them.

    ``causes`` are the errors the failed steps raised, where this process saw them (``run``); the next
    step is the first one's. Under Airflow each step's own task failed first and sent its own email.
    """

    def __init__(self, message: str, causes: Sequence[BaseException] = ()) -> None:
        super().__init__(message, next_step=next_step_of(causes[0]) if causes else None)
        self.causes = tuple(causes)


class SizeMismatch(RetryableError):
    """The destination reports far fewer members than are acknowledged right after a push (``size_shortfall``).

    Everything acknowledged stays acknowledged; the sync is recorded as ``size_mismatch``. A retry of
    the push task checks again (a size that lags behind uploads may have caught up).
    """

    next_step = SIZE_MISMATCH_NEXT_STEP


def _error_text(exc: BaseException) -> str:
    """For the run record: an outage in one sentence, a driver's message without the row it may quote."""
    return state_errors.error_text(exc)[:2000]


def _state_step(step: str) -> Callable[[_Step], _Step]:
    """A state-database outage inside the step surfaces as a ``StateDatabaseError`` naming the step (retryable),
    any other database error as a ``DatabaseError`` whose text is safe to log (``state.errors.translated``)."""

    def decorate(fn: _Step) -> _Step:
        @functools.wraps(fn)
        def wrapper(self: AudienceRunner, *args: Any, **kwargs: Any) -> Any:
            with state_errors.translated(f"{step} of audience {self.cfg.name}"):
                return fn(self, *args, **kwargs)

        return cast(_Step, wrapper)

    return decorate


class AudienceRunner:
    def __init__(
        self,
        state_engine: Engine,
        audiences: LoadResult,
        name: str,
        resolve: Resolver,
        stage_batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        self.engine = state_errors.watch(state_engine)
        self.stage_batch_size = stage_batch_size
        self.audiences = audiences
        self.loaded: LoadedAudience = audiences.get(name)
        self.cfg = self.loaded.config
        self.resolve = resolve

    # -- building blocks -------------------------------------------------------------------------
    def source_for(self, loaded: LoadedAudience, as_of: dt.datetime) -> Source:
        cfg = loaded.config
        src = cfg.source
        if isinstance(src, CustomerIOSource):
            return CustomerIOSourceReader(
                self.resolve(src.conn_id),
                src.segment_id,
                src.page_size,
                label=f"audience {cfg.name} (Customer.io segment {src.segment_id})",
            )
        ids = cfg.identifiers
        required = [c for c in (cfg.member_key, ids.email, ids.phone, ids.external_id, *ids.extra.values()) if c]
        return SqlSource(
            engine_for(self.resolve(src.conn_id)),
            loaded.sql_text(),
            window_params(as_of, src.windows),
            required,
            label=f"audience {cfg.name} ({src.sql_file or 'inline query'})",
            statement_timeout=src.statement_timeout,
            dialect=src.dialect,
        )

    def exclusion_sources(self, as_of: dt.datetime) -> dict[str, tuple[Source, str]]:
        """Each excluded audience's source, evaluated at the same point in time, with its member-key column."""
        return {
            name: (self.source_for(self.audiences.get(name), as_of), self.audiences.get(name).config.member_key)
            for name in self.cfg.exclusions
        }

    def destination(self, label: str) -> Destination:
        settings = self.cfg.destination(label)
        cls = destination_class(settings.type)
        return cls(self.cfg.name, settings, self.resolve(settings.conn_id or cls.default_conn_id))

    @contextmanager
    def destination_ctx(self, label: str) -> Iterator[Destination]:
        dest = self.destination(label)
        try:
            yield dest
        finally:
            dest.close()

    def _as_of(self, run_id: int) -> dt.datetime:
        with self.engine.connect() as conn:
            value = conn.execute(select(state.run.c.as_of).where(state.run.c.id == run_id)).scalar_one()
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)

    def _update_run(self, run_id: int, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(state.run).where(state.run.c.id == run_id).values(**values))

    def _heartbeat(self, holder: str) -> Callable[[], None]:
        """Renews this run's lease while a push drains; raises ``LeaseHeld`` once another run took it."""
        return functools.partial(lease.check, self.engine, self.cfg.name, holder)

    def _update_sync(self, sync_id: int, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(state.sync).where(state.sync.c.id == sync_id).values(**values))

    # -- steps -----------------------------------------------------------------------------------
    @_state_step("start")
    def start(self, holder: str, as_of: dt.datetime) -> int:
        lease.acquire(self.engine, self.cfg.name, holder)
        with self.engine.begin() as conn:
            # A retried stage task opens a new run; an earlier attempt that died before it could record
            # its failure (the state database was down) must not stay "running" forever.
            r, s = state.run, state.sync
            dead = select(r.c.id).where(
                r.c.audience == self.cfg.name, r.c.dag_run_id == holder, r.c.status == "running"
            )
            conn.execute(
                update(s)
                .where(s.c.run_id.in_(dead.scalar_subquery()), s.c.status.in_(_UNFINISHED))
                .values(
                    status=SUPERSEDED, error="superseded by a retry of the same DAG run", finished_at=state.utcnow()
                )
            )
            conn.execute(
                update(r)
                .where(r.c.id.in_(dead.scalar_subquery()))
                .values(status="failed", error="superseded by a retry of the same DAG run", finished_at=state.utcnow())
            )
            return state.inserted_id(
                conn.execute(
                    insert(state.run).values(
                        audience=self.cfg.name,
                        dag_run_id=holder,
                        as_of=as_of.astimezone(dt.UTC),
                        status="running",
                        started_at=state.utcnow(),
                    )
                )
            )

    @_state_step("stage")
    def stage(self, run_id: int, holder: str) -> StageStats:
        lease.check(self.engine, self.cfg.name, holder)
        as_of = self._as_of(run_id)
        try:
            stats = Stager(self.engine, self.cfg, run_id, self.stage_batch_size).stage(
                self.source_for(self.loaded, as_of), self.exclusion_sources(as_of)
            )
        except Exception as exc:
            self._update_run(run_id, status="failed", error=_error_text(exc), finished_at=state.utcnow())
            raise
        fields = stats.as_dict()
        self._update_run(run_id, stage_seconds=fields.pop("seconds"), **fields)
        return stats

    def _open_sync(self, run_id: int, label: str, mode: str) -> int:
        """A new sync of one destination; earlier ones left unfinished by a dead attempt become ``superseded``.

        The caller holds the audience's lease, so no other attempt is working on them: their batches,
        if any, are pushed by this sync's plan (``plan``), and their rows would otherwise say
        ``planning`` forever. ``mode`` is what ``do_sync.mode`` records: a ``SyncMode``, or ``dry_<mode>``.
        """
        settings = self.cfg.destination(label)
        s = state.sync
        with self.engine.begin() as conn:
            conn.execute(
                update(s)
                .where(s.c.audience == self.cfg.name, s.c.destination == label, s.c.status.in_(_UNFINISHED))
                .values(
                    status=SUPERSEDED,
                    error="superseded: its attempt ended without finishing; a later sync took over",
                    finished_at=state.utcnow(),
                )
            )
            return state.inserted_id(
                conn.execute(
                    insert(state.sync).values(
                        run_id=run_id,
                        audience=self.cfg.name,
                        destination=label,
                        destination_type=settings.type,
                        mode=str(mode),
                        status="planning",
                        started_at=state.utcnow(),
                    )
                )
            )

    def _plan(self, dest: Destination, label: str, sync_id: int, override_reason: str | None, mode: SyncMode) -> Plan:
        guard = self.cfg.destination(label).guard or self.cfg.guard
        return Planner(self.engine, self.cfg, dest, label).plan(
            sync_id, guard=guard, override_reason=override_reason, mode=mode
        )

    @_state_step("plan")
    def plan(
        self,
        run_id: int,
        label: str,
        holder: str,
        override_reason: str | None = None,
        mode: SyncMode = SyncMode.INCREMENTAL,
    ) -> Plan:
        """Plan one destination's diff (``incremental`` or ``full_resync``) and record it.

        Batches of an unfinished earlier sync (a killed worker, a vendor outage) are pushed here
        first, with their original idempotency keys, and this run's diff is planned after them.
        Resuming in the plan step, not in the push shards, keeps the shards independent: each one
        only drains batches of the plan it was mapped over, and none has to wait for the others
        before the diff can be planned again. A resume is rare and bounded by what was left over;
        the fresh diff is then sharded as usual.
        """
        lease.check(self.engine, self.cfg.name, holder)
        sync_id = self._open_sync(run_id, label, mode)
        try:
            with self.destination_ctx(label) as dest:
                plan = self._plan(dest, label, sync_id, override_reason, mode)
                if plan.resumed_batches:
                    self._update_sync(sync_id, status="resuming", resumed_batches=plan.resumed_batches)
                    resumed = PushResult()
                    pusher = Pusher(self.engine, self.cfg.name, label, dest)
                    pusher.drain(sync_id, resumed, heartbeat=self._heartbeat(holder))  # tallies: engine/push.py
                    self._update_sync(sync_id, push_seconds=resumed.seconds)
                    count, plan = plan.resumed_batches, self._plan(dest, label, sync_id, override_reason, mode)
                    plan.resumed_batches = count
        except Exception as exc:
            status = "guarded" if isinstance(exc, GuardTripped) else "failed"
            self._update_sync(
                sync_id,
                status=status,
                error=_error_text(exc),
                guard=str(exc) if status == "guarded" else None,
                finished_at=state.utcnow(),
            )
            raise
        self._update_sync(
            sync_id, status="planned", resumed_batches=plan.resumed_batches, shards_done=0, **_plan_fields(plan)
        )
        return plan

    @_state_step("push")
    def push(
        self, sync_id: int, label: str, holder: str, override_reason: str | None = None, shard: int | None = None
    ) -> PushResult:
        """Push the planned batches of one shard (``None``: every shard, in order) and commit what was accepted.

        Shards are mapped Airflow tasks running in parallel; each commits batch by batch on its own
        (the tallies are incremented in SQL, see ``engine/push.py``). The sync turns ``success`` once every
        shard has finished: ``do_sync.shards_done`` is a bitmask OR-ed in one UPDATE, so the order in
        which shards finish and task retries do not matter. A failing shard marks the sync ``failed``
        and ``finish`` reports it; its retry resumes that shard's batches with their keys. Planning
        (``override_reason`` included) happens in ``plan`` only; the argument stays for callers.
        """
        lease.check(self.engine, self.cfg.name, holder)
        with self.engine.connect() as conn:
            shards = conn.scalar(select(state.sync.c.shards).where(state.sync.c.id == sync_id)) or 1
        if shard is not None and not 0 <= shard < shards:
            raise ValueError(f"{self.cfg.name}/{label}: sync {sync_id} has {shards} push shards, not shard {shard}")
        result = PushResult()
        try:
            with self.destination_ctx(label) as dest:
                pusher = Pusher(self.engine, self.cfg.name, label, dest)
                pusher.drain(sync_id, result, shard=shard, heartbeat=self._heartbeat(holder))
                size = dest.size()
                acked = pusher.acked_size()
                in_doubt = pusher.pending_removals() if size is not None else 0
        except Exception as exc:
            where = f"push shard {shard} of {shards}: " if shard is not None and shards > 1 else ""
            self._update_sync(
                sync_id,
                status="failed",
                error=(where + _error_text(exc))[:2000],
                finished_at=state.utcnow(),
                push_seconds=func.coalesce(state.sync.c.push_seconds, 0) + result.seconds,
            )
            raise
        bits = (1 << shards) - 1 if shard is None else 1 << shard
        share = min_reported_share(self.cfg.drift_for(label).min_reported_share, dest)
        short = size_shortfall(self.cfg.name, label, size, acked, share, in_doubt)
        self._shards_done(sync_id, bits, shards, size, acked, result.seconds, short)
        if short:  # recorded first; the task fails (and alerts) instead of reporting success
            raise SizeMismatch(short)
        return result

    def _shards_done(
        self,
        sync_id: int,
        bits: int,
        shards: int,
        size: int | None,
        acked: int,
        seconds: float,
        short: str | None = None,
    ) -> None:
        """Mark shards finished; the last one to finish turns the sync ``success`` (one atomic UPDATE).
        ``short``: this shard found the destination far smaller than acknowledged (``size_shortfall``)."""
        s = state.sync
        done = func.coalesce(s.c.shards_done, 0).bitwise_or(literal(bits, BigInteger))
        complete = done == literal((1 << shards) - 1, BigInteger)
        if short:
            status: Any = literal(SIZE_MISMATCH)
            error: Any = literal(short[:2000])
        else:  # the latest reading decides: a retry that finds the size caught up clears a shortfall
            status = case((complete, "success"), else_=s.c.status)
            error = case((complete, null()), else_=s.c.error)
        self._update_sync(
            sync_id,
            shards_done=done,
            status=status,
            error=error,
            finished_at=state.utcnow(),
            destination_size=size,
            acked_size=acked,
            push_seconds=func.coalesce(s.c.push_seconds, 0) + seconds,
        )

    @_state_step("replace")
    def replace(self, run_id: int, label: str, holder: str) -> PushResult:
        """Swap the destination's whole audience for the desired members through its replace API.

        Unfinished incremental batches are superseded and dropped. Acknowledged state is rewritten only
        after the destination confirmed the replace, minus the rows it rejected.
        """
        lease.check(self.engine, self.cfg.name, holder)
        sync_id = self._open_sync(run_id, label, SyncMode.REPLACE)
        result = PushResult()
        started = dt.datetime.now(dt.UTC)
        try:
            with self.destination_ctx(label) as dest:
                if not dest.supports_replace:
                    raise ConfigurationError(
                        f"{dest.type_name} has no replace API; use mode full_resync for {label}",
                        next_step=REQUEST_NEXT_STEP,
                    )
                outcome, desired = Replacer(self.engine, self.cfg, dest, label).replace(sync_id)
                result.added = desired - len(outcome.rejected)
                result.rejected = len(outcome.rejected)
                result.received = outcome.received or 0
                result.matched = outcome.matched
                result.batches = 1
                size = dest.size()
        except Exception as exc:
            self._update_sync(sync_id, status="failed", error=_error_text(exc), finished_at=state.utcnow())
            raise
        result.seconds = round((dt.datetime.now(dt.UTC) - started).total_seconds(), 3)
        self._update_sync(
            sync_id,
            status="success",
            finished_at=state.utcnow(),
            desired=desired,
            planned_adds=desired,
            destination_size=size,
            acked_size=result.added,
            guard="not applicable: replace",
            **_push_fields(result),
        )
        return result

    @_state_step("dry run")
    def dry_run(
        self,
        holder: str,
        as_of: dt.datetime,
        mode: SyncMode = SyncMode.INCREMENTAL,
        destinations: list[str] | None = None,
    ) -> int:
        """Compute what a sync would do and change nothing: the source is staged under a shadow key,
        diffed read-only against the real acknowledged state, then the shadow is dropped. The report
        (counts and hashed sample keys per destination) is kept in ``do_sync.preview``."""
        shadow = f"dry:{self.cfg.name}"[:64]
        run_id = self.start(holder, as_of)
        try:
            shadow_cfg = self.cfg.model_copy(update={"name": shadow})
            stats = Stager(self.engine, shadow_cfg, run_id, self.stage_batch_size, record_changes=False).stage(
                self.source_for(self.loaded, as_of), self.exclusion_sources(as_of)
            )
            fields = stats.as_dict()
            self._update_run(run_id, stage_seconds=fields.pop("seconds"), **fields)
            for d in self.cfg.destinations:
                if destinations is not None and d.label not in destinations:
                    continue
                sync_id = self._open_sync(run_id, d.label, f"dry_{mode}"[:16])
                with self.destination_ctx(d.label) as dest:
                    preview = Planner(self.engine, self.cfg, dest, d.label, snapshot=shadow).preview(mode)
                preview["held_out"] = stats.held_out
                preview["identifier_issues"] = stats.identifier_issues
                self._update_sync(
                    sync_id,
                    status="success",
                    finished_at=state.utcnow(),
                    desired=preview["desired"],
                    planned_adds=preview["adds"],
                    planned_removes=preview["removes"],
                    changed=preview["changed"],
                    unmatchable=preview["unmatchable"],
                    preview=preview,
                    guard="dry run: nothing was changed",
                )
        finally:
            with self.engine.begin() as conn:
                for t in (state.member, state.exclusion, state.snapshot):
                    conn.execute(delete(t).where(t.c.audience == shadow))
            self._update_run(run_id, status="dry_run", finished_at=state.utcnow())
            lease.release(self.engine, self.cfg.name, holder)
        return run_id

    @_state_step("retirement")
    def retire(self, holder: str) -> int:
        """An explicit exit: remove every acknowledged member from every destination, once, and record it."""
        run_id = self.start(holder, state.utcnow())
        try:
            self._update_run(run_id, members=0)
            for d in self.cfg.destinations:
                try:
                    plan = self.plan(run_id, d.label, holder, "audience retired", mode=SyncMode.RETIRE)
                    self.push(plan.sync_id, d.label, holder, "audience retired")
                except Exception:  # recorded in do_sync; finish() reports it and the next attempt resumes
                    log.exception("%s/%s: retirement failed", self.cfg.name, d.label)
        finally:
            self.finish(run_id, holder)
        with self.engine.begin() as conn:
            for t in (state.member, state.exclusion, state.snapshot):
                conn.execute(delete(t).where(t.c.audience == self.cfg.name))
            changes.forget(conn, self.cfg.name)  # the snapshot is gone without a record: plans start over
            conn.execute(delete(state.lifecycle).where(state.lifecycle.c.audience == self.cfg.name))
            conn.execute(
                insert(state.lifecycle).values(
                    audience=self.cfg.name, status="retired", at=state.utcnow(), run_id=run_id
                )
            )
        return run_id

    @_state_step("finish")
    def finish(
        self, run_id: int, holder: str, expected: list[str] | None = None, causes: Sequence[BaseException] = ()
    ) -> dict[str, Any]:
        """Close the run record, release the lease, and raise ``RunFailed`` if any step failed.

        ``expected`` names the destinations this run was meant to sync (default: all of them); ``causes``
        are the errors its steps raised in this process, for the ``RunFailed``'s next step.
        """
        s = state.sync
        with self.engine.connect() as conn:
            run_row = conn.execute(select(state.run).where(state.run.c.id == run_id)).mappings().one()
            rows = conn.execute(
                select(s.c.destination, s.c.status, s.c.error, s.c.shards, s.c.shards_done)
                .where(s.c.run_id == run_id)
                .order_by(s.c.id)
            ).all()
        syncs = {d: (st, err, n, bits) for d, st, err, n, bits in rows}  # the latest attempt per destination counts
        labels = expected if expected is not None else [d.label for d in self.cfg.destinations]
        done = set(syncs)
        problems = [f"{d}: {st}: {_unfinished(*rest)}" for d, (st, *rest) in syncs.items() if st != "success"]
        problems += [f"{lbl}: did not run" for lbl in labels if lbl not in done and run_row["status"] != "failed"]
        if run_row["status"] == "failed":
            problems.insert(0, f"staging failed: {run_row['error']}")
        status = "failed" if problems else "success"
        self._update_run(
            run_id, status=status, finished_at=state.utcnow(), error="; ".join(problems)[:4000] if problems else None
        )
        lease.release(self.engine, self.cfg.name, holder)
        if problems:
            raise RunFailed(f"audience {self.cfg.name} run {run_id} failed: " + "; ".join(problems), causes)
        return {"run_id": run_id, "status": status}

    def run(
        self,
        holder: str,
        as_of: dt.datetime,
        override_reason: str | None = None,
        mode: SyncMode = SyncMode.INCREMENTAL,
        destinations: list[str] | None = None,
        parallel: int = 1,
    ) -> int:
        """All steps in one process; destinations fail independently, as under Airflow.

        ``parallel`` > 1 plans and pushes that many destinations at once, in threads, as the DAG's
        per-destination tasks run at once under the scheduler (each step uses its own connections).
        """
        run_id = self.start(holder, as_of)
        causes: list[BaseException] = []
        try:
            self.stage(run_id, holder)
            labels = [d.label for d in self.cfg.destinations if destinations is None or d.label in destinations]
            workers = min(parallel, len(labels), MAX_PARALLEL_DESTINATIONS)
            if workers > 1:
                with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="destination") as pool:
                    found = pool.map(lambda label: self._sync_one(run_id, label, holder, override_reason, mode), labels)
                    causes += [exc for exc in found if exc is not None]
            else:
                for label in labels:
                    exc = self._sync_one(run_id, label, holder, override_reason, mode)
                    if exc is not None:
                        causes.append(exc)
        except Exception as exc:
            log.exception("%s: staging failed", self.cfg.name)
            causes.append(exc)
        finally:
            self.finish(run_id, holder, destinations, causes)
        return run_id

    def _sync_one(
        self, run_id: int, label: str, holder: str, override_reason: str | None, mode: SyncMode
    ) -> Exception | None:
        """Plan and push (or replace) one destination; a failure is recorded in do_sync, reported by finish,
        and returned."""
        try:
            if mode == SyncMode.REPLACE:
                self.replace(run_id, label, holder)
                return None
            plan = self.plan(run_id, label, holder, override_reason, mode)
            self.push(plan.sync_id, label, holder, override_reason)
        except Exception as exc:
            log.exception("%s/%s failed", self.cfg.name, label)
            return exc
        return None


def min_reported_share(configured: float | None, dest: Destination) -> float:
    """The post-push size check's threshold: the audience's, or by default 0.5 where the destination's
    reported size is live and off where it lags behind uploads (Meta's and Google's estimates update
    hours to a day later, and a new list would fail its first sync); reconciliation's gap checks, a day
    later, guard those."""
    if configured is not None:
        return configured
    return LIVE_SIZE_MIN_SHARE if dest.reported_size_is_live else 0.0


def size_shortfall(
    audience: str, label: str, size: int | None, acked: int, min_share: float, in_doubt: int = 0
) -> str | None:
    """Why a destination reporting far fewer members than are acknowledged must not count as a success.

    A vendor that dedupes by idempotency key answers a batch whose key it has seen from its stored
    response, without applying it: state then records members the destination never received. Its
    own count, read right after the push, is the one outside witness. ``in_doubt``: acknowledged
    members whose removal is planned but not committed (other push shards, a lost answer), which the
    destination may no longer hold. ``None``: no shortfall, or the destination reports no size.
    """
    if size is None or not acked or min_share <= 0 or size >= (acked - in_doubt) * min_share:
        return None
    return (
        f"{audience}/{label}: the destination reports {size} members right after the push but {acked} are "
        f"acknowledged (below {min_share:.0%} of them): it may have answered batches from stored responses "
        f"without applying them (a state database restored from a backup, or another installation sharing "
        f"the vendor account), or it was emptied outside Data Out. Run a full resync of this destination "
        f'(operations DAG, conf {{"mode": "full_resync"}}); if its reported size lags behind uploads, lower '
        f"drift.min_reported_share for it."
    )


def _unfinished(error: str | None, shards: int | None, bits: int | None) -> str | None:
    """A failed or unfinished sync's error, saying which push shards did not finish when it was sharded."""
    if not shards or (shards == 1 and error):
        return error
    missing = [str(i) for i in range(shards) if not (bits or 0) >> i & 1]
    if not missing:
        return error
    where = f"push shard(s) {', '.join(missing)} of {shards} did not finish"
    return f"{where}; {error}" if error else where


def _plan_fields(plan: Plan) -> dict[str, Any]:
    return {
        "desired": plan.desired,
        "unmatchable": plan.unmatchable,
        "planned_adds": plan.adds,
        "planned_removes": plan.removes,
        "changed": plan.changed,
        "planned_refreshes": plan.refreshes,
        "guard": plan.guard,
        "plan_seconds": plan.seconds,
        "shards": plan.shards,
        "diffed_keys": plan.diffed_keys,
    }


def _push_fields(r: PushResult) -> dict[str, Any]:
    fields = asdict(r)
    fields["push_seconds"] = fields.pop("seconds")
    return fields
