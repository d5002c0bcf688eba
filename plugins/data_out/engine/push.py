"""Push planned batches and commit what the destination acknowledged.

The commit protocol, in order, for every batch:

1. the batch and its idempotency key were written by the planner before anything was sent;
2. ``attempts`` is incremented and the rows are read, in one committed transaction that finds the
   batch by number *and* key (numbers restart with every plan), then the batch is pushed;
3. in one transaction: the batch row is deleted first (a batch another worker committed meanwhile is
   gone: this commit then changes nothing), accepted rows move into ``do_ack`` (adds) or out of it
   (removes), rejected rows go to ``do_reject`` with a hashed key, the batch's pending rows are
   deleted and the sync's tallies (``do_sync.added`` ...) are incremented, so parallel push shards add
   up and nothing counts twice.

A crash between 2 and 3 leaves the batch pending; the next attempt pushes it again with the same key. A
webhook receiver deduplicates by the key as its contract asks (docs/webhooks.md); the ad platforms
ignore the key and apply the batch again, which changes nothing: an audience is a set, so adding a
member it holds or removing one it lacks is a no-op (Segment dedupes by ``messageId``). State therefore
only advances for what was acknowledged, and a rerun converges without duplicate adds or lost removes.

On Postgres, step 3 of one batch runs on a second connection while the next batch goes through step
2 (``_Pipeline``): commits stay in batch order, and at most one accepted batch waits for its
commit. The last remove batch is committed before the first add batch is read: a refused removal of a
member's old identity withdraws the add of its new one (``_commit``).

A pusher drains one push shard (a mapped Airflow task) or, with ``shard=None``, every shard in batch
order. Shards never share a member, so they commit independently and in any order.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Table, and_, delete, func, insert, literal, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement

from data_out import state
from data_out.chunking import chunks as _chunks
from data_out.destinations.base import IDENTITY_COLUMNS, BatchResult, Destination, MemberRow, Op
from data_out.destinations.oversize import push_within_limits
from data_out.engine import changes, faults, lease
from data_out.hashing import sha256_hex
from data_out.heap import frozen_heap

log = logging.getLogger(__name__)

#: a drain that moved at least this many acknowledged rows refreshes Postgres' statistics of ``do_ack``
ANALYZE_AFTER_ROWS = 10_000


@dataclass
class PushResult:
    added: int = 0
    removed: int = 0
    refreshed: int = 0
    rejected: int = 0
    batches: int = 0
    received: int = 0
    matched: int | None = None
    seconds: float = 0.0


def record_rejects(
    conn: Connection, sync_id: int, audience: str, label: str, op: Op, rejected: dict[str, str], now: dt.datetime
) -> None:
    """Row-level rejects with the member key hashed: the table must never hold a raw identifier."""
    rows = [
        {
            "sync_id": sync_id,
            "audience": audience,
            "destination": label,
            "op": op.value,
            "at": now,
            "member_key_sha256": sha256_hex(k),
            "reason": reason[:500],
        }
        for k, reason in rejected.items()
    ]
    for chunk in _chunks(rows, 5_000):
        conn.execute(insert(state.reject), chunk)


def acked_count(conn: Connection, audience: str, destination: str) -> int:
    """Acknowledged (not rejected) members of one destination, from the counter every commit keeps.

    The first call for a destination counts the table once and starts the counter; a replace drops it
    (``forget_acked_count``) and the next call counts again.
    """
    c, a = state.ack_count, state.ack
    mine = and_(c.c.audience == audience, c.c.destination == destination)
    value = conn.scalar(select(c.c.acked).where(mine))
    if value is not None:
        return int(value)
    n = state.scalar_int(
        conn,
        select(func.count()).where(a.c.audience == audience, a.c.destination == destination, a.c.rejected.is_(False)),
    )
    conn.execute(state.insert_ignore(conn.dialect, c).values(audience=audience, destination=destination, acked=n))
    return n


def mark_rejected(conn: Connection, audience: str, destination: str, keys: list[str]) -> None:
    """Keep refused adds as rejected acknowledgements: remembered, so they are not re-sent every run."""
    a = state.ack
    for chunk in _chunks(keys, 10_000):
        mine = a.c.audience == audience, a.c.destination == destination
        conn.execute(update(a).where(*mine, state.key_in(conn.dialect, a.c.member_key, chunk)).values(rejected=True))


def forget_acked_count(conn: Connection, audience: str, destination: str) -> None:
    c = state.ack_count
    conn.execute(delete(c).where(c.c.audience == audience, c.c.destination == destination))


class Pusher:
    def __init__(self, engine: Engine, audience: str, label: str, dest: Destination) -> None:
        self.engine = engine
        self.audience = audience
        self.label = label
        self.dest = dest
        #: add batches are inserted into ``do_ack`` without the delete before (``_acknowledge``) until one
        #: of them meets an acknowledged row
        self._inserts_first = True

    def _mine(self, table: Table) -> ColumnElement[bool]:
        return and_(table.c.audience == self.audience, table.c.destination == self.label)

    def drain(
        self,
        sync_id: int,
        result: PushResult,
        shard: int | None = None,
        heartbeat: Callable[[], None] | None = None,
        beat_every: float = lease.RENEW_EVERY.total_seconds(),
    ) -> None:
        """Push every pending batch of this (audience, destination), or of one of its shards, in order.

        On Postgres the commit of one batch overlaps the push of the next (``_Pipeline``); SQLite,
        which has one writer at a time, commits each batch before pushing the next. ``heartbeat``
        (renewing the run's lease, raising if it was lost) is called before a batch once ``beat_every``
        seconds have passed since the last call.
        """
        started = time.monotonic()
        self._inserts_first = True
        first_analyze = self._first_analyze()
        planned = self._planned(shard)
        beat = _Heartbeat(heartbeat, beat_every)
        # batches in flight outlive the young generations: keep collections off what the task imported
        with frozen_heap(), _Pipeline(self.engine.dialect.name == "postgresql") as pipeline:
            moved = self._push_planned(sync_id, result, planned, pipeline, beat, first_analyze)
        self._vacuum_after(moved)
        result.seconds = round(result.seconds + time.monotonic() - started, 3)

    def _first_analyze(self) -> int:
        """Moved rows after which ``do_ack``'s statistics are refreshed first.

        Statistics go stale when do_ack grows by a good share (a first sync), not by a quiet day's
        change to a large audience: each ANALYZE samples the table, half a second at 10M rows.
        """
        with self.engine.begin() as conn:
            acked = acked_count(conn, self.audience, self.label)
        return max(ANALYZE_AFTER_ROWS, acked // 10)

    def _planned(self, shard: int | None) -> list[tuple[int, str, str, int]]:
        """The batches to push, in order: every batch was planned before the first push, so the list is
        fixed for the whole drain."""
        b = state.batch
        where: list[ColumnElement[bool]] = [self._mine(b)]
        if shard is not None:
            where.append(b.c.shard == shard)
        query = select(b.c.batch_no, b.c.op, b.c.idempotency_key, b.c.rows).where(*where).order_by(b.c.batch_no)
        with self.engine.connect() as conn:
            return [(no, op, key, n) for no, op, key, n in conn.execute(query)]

    def _push_planned(
        self,
        sync_id: int,
        result: PushResult,
        planned: list[tuple[int, str, str, int]],
        pipeline: _Pipeline,
        heartbeat: _Heartbeat,
        next_analyze: int,
    ) -> int:
        """Push the planned batches one by one, each commit handed to ``pipeline``; returns the rows moved."""
        moved = 0
        previous: Op | None = None
        for batch_no, op_value, key, n in planned:
            op = Op(op_value)
            heartbeat.maybe()
            if previous is Op.REMOVE and op is not Op.REMOVE:
                # every removal's answer is in before the first add is read: a refused removal
                # withdraws the same member's add (``_commit``)
                pipeline.wait()
            previous = op
            pushed = self._push_one(batch_no, op, key)
            if pushed is None:  # committed meanwhile by another worker of this shard (a zombie task)
                continue
            rows, outcome = pushed
            pipeline.then(functools.partial(self._commit, sync_id, batch_no, op, key, rows, outcome, result))
            moved += n
            if moved >= next_analyze:  # do_ack grows fast during a first sync: keep its estimates honest
                pipeline.wait()
                state.analyze(self.engine, state.ack)
                next_analyze = moved * 2
        return moved

    def _vacuum_after(self, moved: int) -> None:
        """A first sync's millions of moved rows: vacuum both tables now; a usual day's few are left to
        autovacuum, since vacuuming a 10M-row table after a day's changes costs more than it saves."""
        if moved >= state.VACUUM_AFTER_ROWS:
            state.vacuum(self.engine, state.pending)
            state.vacuum(self.engine, state.ack, analyze=True)

    def _batch(self, batch_no: int, key: str) -> ColumnElement[bool]:
        """This batch of this plan: batch numbers start again at 0 with every plan, keys do not."""
        b = state.batch
        return and_(self._mine(b), b.c.batch_no == batch_no, b.c.idempotency_key == key)

    def _push_one(self, batch_no: int, op: Op, key: str) -> tuple[list[MemberRow], BatchResult] | None:
        """Step 2 of the protocol: count the attempt and read the rows (committed), then push the batch.

        ``None``: the batch is gone (another worker of the shard committed it) or left empty (its
        members' removals were refused). The attempt is counted in the transaction that reads the rows,
        so they are the rows of the plan that made ``key``, whatever a zombie worker does meanwhile.
        """
        b, p = state.batch, state.pending
        with self.engine.begin() as conn:
            if not conn.execute(update(b).where(self._batch(batch_no, key)).values(attempts=b.c.attempts + 1)).rowcount:
                return None
            rows = [
                MemberRow(*r)
                for r in conn.execute(
                    select(p.c.member_key, *[p.c[c] for c in IDENTITY_COLUMNS])
                    .where(self._mine(p), p.c.batch_no == batch_no)
                    .order_by(p.c.member_key)
                )
            ]
            if not rows:
                conn.execute(delete(b).where(self._batch(batch_no, key)))
                return None
        faults.point("push.before")
        sent = op if op is not Op.REFRESH or self.dest.distinguishes_refresh else Op.ADD
        outcome = push_within_limits(self.dest, sent, rows, key)  # a 413 splits the batch
        faults.point("push.accepted")  # the destination applied the batch; state does not know yet
        return rows, outcome

    def _commit(
        self,
        sync_id: int,
        batch_no: int,
        op: Op,
        key: str,
        rows: list[MemberRow],
        outcome: BatchResult,
        result: PushResult,
    ) -> None:
        """Move the batch from pending into acknowledged state: the added rows are copied from
        ``do_pending`` in SQL; only keys (to delete, and the usually empty rejected ones) come from Python.

        The batch row goes first: a second worker committing the same batch (a zombie task pushed it
        too, under the same key) waits for the first one's transaction, then finds it gone and changes
        nothing, instead of deleting the acknowledged rows the first one just wrote.
        """
        p = state.pending
        rejected = [r.member_key for r in rows if r.member_key in outcome.rejected]
        now = state.utcnow()
        with self.engine.begin() as conn:
            if not conn.execute(delete(state.batch).where(self._batch(batch_no, key))).rowcount:
                log.warning(
                    "%s/%s: batch %d was committed by another worker meanwhile; this commit changes nothing",
                    self.audience,
                    self.label,
                    batch_no,
                )
                return
            acked_delta = self._acknowledge(conn, sync_id, batch_no, op, rows, outcome, now, rejected)
            record_rejects(conn, sync_id, self.audience, self.label, op, outcome.rejected, now)
            if op is Op.REMOVE and rejected:
                self._keep_refused_removals(conn, rejected)
            conn.execute(delete(p).where(self._mine(p), p.c.batch_no == batch_no))
            c = state.ack_count
            conn.execute(update(c).where(self._mine(c)).values(acked=c.c.acked + acked_delta))
            conn.execute(_tally(sync_id, op, len(rows) - len(rejected), len(outcome.rejected), len(rows), outcome))
        faults.point("push.committed")
        _count(result, op, rows, outcome)
        log.info("%s/%s: batch %d (%s, %d rows) acknowledged", self.audience, self.label, batch_no, op.value, len(rows))

    def _acknowledge(
        self,
        conn: Connection,
        sync_id: int,
        batch_no: int,
        op: Op,
        rows: list[MemberRow],
        outcome: BatchResult,
        now: dt.datetime,
        rejected: list[str],
    ) -> int:
        """Write the batch's outcome into ``do_ack``; returns the change of the acknowledged count.

        An add of members new to the destination (a first sync: all of them) has no acknowledged row
        to replace, and the delete before the insert (``_end_acknowledged``) would look up every key
        of the batch for nothing. So an add batch is first inserted alone, in a savepoint: the primary
        key refuses it if any member already has a row (accepted or rejected), which rolls the
        savepoint back and replaces the rows the usual way, and so on for the rest of the drain, whose
        adds will likely meet acknowledged rows too (a full resync, changed identities). Either way
        the batch commits the same rows in the same transaction. Postgres logs the refused insert as
        a duplicate-key error, at most once per drain.
        """
        accepted = len(rows) - len(rejected)
        if op is Op.ADD and self._inserts_first:
            try:
                with conn.begin_nested():
                    self._acknowledge_adds(conn, sync_id, batch_no, now, rejected)
            except IntegrityError:
                self._inserts_first = False
                log.info(
                    "%s/%s: batch %d replaces acknowledged rows; adds delete them first from now on",
                    self.audience,
                    self.label,
                    batch_no,
                )
            else:
                return accepted
        delta = self._end_acknowledged(conn, op, rows, outcome)
        if op.adds:
            delta += accepted
            self._acknowledge_adds(conn, sync_id, batch_no, now, rejected)
        return delta

    def _end_acknowledged(self, conn: Connection, op: Op, rows: list[MemberRow], outcome: BatchResult) -> int:
        """Delete the acknowledged rows this batch replaces or ends; returns minus the accepted ones deleted.

        An add replaces the member's acknowledged row (accepted, or remembered as rejected so it is not
        re-sent every run); a remove ends it unless the destination refused the removal, which is then
        retried next run: a removal is never dropped. Keys as a list, not a subquery: primary-key lookups
        whatever the table statistics say.
        """
        a = state.ack
        touched = [r.member_key for r in rows if op.adds or r.member_key not in outcome.rejected]
        delta = 0
        for chunk in _chunks(touched, 10_000):
            ended = delete(a).where(self._mine(a), state.key_in(conn.dialect, a.c.member_key, chunk))
            was_rejected = conn.execute(ended.returning(a.c.rejected)).scalars()
            delta -= sum(1 for r in was_rejected if not r)
        return delta

    def _acknowledge_adds(
        self, conn: Connection, sync_id: int, batch_no: int, now: dt.datetime, rejected: list[str]
    ) -> None:
        """Copy the batch's rows from ``do_pending`` into ``do_ack`` in SQL, the refused ones kept as rejected;
        each row names the sync and batch that wrote it (the member lookup shows them)."""
        a, p = state.ack, state.pending
        conn.execute(
            insert(a).from_select(
                [
                    "audience",
                    "destination",
                    "member_key",
                    *IDENTITY_COLUMNS,
                    "rejected",
                    "acked_at",
                    "acked_sync",
                    "acked_batch",
                ],
                select(
                    p.c.audience,
                    p.c.destination,
                    p.c.member_key,
                    *[p.c[c] for c in IDENTITY_COLUMNS],
                    literal(False),
                    literal(now, a.c.acked_at.type),
                    literal(sync_id, a.c.acked_sync.type),
                    literal(batch_no, a.c.acked_batch.type),
                ).where(self._mine(p), p.c.batch_no == batch_no),
            )
        )
        mark_rejected(conn, self.audience, self.label, rejected)

    def _keep_refused_removals(self, conn: Connection, rejected: list[str]) -> None:
        """A refused removal stays acknowledged: the next plan must try it again.

        A member whose identity changed keeps its old one until then: its add of the new identity is
        withdrawn, since committing it would overwrite the acknowledged old identity the vendor still holds.
        """
        p = state.pending
        changes.record_refused(conn, self.audience, self.label, None, rejected)
        added = and_(self._mine(p), p.c.op != Op.REMOVE.value)
        for chunk in _chunks(rejected, 10_000):  # a batch holds each member once
            conn.execute(delete(p).where(added, state.key_in(conn.dialect, p.c.member_key, chunk)))

    def pending_removals(self) -> int:
        """Rows of this destination's remove batches not committed yet: other shards' still to come, or
        ones whose answer was lost after the destination applied them. Its size may lack them already."""
        b = state.batch
        with self.engine.connect() as conn:
            return state.scalar_int(conn, select(func.sum(b.c.rows)).where(self._mine(b), b.c.op == Op.REMOVE.value))

    def acked_size(self) -> int:
        with self.engine.begin() as conn:
            return acked_count(conn, self.audience, self.label)


class _Heartbeat:
    """Calls ``beat`` (renewing the run's lease) once ``every`` seconds have passed since the last call."""

    def __init__(self, beat: Callable[[], None] | None, every: float) -> None:
        self._beat = beat
        self._every = every
        self._last = time.monotonic()

    def maybe(self) -> None:
        if self._beat is not None and time.monotonic() - self._last >= self._every:
            self._beat()
            self._last = time.monotonic()


class _Pipeline:
    """Runs each batch's commit on a worker thread while the caller pushes the next batch.

    Why: at 10M members a batch's commit (deletes and inserts at random places in ``do_ack``) costs
    about as much as its push, and the two wait on different servers. The protocol holds: a batch is
    committed only after the destination accepted it, commits run one at a time in batch order (a
    member's remove commits before its add), and at most one accepted batch waits for its commit, so a
    crash leaves at most two batches pending that the destination applied, which the next run replays
    under their idempotency keys as after any crash between push and commit. A commit's error surfaces
    at the next ``then`` or ``wait``. ``overlap=False`` commits in the caller's thread at once.
    """

    def __init__(self, overlap: bool) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="push-commit") if overlap else None
        self._inflight: Future[None] | None = None

    def then(self, commit: Callable[[], None]) -> None:
        self.wait()  # the previous batch's commit first
        if self._pool is None:
            commit()
        else:
            self._inflight = self._pool.submit(commit)

    def wait(self) -> None:
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            inflight.result()

    def __enter__(self) -> _Pipeline:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        try:
            if exc is None:
                self.wait()
            elif self._inflight is not None:
                # a later push failed: the batch before it was accepted, so its commit still completes;
                # the push's error is the one to raise
                try:
                    self.wait()
                except Exception as commit_exc:
                    log.warning(
                        "committing the batch before the failed push (%s) failed too: %s",
                        type(exc).__name__,
                        type(commit_exc).__name__,
                    )
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)


def _tally(sync_id: int, op: Op, accepted: int, rejected: int, sent: int, outcome: BatchResult) -> Any:
    """Increment the sync's counters by one batch, in SQL: shards pushing at once never lose an update."""
    s = state.sync

    def plus(col: Any, n: int) -> Any:
        return func.coalesce(col, 0) + n

    values = {
        "added": plus(s.c.added, accepted if op is Op.ADD else 0),
        "removed": plus(s.c.removed, accepted if op is Op.REMOVE else 0),
        "refreshed": plus(s.c.refreshed, accepted if op is Op.REFRESH else 0),
        "rejected": plus(s.c.rejected, rejected),
        "batches": plus(s.c.batches, 1),
        "received": plus(s.c.received, outcome.received if outcome.received is not None else sent),
    }
    if outcome.matched is not None:
        values["matched"] = plus(s.c.matched, outcome.matched)
    return update(s).where(s.c.id == sync_id).values(**values)


def _count(result: PushResult, op: Op, rows: list[MemberRow], outcome: BatchResult) -> None:
    """Add one committed batch to this task's own result (the sync's shared tallies are ``_tally``)."""
    refused = len(outcome.rejected)
    result.batches += 1
    result.rejected += refused
    result.received += outcome.received if outcome.received is not None else len(rows)
    if outcome.matched is not None:
        result.matched = (result.matched or 0) + outcome.matched
    if op is Op.ADD:
        result.added += len(rows) - refused
    elif op is Op.REFRESH:
        result.refreshed += len(rows) - refused
    else:
        result.removed += len(rows) - refused
