"""Set-based diffs: what a destination should have versus what it has acknowledged.

The diff is computed in SQL (anti-joins over indexed tables), numbered into batches and written to
``do_pending``/``do_batch`` in one transaction before anything is pushed. A destination that holds
nobody yet (its first sync) skips the diff: every desired member is an add, numbered straight from the
snapshot. Removes are planned before
adds so that a member whose identifiers changed loses the old hashes before gaining the new ones.
The mass-removal guard runs inside that transaction and rolls the plan back when it trips.

Large diffs are split into push shards by a hash of the member key (``shards.py``), so Airflow can
push them as parallel mapped tasks. All of one member's rows land in one shard, and within a shard
every remove batch comes before every add batch. Batch numbers stay unique per (audience,
destination): batch ``r`` of shard ``s`` out of ``n`` is number ``r * n + s``, and adds start at the
round after the longest shard's removes, so ordering by number is remove-then-add overall as well.
A full resync's re-sends of members acknowledged exactly as desired come last, as refreshes
(``Op.REFRESH``): an add for lists and tables, but no second "entered" event for an event stream.

A destination whose members expire (``Destination.membership_lifetime_days``: Google Customer Match
drops a member 540 days after its last upload) gets refreshes in incremental plans too: acknowledged
members older than ``refresh_at_share`` of the lifetime, oldest first, at most a day's share of the
list (``RefreshPolicy``), so a list uploaded in one day is refreshed over many. Their commit renews
``do_ack.acked_at``, which is how old each acknowledgement is.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Engine,
    Integer,
    Select,
    String,
    Table,
    and_,
    case,
    cast,
    delete,
    exists,
    false,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    text,
    true,
    union_all,
    update,
)
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import FromClause

from data_out import state
from data_out.config import AudienceConfig
from data_out.destinations.base import IDENTITY_COLUMNS, BatchResult, Destination, GuardSettings, MemberRow, Op
from data_out.engine import changes, faults, shards
from data_out.engine.holdout import holdout_threshold
from data_out.engine.push import acked_count, forget_acked_count, mark_rejected, record_rejects
from data_out.engine.shards import member_key_hash, shard_count
from data_out.errors import GUARD_NEXT_STEP, TerminalError
from data_out.hashing import sha256_hex
from data_out.modes import SyncMode

log = logging.getLogger(__name__)


class GuardTripped(TerminalError):
    """The planned diff looks like a broken source; nothing was planned. The message says how to override."""

    next_step = GUARD_NEXT_STEP


@dataclass
class Plan:
    sync_id: int
    desired: int = 0
    unmatchable: int = 0
    acked: int = 0
    adds: int = 0
    removes: int = 0
    changed: int = 0
    batches: int = 0
    shards: int = 1
    resumed_batches: int = 0
    guard: str = "passed"
    #: acknowledged members re-sent before their membership expires (``RefreshPolicy``)
    refreshes: int = 0
    #: members diffed when only those changed since the destination's mark were (changes.py); None: all
    diffed_keys: int | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class RefreshPolicy:
    """When a destination's acknowledged members are re-sent before they expire, and how many at once.

    A member is due once ``due_after`` has passed since its last acknowledgement. Due members are
    spread over ``spread_days`` (half the time between due and expiry, leaving the other half for
    missed runs): the refreshes planned within any 24 hours stay within ``ceil(acked / spread_days)``
    whatever the schedule, so a list uploaded in one day is not re-sent in one day. Members older than
    ``urgent_after`` (the last quarter before expiry: runs were missed, or run less than daily) go
    whatever the day's share, since an expired member is gone from the audience.
    """

    lifetime_days: int
    due_after: dt.timedelta
    urgent_after: dt.timedelta
    spread_days: float

    def daily_budget(self, acked: int) -> int:
        return math.ceil(acked / self.spread_days)


def refresh_policy(dest: Destination) -> RefreshPolicy | None:
    """The destination's refresh policy, or ``None`` when its members never expire."""
    days = dest.lifetime_days
    if days is None:
        return None
    due = days * dest.refresh_at_share
    window = days - due
    return RefreshPolicy(
        lifetime_days=days,
        due_after=dt.timedelta(days=due),
        urgent_after=dt.timedelta(days=days - window / 4),
        spread_days=max(1.0, window / 2),
    )


def group_filter(cfg: AudienceConfig, include: str, m: Any) -> Any:
    """Which snapshot rows a destination including ``include`` (targeted, holdout, all) may desire."""
    if not cfg.holdout:
        return literal(True) if include != "holdout" else false()
    thr = holdout_threshold(cfg.holdout.percent)
    if include == "holdout":
        return m.c.bucket < thr
    if include == "targeted":
        return or_(m.c.bucket.is_(None), m.c.bucket >= thr)
    return literal(True)


def desired_select(
    cfg: AudienceConfig,
    dest: Destination,
    *,
    matchable: bool | None = True,
    snapshot: str | None = None,
    empty: bool = False,
    exclusions: bool = True,
) -> Select:
    """Members this destination should hold, projected onto the acknowledged-state columns.

    ``snapshot`` reads another snapshot key than the audience's own (a dry run stages under a shadow
    key); ``empty`` desires nobody (an audience being retired); ``exclusions=False`` leaves out the
    test against excluded keys, for a caller that saw there are none (a probe per member saved).
    """
    key = snapshot or cfg.name
    m, x = state.member, state.exclusion
    include = dest.settings.include
    thr = holdout_threshold(cfg.holdout.percent) if cfg.holdout else 0
    cols = []
    for col in IDENTITY_COLUMNS:
        expr: ColumnElement[Any]
        if col == "in_holdout":
            expr = (
                case((m.c.bucket < thr, True), else_=False) if include == "all" else cast(null(), state.ack.c[col].type)
            )
        elif col in dest.identity_columns:
            expr = m.c[dest.identity_columns[col]]
        else:
            expr = cast(null(), state.ack.c[col].type)  # typed NULL: Postgres will not compare text to bool
        cols.append(expr.label(col))
    conditions = [m.c.audience == key, group_filter(cfg, include, m)]
    if exclusions:
        conditions.append(~exists().where(x.c.audience == key, x.c.member_key == m.c.member_key))
    if empty:
        conditions.append(false())
    has_any = any_present(m.c, dest.identity_columns.values())
    if has_any is not None and matchable is not None:  # None: matchable or not, both
        conditions.append(has_any if matchable else ~has_any)
    return select(m.c.member_key, *cols).where(*conditions)


def any_present(columns: Any, names: Iterable[str]) -> Any | None:
    """At least one of these identifier columns is set: what makes a member matchable (``None``: none asked for)."""
    wanted = list(names)
    return or_(*[columns[c].is_not(None) for c in wanted]) if wanted else None


def _delta_table(conn: Connection) -> Table:
    """A session-local table for one plan's differences: ``d_*`` desired identity, ``k_*`` acknowledged."""
    ident = [Column(f"{side}_{c}", state.ack.c[c].type) for side in ("d", "k") for c in IDENTITY_COLUMNS]
    return state.temp_table(
        conn,
        "do_plan_delta",
        Column("member_key", String(256), nullable=False),
        Column("in_d", Boolean, nullable=False),
        Column("in_k", Boolean, nullable=False),
        Column("rejected", Boolean, nullable=False),
        Column("differs", Boolean, nullable=False),
        *ident,
    )


def _diff_conditions(t: Any, mode: SyncMode) -> tuple[Any, Any, Any]:
    """Over a delta table's columns: rows to remove, rows to add, members whose identity changed."""
    to_remove = and_(t.in_k, t.rejected.is_(False), or_(t.in_d.is_(False), t.differs))
    to_add = t.in_d if mode == SyncMode.FULL_RESYNC else and_(t.in_d, or_(t.in_k.is_(False), t.differs))
    changed = and_(t.in_d, t.in_k, t.rejected.is_(False), t.differs)
    return to_remove, to_add, changed


def _op_groups(t: Any, mode: SyncMode, refreshes: Select | None) -> list[tuple[Op, Select]]:
    """The delta's rows to write, per operation, in push order: removes, adds, then refreshes.

    A full resync re-sends members acknowledged exactly as desired as refreshes, which an event
    stream tells apart from adds; an incremental plan's refreshes are re-sent from ``do_ack``.
    """
    to_remove, to_add, _ = _diff_conditions(t, mode)
    removes = select(t.member_key, *[t[f"k_{c}"].label(c) for c in IDENTITY_COLUMNS]).where(to_remove)
    adds = select(t.member_key, *[t[f"d_{c}"].label(c) for c in IDENTITY_COLUMNS]).where(to_add)
    groups = [(Op.REMOVE, removes), (Op.ADD, adds)]
    if mode == SyncMode.FULL_RESYNC:
        unchanged = and_(t.in_k, t.rejected.is_(False), t.differs.is_(False))
        groups = [(Op.REMOVE, removes), (Op.ADD, adds.where(~unchanged)), (Op.REFRESH, adds.where(unchanged))]
    if refreshes is not None:
        groups.append((Op.REFRESH, refreshes))
    return groups


def count_desired(conn: Connection, cfg: AudienceConfig, dest: Destination) -> int:
    return state.scalar_int(conn, select(func.count()).select_from(desired_select(cfg, dest).subquery()))


def _keys_table(conn: Connection, dirty: Select) -> Table:
    """The changed keys to diff, and whether each left the snapshot (``changes.dirty_keys``), in a
    session-local table with statistics (so lookups use the indexes).

    They are stored in key order, the order of both primary-key indexes the plan looks them up in:
    consecutive lookups then share index pages (and snapshot pages, which staging writes in key order
    too), where lookups in hash order would each touch a page of their own.
    """
    table = state.temp_table(
        conn,
        "do_plan_keys",
        Column("member_key", String(256), primary_key=True),
        Column("gone", Boolean, nullable=False),
    )
    keys = dirty.subquery("dirty")
    key, gone = keys.c
    conn.execute(insert(table).from_select(["member_key", "gone"], select(key, gone).order_by(key)))
    state.analyze_temp(conn, table)
    return table


def _differs(a: Any, b: Any) -> Any:
    return or_(*[a.c[c].is_distinct_from(b.c[c]) for c in IDENTITY_COLUMNS])


def plan_nonce() -> str:
    """The random part of one plan's idempotency keys (64 bits), drawn when the plan is written."""
    return secrets.token_hex(8)


def idempotency_key(audience: str, destination: str, sync_id: int, batch_no: int, nonce: str) -> str:
    """One planned batch's key, stored with the batch: a replay after a crash presents the same key.

    Sequence ids alone repeat: a state database restored from a backup, or a second installation
    (staging and production) sharing a vendor account, numbers its syncs and batches again from the
    same values, and a vendor that dedupes by key would answer the new batch from the stored response
    of the old one without applying it. ``nonce`` (``plan_nonce``, drawn per plan) makes keys unique
    across databases; the readable part still says which audience, destination and batch it was.
    """
    digest = sha256_hex(f"{audience}\x1f{destination}\x1f{sync_id}\x1f{batch_no}")
    return f"do-{digest[:32]}-{nonce}"


def has_pending(conn: Connection, audience: str, destination: str) -> int:
    b = state.batch
    return state.scalar_int(conn, select(func.count()).where(b.c.audience == audience, b.c.destination == destination))


class Planner:
    """Plans one destination's diff. Modes: ``incremental``, ``full_resync`` (re-send everyone desired),
    ``retire`` (desire nobody: remove every acknowledged member once)."""

    def __init__(
        self,
        engine: Engine,
        cfg: AudienceConfig,
        dest: Destination,
        label: str,
        snapshot: str | None = None,
        rows_per_shard: int | None = None,
    ) -> None:
        self.engine = engine
        self.cfg = cfg
        self.dest = dest
        self.label = label
        self.snapshot = snapshot
        self.rows_per_shard = rows_per_shard

    def preview(self, mode: SyncMode, samples: int = 5) -> dict[str, Any]:
        """What ``plan`` would write, from the same delta, then rolled back: counts and a few hashed keys."""
        with self.engine.connect() as conn:  # never committed: a dry run changes nothing
            delta = _delta_table(conn)
            self._fill_delta(conn, delta, mode)
            t = delta.c
            to_remove, to_add, changed = _diff_conditions(t, mode)
            sides = Plan(0)
            self._count_sides(conn, sides, mode)
            if mode == SyncMode.INCREMENTAL:  # what the day's refreshes would be (``sides.refreshes``)
                self._refreshes(conn, sides, delta, dry=True)

            def count(cond: Any) -> int:
                return state.scalar_int(conn, select(func.count()).select_from(delta).where(cond))

            def sample(cond: Any) -> list[str]:
                keys = conn.execute(select(t.member_key).where(cond).order_by(t.member_key).limit(samples)).scalars()
                return [sha256_hex(k)[:16] for k in keys]

            out = {
                "desired": sides.desired,
                "acked": sides.acked,
                "adds": count(to_add),
                "removes": count(to_remove),
                "changed": count(changed),
                "refreshes": sides.refreshes,
                "unmatchable": sides.unmatchable,
                "sample_adds": sample(to_add),
                "sample_removes": sample(to_remove),
            }
            delta.drop(conn)
            conn.rollback()
        return out

    def plan(
        self,
        sync_id: int,
        *,
        guard: GuardSettings,
        override_reason: str | None = None,
        mode: SyncMode = SyncMode.INCREMENTAL,
    ) -> Plan:
        """Write the diff as pending batches, unless batches of an unfinished earlier sync are waiting.

        Those must be pushed first with their original idempotency keys (see ``engine/push.py``); the
        runner's plan step does that and then plans again, so one run still converges.
        """
        started = time.monotonic()
        plan = Plan(sync_id)
        with self.engine.begin() as conn:
            # The first statement writes (a no-op on the sync's own row), so SQLite takes its write lock
            # now, waiting its turn, instead of failing to upgrade a read snapshot that another
            # audience's commit made stale ("database is locked" without any wait).
            s = state.sync
            conn.execute(update(s).where(s.c.id == sync_id).values(status=s.c.status))
            plan.resumed_batches = has_pending(conn, self.cfg.name, self.label)
            if plan.resumed_batches:
                log.info(
                    "%s/%s: %d batches of an unfinished sync will be pushed first",
                    self.cfg.name,
                    self.label,
                    plan.resumed_batches,
                )
                plan.guard = "deferred: resuming unfinished batches"
            else:
                self._write_plan(conn, plan, guard, override_reason, mode)
        if plan.batches:  # the pushes read do_pending batch by batch
            state.analyze(self.engine, state.pending)
        plan.seconds = round(time.monotonic() - started, 3)
        return plan

    def _write_plan(
        self, conn: Connection, plan: Plan, guard: GuardSettings, override_reason: str | None, mode: SyncMode
    ) -> None:
        """``incremental`` sends the difference; ``full_resync`` re-sends every desired member as an add.

        The desired members and the acknowledged ones meet in ONE full join, whose differences (only
        those: a handful of rows on a quiet day) land in a temporary table; every count, the rejected
        acks to forget and the numbered removes and adds are then read from that small table. At 10M
        members this is one pass over the snapshot and the ack table instead of one per figure.
        """
        aud, label = self.cfg.name, self.label
        shape = changes.shape(self.cfg, self.dest)
        upto = changes.latest(conn, aud, label)
        own = self.snapshot is None  # a shadow snapshot (dry run) neither uses nor moves the mark
        keys = self._changed_keys(conn, plan, shape, upto) if own and mode == SyncMode.INCREMENTAL else None
        delta: Table | None = None
        groups: list[tuple[Op, Select]]
        if keys is None and mode != SyncMode.RETIRE and not self._holds_any(conn):
            groups = self._everyone_added(conn, plan, mode)
        else:
            delta = _delta_table(conn)
            self._fill_delta(conn, delta, mode, keys)
            self._forget_rejected(conn, delta)
            self._count_delta(conn, plan, delta, mode)
            # a full resync re-sends everyone anyway; a retirement and a dry run's shadow refresh nobody
            refreshes = self._refreshes(conn, plan, delta) if own and mode == SyncMode.INCREMENTAL else None
            groups = _op_groups(delta.c, mode, refreshes)
        plan.shards = shard_count(
            plan.removes + plan.adds + plan.refreshes,
            self.dest.push_shard_limit,
            self.rows_per_shard or shards.ROWS_PER_SHARD,
        )
        planned = plan.removes + plan.adds + plan.refreshes
        if delta is None:  # the adds are the rows written; the count they were sharded by is staging's
            plan.adds = planned = self._write_pending(conn, groups, plan.shards)[0]
        else:
            if planned:  # a quiet day plans nothing: no need to read do_pending's pages that earlier pushes emptied
                self._write_pending(conn, groups, plan.shards)
            delta.drop(conn)
        if keys is not None:
            keys.drop(conn)
        # a retirement is an explicit exit: the guard's question ("is the source broken?") does not apply
        if mode != SyncMode.RETIRE:
            peak = self._peak_acked(conn, plan, guard.removal_window_days)
            plan.guard = self._guard(plan, guard, override_reason, peak)  # raises before commit: plan rolled back
        else:
            plan.guard = "not applicable: retiring the audience"
        plan.batches = self._write_batches(conn, plan.sync_id, plan.shards) if planned else 0
        # acknowledged plus pending now equals desired as of change ``upto``: the next plan starts there
        if own and mode == SyncMode.RETIRE:  # the destination is being emptied: whatever comes next plans in full
            changes.forget(conn, aud, label)
        elif own:
            changes.set_mark(conn, aud, label, upto, shape, plan.sync_id)
        faults.point("plan.written")  # inside the plan transaction, before it commits

    def _changed_keys(self, conn: Connection, plan: Plan, shape: str, upto: int) -> Table | None:
        """The members changed since the destination's mark, in a temporary table; ``None``: diff them all.

        Sets ``plan.diffed_keys``. On Postgres it also turns JIT off for the rest of the transaction: key
        lookups from here on, which Postgres would compile with JIT, a cost that only pays over
        whole-table scans (docs/decisions/jit-off-for-plans.md).
        """
        dirty = changes.dirty_keys(conn, self.cfg.name, self.label, shape, upto)
        if dirty is None:
            return None
        keys = _keys_table(conn, dirty)
        plan.diffed_keys = state.scalar_int(conn, select(func.count()).select_from(keys))
        if conn.dialect.name == "postgresql":
            conn.execute(text("SET LOCAL jit = off"))
        return keys

    def _holds_any(self, conn: Connection) -> bool:
        """Whether the destination has any acknowledged row, accepted or rejected (one primary-key probe)."""
        a = state.ack
        mine = and_(a.c.audience == self.cfg.name, a.c.destination == self.label)
        return conn.execute(select(a.c.member_key).where(mine).limit(1)).first() is not None

    def _everyone_added(self, conn: Connection, plan: Plan, mode: SyncMode) -> list[tuple[Op, Select]]:
        """The plan of a destination that holds nobody yet (a first sync): every desired member is an add.

        The full join with the acknowledged side could only find nothing there, so the desired rows
        are numbered straight from the snapshot, without the delta table: at 10M members that table is
        a copy of the whole audience, written and read back. Nothing is removed, changed, forgotten or
        refreshed; the shards are sized by the desired count staging took for this destination, and
        ``plan.adds`` is then the rows written (``_write_plan``).
        """
        self._count_sides(conn, plan, mode)
        plan.adds = plan.desired
        return [(Op.ADD, self._desired(conn, mode))]

    def _desired(self, conn: Connection, mode: SyncMode) -> Select:
        """The members this destination should hold, for this plan's snapshot and mode."""
        # inside the plan's transaction, after staging (which holds the lease) wrote the exclusions
        excluding = state.has_exclusions(conn, self.snapshot or self.cfg.name)
        return desired_select(
            self.cfg, self.dest, snapshot=self.snapshot, empty=mode == SyncMode.RETIRE, exclusions=excluding
        )

    def _forget_rejected(self, conn: Connection, delta: Table) -> None:
        """Rejected adds whose member left, or whose identity changed, are forgotten without a push: the
        destination never held them. A changed identity is then planned as a fresh add."""
        a, t = state.ack, delta.c
        forget = select(t.member_key).where(t.rejected, or_(t.in_d.is_(False), t.differs))
        mine = and_(a.c.audience == self.cfg.name, a.c.destination == self.label)
        conn.execute(delete(a).where(mine, a.c.member_key.in_(forget)))

    def _count_delta(self, conn: Connection, plan: Plan, delta: Table, mode: SyncMode) -> None:
        """The plan's figures: both sides' sizes, then removes, adds and changed identities from the delta,
        in one read of it (a first sync's delta is the whole audience)."""
        to_remove, to_add, changed = _diff_conditions(delta.c, mode)
        self._count_sides(conn, plan, mode)
        counts = select(*[func.count().filter(cond) for cond in (to_remove, to_add, changed)]).select_from(delta)
        plan.removes, plan.adds, plan.changed = (int(n or 0) for n in conn.execute(counts).one())

    def _pending_mine(self) -> ColumnElement[bool]:
        p = state.pending
        return and_(p.c.audience == self.cfg.name, p.c.destination == self.label)

    def _write_pending(self, conn: Connection, groups: list[tuple[Op, Select]], n: int) -> list[int]:
        """Number each group's rows into batches of ``n`` shards and write them to ``do_pending``;
        returns how many rows each group wrote.

        Each group starts at the round after the longest shard's previous one, so ordering by batch
        number is remove-then-add (then refresh) in every shard and overall.
        """
        p = state.pending
        cols = ["audience", "destination", "op", "member_key", "batch_no", *IDENTITY_COLUMNS]
        first_round = 0
        written = []
        for op, rows in groups:
            numbered = insert(p).from_select(cols, self._numbered(rows.subquery(), op, n, first_round))
            # SQLAlchemy reports an INSERT's rowcount only when asked to keep it
            written.append(conn.execute(numbered.execution_options(preserve_rowcount=True)).rowcount)
            last = conn.scalar(select(func.max(p.c.batch_no)).where(self._pending_mine()))
            first_round = 0 if last is None else last // n + 1
        return written

    def _write_batches(self, conn: Connection, sync_id: int, n: int) -> int:
        """One ``do_batch`` row per numbered batch, each with its idempotency key; returns how many."""
        p = state.pending
        aud, label = self.cfg.name, self.label
        batches = conn.execute(
            select(p.c.batch_no, p.c.op, func.count())
            .where(self._pending_mine())
            .group_by(p.c.batch_no, p.c.op)
            .order_by(p.c.batch_no)
        ).all()
        if batches:
            nonce = plan_nonce()
            conn.execute(
                insert(state.batch),
                [
                    {
                        "audience": aud,
                        "destination": label,
                        "batch_no": no,
                        "op": op,
                        "rows": rows,
                        "idempotency_key": idempotency_key(aud, label, sync_id, no, nonce),
                        "planned_by": sync_id,
                        "attempts": 0,
                        "shard": no % n,
                        "shards": n,
                    }
                    for no, op, rows in batches
                ],
            )
        return len(batches)

    def _refreshes(self, conn: Connection, plan: Plan, delta: Table, dry: bool = False) -> Select | None:
        """Acknowledged members to re-send before they expire, oldest first, within today's share.

        Only members the plan does not touch otherwise: an acknowledged member outside the delta is
        desired exactly as acknowledged (the plan mark's invariant, or the full diff), so it is re-sent
        from ``do_ack`` as it stands. Sets ``plan.refreshes``; ``None``: nothing to refresh. ``dry``: a
        dry run's preview counts them, quietly.
        """
        policy = refresh_policy(self.dest)
        if policy is None or not plan.acked:
            return None
        a, s = state.ack, state.sync
        now = state.utcnow()
        mine = and_(a.c.audience == self.cfg.name, a.c.destination == self.label, a.c.rejected.is_(False))
        due = and_(mine, a.c.acked_at <= now - policy.due_after)
        if conn.execute(select(a.c.member_key).where(due).limit(1)).first() is None:
            return None  # the usual day: one probe of the age index
        if conn.dialect.name == "postgresql":  # an anti-join
            untouched: Any = ~exists().where(delta.c.member_key == a.c.member_key)
        else:  # SQLite builds the list once instead of scanning the delta per member
            untouched = a.c.member_key.not_in(select(delta.c.member_key))
        recent = and_(
            s.c.audience == self.cfg.name,
            s.c.destination == self.label,
            s.c.id != plan.sync_id,
            s.c.started_at > now - dt.timedelta(days=1),
        )
        spent = state.scalar_int(conn, select(func.sum(s.c.planned_refreshes)).where(recent))
        urgent = state.scalar_int(
            conn, select(func.count()).where(due, untouched, a.c.acked_at <= now - policy.urgent_after)
        )
        cap = max(policy.daily_budget(plan.acked) - spent, urgent)
        if cap <= 0:
            return None
        rows = (
            select(a.c.member_key, *[a.c[c] for c in IDENTITY_COLUMNS])
            .where(due, untouched)
            .order_by(a.c.acked_at, a.c.member_key)
            .limit(cap)
        )
        plan.refreshes = state.scalar_int(conn, select(func.count()).select_from(rows.subquery()))
        if plan.refreshes and not dry:
            log.info(
                "%s/%s: %d members acknowledged over %s days ago are refreshed before their %d-day membership ends",
                self.cfg.name,
                self.label,
                plan.refreshes,
                f"{policy.due_after.total_seconds() / 86400:g}",
                policy.lifetime_days,
            )
        return rows if plan.refreshes else None

    def _fill_delta(self, conn: Connection, delta: Table, mode: SyncMode, keys: Table | None = None) -> None:
        """One full join of desired (``d``) and acknowledged (``k``, rejected ones too) members.

        With ``keys`` (the members changed since the destination's mark), both sides are looked up
        by those keys only, the snapshot only for keys not known to have left it. On Postgres that is
        a LATERAL join driven by the keys, so a few thousand changes cost as many primary-key lookups:
        a plain ``IN`` lets the planner prefer scanning the whole audience, since its cost model
        cannot know the snapshot is hot in cache. SQLite, which has no LATERAL, always looks an ``IN``
        list up through the primary key.
        """
        a, m = state.ack, state.member
        desired = self._desired(conn, mode)
        acked = select(a).where(a.c.audience == self.cfg.name, a.c.destination == self.label)
        source: Any
        d: FromClause
        k: FromClause
        if keys is not None and conn.dialect.name == "postgresql":
            kk = keys.alias("kk")
            # LIMIT 1 (each side has at most one row per key anyway) keeps the planner from pulling
            # the subqueries up into a join over the whole table
            # a key staging saw leave is not looked up: the snapshot no longer has it
            d = desired.where(m.c.member_key == kk.c.member_key, kk.c.gone.is_(False)).limit(1).lateral("d")
            k = acked.where(a.c.member_key == kk.c.member_key).limit(1).lateral("k")
            source = kk.outerjoin(d, true()).outerjoin(k, true())
        else:
            if keys is not None:
                desired = desired.where(m.c.member_key.in_(select(keys.c.member_key).where(keys.c.gone.is_(False))))
                acked = acked.where(a.c.member_key.in_(select(keys.c.member_key)))
            d, k = desired.subquery("d"), acked.subquery("k")
            source = d.join(k, k.c.member_key == d.c.member_key, full=True)
        in_d, in_k = d.c.member_key.is_not(None), k.c.member_key.is_not(None)
        differs = and_(in_d, in_k, _differs(d, k))

        def rows_from(joined: Any) -> Select:
            rows = (
                select(
                    func.coalesce(d.c.member_key, k.c.member_key),
                    in_d,
                    in_k,
                    func.coalesce(k.c.rejected, False),
                    differs,
                    *[d.c[c] for c in IDENTITY_COLUMNS],
                    *[k.c[c] for c in IDENTITY_COLUMNS],
                )
                .select_from(joined)
                .where(or_(in_d, in_k))  # a changed key neither desired nor acknowledged: nothing to do
            )
            if mode != SyncMode.FULL_RESYNC:  # a full resync re-sends everyone desired: keep every row
                rows = rows.where(or_(~in_d, ~in_k, differs))
            return rows

        rows: Any = rows_from(source)
        if conn.dialect.name == "sqlite" and getattr(source, "full", False):
            # SQLite runs a FULL JOIN of two subqueries by scanning the materialised right side once per
            # row of the left (minutes at tens of thousands of members); the same rows as two LEFT JOINs,
            # each an index lookup per row: desired with its acknowledged row, then acknowledged alone
            on = k.c.member_key == d.c.member_key
            rows = union_all(rows_from(d.outerjoin(k, on)), rows_from(k.outerjoin(d, on)).where(~in_d))
        conn.execute(insert(delta).from_select([c.name for c in delta.columns], rows))
        state.analyze_temp(conn, delta)

    def _count_sides(self, conn: Connection, plan: Plan, mode: SyncMode) -> None:
        """Desired, unmatchable and acknowledged totals.

        Staging counted desired and unmatchable for every destination in its one scan of the snapshot
        (``StageStats.desired``) and the acknowledged total is a counter kept by every commit
        (``push.acked_count``), so a plan reads them instead of scanning 10M rows twice. A dry run's
        shadow snapshot, a retirement and a destination staging did not know are counted here.
        """
        staged = self._staged_counts(conn, plan.sync_id) if self.snapshot is None and mode != SyncMode.RETIRE else None
        if staged is not None:
            plan.desired, plan.unmatchable = staged
            plan.acked = acked_count(conn, self.cfg.name, self.label)
            return
        a = state.ack
        every = desired_select(
            self.cfg, self.dest, matchable=None, snapshot=self.snapshot, empty=mode == SyncMode.RETIRE
        ).subquery("every")
        matchable = any_present(every.c, self.dest.identity_columns)
        row = conn.execute(
            select(
                func.count().filter(matchable) if matchable is not None else func.count(),
                func.count().filter(~matchable) if matchable is not None else literal(0),
            ).select_from(every)
        ).one()
        plan.desired, plan.unmatchable = int(row[0] or 0), int(row[1] or 0)
        plan.acked = state.scalar_int(
            conn,
            select(func.count()).where(
                a.c.audience == self.cfg.name, a.c.destination == self.label, a.c.rejected.is_(False)
            ),
        )

    def _staged_counts(self, conn: Connection, sync_id: int) -> tuple[int, int] | None:
        r, s = state.run, state.sync
        counts = conn.scalar(select(r.c.desired).join(s, s.c.run_id == r.c.id).where(s.c.id == sync_id))
        pair = (counts or {}).get(self.label)
        return (int(pair[0]), int(pair[1])) if pair else None

    def _numbered(self, src: Any, op: Op, n: int, first_round: int) -> Select:
        """The rows of ``src`` as pending rows of ``op``, numbered into batches.

        Within a shard, rows are numbered by member key (``row_number`` partitioned by shard), cut
        into batches of ``batch_rows``, and batch ``r`` of shard ``s`` gets number
        ``(first_round + r) * n + s``. One pass of set-based SQL; no row comes through Python.
        """
        hashed = n > 1
        cols = [src.c.member_key, *[src.c[c] for c in IDENTITY_COLUMNS]]
        if hashed:  # the hash is computed once per row, in the inner query
            cols.append((member_key_hash(src.c.member_key) % n).label("shard"))
        rows = select(*cols).subquery("planned")
        rank = func.row_number().over(partition_by=rows.c.shard if hashed else None, order_by=rows.c.member_key)
        batch_no = (rank - 1) // self.dest.batch_rows + first_round
        if hashed:
            batch_no = batch_no * n + rows.c.shard
        return select(
            literal(self.cfg.name),
            literal(self.label),
            literal(op.value),
            rows.c.member_key,
            cast(batch_no, Integer).label("batch_no"),
            *[rows.c[c] for c in IDENTITY_COLUMNS],
        )

    def _peak_acked(self, conn: Connection, plan: Plan, window_days: float) -> int:
        """The largest acknowledged size of this destination within the guard's window, now included.

        Sizes are the ones recorded after each push (``do_sync.acked_size``). A deliberate shrink (a
        guard override, a replace, a retirement) starts afresh: only sizes from it on count, or every
        run after an approved shrink would trip over the size before it.
        """
        if window_days <= 0:
            return plan.acked
        s = state.sync
        since = state.utcnow() - dt.timedelta(days=window_days)
        recent = and_(
            s.c.audience == self.cfg.name,
            s.c.destination == self.label,
            s.c.id != plan.sync_id,
            s.c.started_at >= since,
        )
        deliberate = or_(s.c.guard.like("overridden:%"), s.c.guard.like("not applicable%"))
        baseline = conn.scalar(select(func.max(s.c.id)).where(recent, deliberate))
        sizes = select(func.max(s.c.acked_size)).where(recent, s.c.acked_size.is_not(None))
        if baseline is not None:
            sizes = sizes.where(s.c.id >= baseline)
        return max(plan.acked, int(conn.scalar(sizes) or 0))

    def _guard(self, plan: Plan, guard: GuardSettings, override_reason: str | None, peak: int | None = None) -> str:
        """Refuse a plan that looks like a broken source: an empty one, or removals above the share.

        Removals are judged against ``peak`` (``_peak_acked``), so shrinks in a row add up: two runs
        removing 30% each leave 49% of the largest size, which a 50% guard refuses.
        """
        pure_removes = plan.removes - plan.changed
        peak = max(peak or 0, plan.acked)
        gone = peak - (plan.acked - pure_removes)  # members fewer than the peak once this plan is pushed
        problem = None
        if plan.acked and plan.desired == 0 and not guard.allow_empty_source:
            problem = (
                f"the source yields no members for this destination but {plan.acked} are acknowledged; "
                f"pushing would remove all of them"
            )
        elif pure_removes and peak and gone / peak > guard.max_removal_share:
            problem = (
                f"{pure_removes} of {plan.acked} acknowledged members ({pure_removes / plan.acked:.0%}) "
                f"would be removed, above the limit of {guard.max_removal_share:.0%}"
            )
            if peak > plan.acked:
                problem = (
                    f"{pure_removes} of {plan.acked} acknowledged members would be removed, leaving "
                    f"{plan.acked - pure_removes}: {gone / peak:.0%} fewer than the largest acknowledged size "
                    f"of the last {guard.removal_window_days:g} days ({peak}), above the limit of "
                    f"{guard.max_removal_share:.0%}"
                )
        if problem is None:
            return "passed"
        if override_reason:
            log.warning("%s/%s: guard overridden (%s): %s", self.cfg.name, self.label, override_reason, problem)
            return f"overridden: {problem}; reason: {override_reason}"
        raise GuardTripped(
            f"mass-removal guard for {self.cfg.name}/{self.label}: {problem}. Nothing was pushed. If the "
            f"shrink is deliberate, trigger the DAG again with conf "
            f'{{"guard_override_reason": "<why>"}} to let one run through.'
        )


class Replacer:
    """Full replace through the destination's own replace API (Meta ``usersreplace``, Google ``removeAll``)."""

    def __init__(self, engine: Engine, cfg: AudienceConfig, dest: Destination, label: str) -> None:
        self.engine = engine
        self.cfg = cfg
        self.dest = dest
        self.label = label

    def _batches(self) -> Iterator[list[MemberRow]]:
        d = desired_select(self.cfg, self.dest).order_by(state.member.c.member_key)
        with self.engine.connect() as conn:
            result = conn.execution_options(yield_per=self.dest.batch_rows).execute(d)
            for part in result.partitions(self.dest.batch_rows):
                yield [MemberRow(*row) for row in part]

    def replace(self, sync_id: int) -> tuple[BatchResult, int]:
        a, aud, label = state.ack, self.cfg.name, self.label
        with self.engine.connect() as conn:
            desired = count_desired(conn, self.cfg, self.dest)
        outcome = self.dest.replace(self._batches(), desired, idempotency_key(aud, label, sync_id, 0, plan_nonce()))
        now = state.utcnow()
        d = desired_select(self.cfg, self.dest).subquery("d")
        with self.engine.begin() as conn:
            changes.forget(conn, aud, label)  # acknowledged state is rewritten: the next plan is a full diff
            forget_acked_count(conn, aud, label)
            # whatever was pending is superseded by the replace
            for t in (state.pending, state.batch):
                conn.execute(delete(t).where(t.c.audience == aud, t.c.destination == label))
            conn.execute(delete(a).where(a.c.audience == aud, a.c.destination == label))
            conn.execute(
                insert(a).from_select(
                    ["audience", "destination", "member_key", *IDENTITY_COLUMNS, "rejected", "acked_at", "acked_sync"],
                    select(
                        literal(aud),
                        literal(label),
                        d.c.member_key,
                        *[d.c[c] for c in IDENTITY_COLUMNS],
                        literal(False),
                        literal(now, a.c.acked_at.type),
                        literal(sync_id, a.c.acked_sync.type),
                    ),
                )
            )
            mark_rejected(conn, aud, label, list(outcome.rejected))
            record_rejects(conn, sync_id, aud, label, Op.ADD, outcome.rejected, now)
        return outcome, desired
