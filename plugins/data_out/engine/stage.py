"""Stage a source snapshot into the state database and merge it into the audience's member snapshot.

Every source row gets a fingerprint of its raw identifier values (and of everything that shapes their
normalisation). Only new or changed rows are normalised, hashed and bucketed; unchanged rows keep the
identity already stored in ``do_member``. Two ways to get there, with the same result:

* **in the database** (``engine/stage_sql.py``): the source query runs in the state database itself
  (Postgres). Fingerprints are computed and compared in SQL and only the delta reaches Python. This is
  what keeps a 10M-member audience fast and small.
* **in Python** (everywhere else: another database, Customer.io, SQLite): the source is streamed in
  batches, fingerprints are compared batch by batch, and the merge into ``do_member`` is three
  set-based statements in one transaction, so the snapshot switches atomically. Each batch is
  committed to ``do_stage`` as it goes: a staging killed half-way leaves its batches there, and the
  next attempt takes their rows over instead of normalising them again (``_take_over``). The source
  is read again in full (a query has no resumable position), but only rows no attempt committed are
  normalised and written.

Memory never grows with audience size. Raw identifiers exist only in the batch being processed;
nothing raw is written or logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    String,
    Table,
    and_,
    delete,
    exists,
    func,
    insert,
    select,
)
from sqlalchemy.exc import SQLAlchemyError

from data_out import state
from data_out.chunking import chunks
from data_out.config import AudienceConfig
from data_out.config import SqlSource as SqlSourceConfig
from data_out.engine import changes, faults, figures, quiet
from data_out.engine.stage_sql import Delta, InDatabase, InDatabaseStaging, ResumeLog, resumable_min_rows
from data_out.identity import NORMALIZATION_VERSION
from data_out.normalise import Normaliser, in_order, workers_for
from data_out.sources.base import Source, contact_keys_error, looks_like_contact, member_key
from data_out.sources.warehouse import query_failed
from data_out.state import errors

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 5_000
_UNCHANGED: dict[str, Any] = {
    "computed": False,
    "bucket": None,
    "email_sha256": None,
    "email_google_sha256": None,
    "phone_e164_sha256": None,
    "phone_digits_sha256": None,
    "external_id": None,
    "extra": None,
    "email_issue": None,
    "phone_issue": None,
    "external_id_issue": None,
    "id_notes": None,
}
#: above this share of the snapshot changed, Postgres' statistics are refreshed before the diff is planned
_ANALYZE_SHARE = 0.05


@dataclass
class StageStats:
    source_rows: int = 0
    source_reported: int | None = None  # what the source itself says it holds (Customer.io customer_count)
    members: int = 0
    duplicate_keys: int = 0
    missing_keys: int = 0  # rows without a usable member key: counted, never silently dropped
    recomputed: int = 0
    #: of ``recomputed``, rows an interrupted earlier staging had computed and committed (not normalised again)
    resumed: int = 0
    excluded: int = 0
    held_out: int = 0
    identifier_issues: dict[str, int] = field(default_factory=dict)
    #: per destination label: [desired, unmatchable], counted in the same scan (the plans read them)
    desired: dict[str, list[int]] = field(default_factory=dict)
    seconds: float = 0.0
    #: how the source was compared with the snapshot: in full, or only the rows a change column flagged
    comparison: str = quiet.FULL
    path: str = "python"  # "database" when staged in the state database (see engine/stage_sql.py)

    def as_dict(self) -> dict[str, Any]:
        fields = asdict(self)
        fields.pop("path")  # not a run-record column; logged instead
        return fields


def _encode(value: Any) -> bytes:
    """One value of the fingerprint. Text is tagged with its byte length, so "ab","c" != "a","bc"."""
    if value is None:
        return b"\x1eN"
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        return b"\x1eB%d:" % len(raw) + raw
    raw = str(value).encode("utf-8", "surrogatepass")
    return b"\x1eS%d:" % len(raw) + raw


def raw_fingerprint(context: bytes, values: Iterable[Any]) -> str:
    """MD5 hex over the context and the raw identifier values: change detection, not security.

    ``stage_sql.InDatabase.fingerprint_expr`` computes the same value in SQL; keep them in step.
    """
    return hashlib.md5(context + b"".join(_encode(v) for v in values), usedforsecurity=False).hexdigest()


def _fingerprint_context(cfg: AudienceConfig) -> bytes:
    ids = cfg.identifiers
    salt = cfg.holdout.salt if cfg.holdout else ""
    extra = ",".join(f"{k}={v}" for k, v in sorted(ids.extra.items()))
    parts = [
        "fp2",  # the fingerprint's own format; bump with any change to _encode
        NORMALIZATION_VERSION,
        ids.default_region,
        ids.email or "",
        ids.phone or "",
        ids.external_id or "",
        extra,
        salt,
    ]
    return "\x1f".join(parts).encode()


class Stager:
    """Builds one run's snapshot of one audience. The caller holds the audience's lease."""

    def __init__(
        self,
        engine: Engine,
        cfg: AudienceConfig,
        run_id: int,
        batch_size: int = DEFAULT_BATCH_SIZE,
        record_changes: bool = True,
    ):
        self.engine = engine
        #: False for a dry run's shadow snapshot: no destination plans from it incrementally
        self.record_changes = record_changes
        self.cfg = cfg
        self.run_id = run_id
        self.batch_size = batch_size
        self._context = _fingerprint_context(cfg)
        self.normaliser = Normaliser.for_audience(cfg)
        self._leftover_runs: list[int] = []
        self._mark: quiet.Mark | None = None  # kept with the snapshot (``engine/quiet.py``)
        ids = cfg.identifiers
        #: the raw columns a row's identity depends on, in fingerprint order (None: not mapped)
        self.value_columns: list[str | None] = [
            ids.email,
            ids.phone,
            ids.external_id,
            *(column for _, column in sorted(ids.extra.items())),
        ]

    def stage(self, source: Source, exclusions: dict[str, tuple[Source, str]]) -> StageStats:
        """Stage ``source``; ``exclusions`` maps an excluded audience to its source and member-key column."""
        started = time.monotonic()
        stats = StageStats()
        change_column = self.cfg.source.change_column if isinstance(self.cfg.source, SqlSourceConfig) else None
        in_db = InDatabase.for_source(self.engine, source, self.cfg.member_key, self.value_columns, change_column)
        if in_db is None or not self._stage_in_database(in_db, exclusions, stats):
            if change_column:
                log.info(
                    "audience %s: staged in Python, where the change column %s is not used: compared in full",
                    self.cfg.name,
                    change_column,
                )
            self._stage_in_python(source, exclusions, stats)
        stats.source_reported = getattr(source, "reported_count", None)
        stats.seconds = round(time.monotonic() - started, 3)
        log.info(
            "staged audience %s (%s): %d source rows, %d members, %d recomputed (%d of them taken over from an "
            "interrupted staging), %d duplicate keys, %d rows without a member key, %d excluded, %d held out",
            self.cfg.name,
            stats.path,
            stats.source_rows,
            stats.members,
            stats.recomputed,
            stats.resumed,
            stats.duplicate_keys,
            stats.missing_keys,
            stats.excluded,
            stats.held_out,
        )
        return stats

    # -- in the database ---------------------------------------------------------------------------
    def _stage_in_database(
        self, plan: InDatabase, exclusions: dict[str, tuple[Source, str]], stats: StageStats
    ) -> bool:
        """Stage inside one REPEATABLE READ transaction; ``False`` if this source must take the Python path."""
        staging = InDatabaseStaging(plan, self.cfg.name, self._context, self.batch_size)
        label = plan.source.label
        kept = ResumeLog(self.engine, self.cfg.name, self.run_id)
        with (
            self.engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn,
            conn.begin(),
            contextlib.closing(kept),
        ):
            try:
                why_not = plan.usable(conn)
                if why_not:
                    log.info("audience %s: staging in Python because %s", self.cfg.name, why_not)
                    return False
                previous = figures.carried(conn, self.cfg, bool(exclusions))
                before = previous[0] if previous else None
                delta, self._mark, stats.comparison = quiet.find_delta(staging, conn, self.cfg, self._context, before)
                if staging.find_leftovers(conn):
                    log.info("audience %s: resuming the staging an earlier attempt left unfinished", self.cfg.name)
                resumable = delta.to_compute >= resumable_min_rows()
                change_id = self._open_change(conn, delta.to_compute + delta.gone, delta.before)
                carry = previous is not None and not staging.grouped  # (duplicates: rare, and simply counted)
                removed: list[int] | None = None

                def record_and_drop_stale() -> None:  # while the first batches are being normalised
                    nonlocal removed
                    if change_id is not None:
                        changes.add_keys(conn, self.cfg.name, change_id, staging.changed_keys())
                    removed = staging.drop_stale(conn, delta, self.cfg if carry else None)

                self._copy_changed(conn, staging, delta, kept if resumable else None, stats, record_and_drop_stale)
            except SQLAlchemyError as exc:
                if errors.state_fault(exc):  # the state database itself went away: not the query's fault
                    raise
                raise query_failed(label, exc) from None
            self._replace_exclusions(conn, exclusions, staging, change_id)
            if previous is not None and removed is not None:  # carried: the stale rows' figures were taken
                self._record(conn, figures.carry(previous, removed, staging.figures_of_new(conn, self.cfg)), stats)
            else:
                self._record(conn, figures.count(conn, self.cfg), stats)
            faults.point("stage.merge")  # inside the transaction: a crash here rolls it all back
        if staging.resuming or kept.committed:
            kept.clear()  # committed: neither this attempt's rows nor earlier ones are needed any more
        stats.path = "database"
        stats.duplicate_keys = delta.duplicate_keys
        stats.missing_keys = delta.missing_keys
        stats.source_rows = stats.members + delta.duplicate_rows + delta.missing_keys
        if delta.duplicate_keys:
            self._warn_duplicates(delta.duplicate_keys)
        self._refresh_statistics(delta.to_compute + delta.gone, stats.members)
        return True

    def _copy_changed(
        self,
        conn: Connection,
        staging: InDatabaseStaging,
        delta: Delta,
        kept: ResumeLog | None,
        stats: StageStats,
        meanwhile: Callable[[], None],
    ) -> None:
        """Normalise the changed source rows in worker processes and COPY them into the snapshot, in order.

        ``meanwhile`` runs while the first batches are being normalised. ``kept`` (large stagings only)
        commits the rows every RESUME_CHUNK_ROWS rows, so a killed attempt's work survives; rows an earlier
        attempt kept are taken over at the end, after ``meanwhile`` dropped the stale ones.
        """
        parts = ([tuple(r) for r in part] for part in staging.stream_changed(conn))  # plain, picklable
        workers = workers_for(delta.to_compute)
        for rows in in_order(self.normaliser.member_rows, parts, workers, meanwhile):
            staging.copy_members(conn, rows)
            if kept is not None:
                kept.write(rows)
            stats.recomputed += len(rows)
            faults.point("stage.batch")
        taken = staging.take_over(conn)
        stats.recomputed += taken
        stats.resumed += taken

    def _refresh_statistics(self, changed: int, members: int) -> None:
        """After a large change the planner's row estimates are stale; the diff plan depends on them.

        After a bulk change (a first sync) the snapshot is vacuumed too (see ``state.vacuum``).
        """
        if changed >= state.VACUUM_AFTER_ROWS:
            state.vacuum(self.engine, state.member, analyze=True)
        elif changed > max(10_000, members * _ANALYZE_SHARE):
            state.analyze(self.engine, state.member)

    # -- in Python ---------------------------------------------------------------------------------
    def _stage_in_python(self, source: Source, exclusions: dict[str, tuple[Source, str]], stats: StageStats) -> None:
        """Stream the source into ``do_stage`` batch by batch (each batch committed), then merge at once.

        A staging killed half-way keeps its committed batches: the next attempt (``_interrupted``) takes
        their rows over where the source still yields them, instead of normalising them again.
        """
        self._leftover_runs = self._interrupted()
        for rows in source.iter_batches(self.batch_size):
            self._stage_batch(rows, stats)
            faults.point("stage.batch")
        with self.engine.begin() as conn:
            if self._leftover_runs:  # rows of the interrupted attempts the source no longer yields
                s = state.stage
                conn.execute(delete(s).where(s.c.audience == self.cfg.name, s.c.run_id != self.run_id))
            stats.duplicate_keys = self._drop_duplicates(conn)
            # most rows normalised again (a new normalisation version, a new key): a full diff is cheaper
            # than recording every key, as on the in-database path
            change_id = self._open_change(conn, stats.recomputed, stats.source_rows)
            changed = self._merge(conn, change_id)
            self._replace_exclusions(conn, exclusions, None, change_id)
            self._record(conn, figures.count(conn, self.cfg), stats)
            faults.point("stage.merge")  # inside the merge transaction: a crash here rolls it all back
        self._refresh_statistics(changed, stats.members)

    def _interrupted(self) -> list[int]:
        """Runs whose staging of this audience was killed before its merge: their committed rows remain.

        The caller holds the audience's lease, so no such run is still writing. Their rows are only
        reused for a source row with the same member key and fingerprint (which covers the raw values
        and everything that shapes their normalisation, ``_fingerprint_context``), so the snapshot
        comes out exactly as an uninterrupted staging would have made it.
        """
        s = state.stage
        with self.engine.connect() as conn:
            runs = sorted(
                conn.execute(
                    select(s.c.run_id).where(s.c.audience == self.cfg.name, s.c.run_id != self.run_id).distinct()
                ).scalars()
            )
        if runs:
            log.info(
                "audience %s: resuming the staging that run(s) %s left unfinished: rows they staged are "
                "reused where the source still yields them",
                self.cfg.name,
                ", ".join(map(str, runs)),
            )
        return runs

    def _take_over(self, conn: Connection, wanted: list[tuple[str, str]]) -> set[int]:
        """Claim rows an interrupted attempt computed for these (key, fingerprint) pairs, one row per pair.

        Claiming moves the row to this run, in the batch's transaction: a kill after the commit leaves
        it claimed (and reusable by the attempt after); a kill before leaves it to be claimed again.
        Returns the positions in ``wanted`` that were taken over.
        """
        s = state.stage
        found: dict[tuple[str, str], list[int]] = {}
        for row_id, key, fp in conn.execute(
            select(s.c.id, s.c.member_key, s.c.raw_fp).where(
                s.c.run_id.in_(self._leftover_runs),
                state.key_in(conn.dialect, s.c.member_key, list({k for k, _ in wanted})),
                s.c.computed.is_(True),
            )
        ):
            found.setdefault((key, fp), []).append(row_id)
        taken, ids = set(), []
        for i, pair in enumerate(wanted):
            if found.get(pair):
                ids.append(found[pair].pop())
                taken.add(i)
        for chunk in chunks(ids, 10_000):
            conn.execute(s.update().where(s.c.id.in_(chunk)).values(run_id=self.run_id))
        return taken

    def _stage_batch(self, rows: list[Any], stats: StageStats) -> None:
        cfg = self.cfg
        keyed = []
        for r in rows:
            stats.source_rows += 1
            key = member_key(r[cfg.member_key])
            if key is None:
                stats.missing_keys += 1
                continue
            raw = tuple(r[c] if c else None for c in self.value_columns)
            keyed.append((key, raw_fingerprint(self._context, raw), raw))
        if not keyed:
            return
        contact = sum(1 for key, _, _ in keyed if looks_like_contact(key))
        if contact:  # before anything of this batch is written
            raise contact_keys_error(f"audience {cfg.name}", cfg.member_key, contact, f"in a batch of {len(rows)} rows")
        m = state.member
        with self.engine.begin() as conn:
            known: dict[str, str] = dict(
                conn.execute(
                    select(m.c.member_key, m.c.raw_fp).where(
                        m.c.audience == cfg.name,
                        state.key_in(conn.dialect, m.c.member_key, list({k for k, _, _ in keyed})),
                    )
                ).all()
            )
            changed = [(key, fp) for key, fp, _ in keyed if known.get(key) != fp]
            taken = self._take_over(conn, changed) if changed and self._leftover_runs else set()
            stats.recomputed += len(changed)  # taken over or normalised now: computed either way
            stats.resumed += len(taken)
            out, i = [], 0
            for key, fp, raw in keyed:
                row: dict[str, Any] = {"audience": cfg.name, "run_id": self.run_id, "member_key": key, "raw_fp": fp}
                if known.get(key) == fp:  # unchanged: the snapshot row already holds its identity
                    row.update(_UNCHANGED)
                else:
                    i += 1
                    if i - 1 in taken:  # an interrupted attempt computed it: its row is this run's now
                        continue
                    row.update(self.normaliser.identity(key, raw), computed=True)
                out.append(row)
            if out:
                conn.execute(insert(state.stage), out)

    def _drop_duplicates(self, conn: Connection) -> int:
        """Keep one row per member key (lowest fingerprint, then first staged): deterministic."""
        s = state.stage
        dupes = conn.scalar(
            select(func.count()).select_from(
                select(s.c.member_key)
                .where(s.c.run_id == self.run_id)
                .group_by(s.c.member_key)
                .having(func.count() > 1)
                .subquery()
            )
        )
        if not dupes:
            return 0
        t = s.alias("t")
        conn.execute(
            delete(s).where(
                s.c.run_id == self.run_id,
                exists().where(
                    t.c.run_id == s.c.run_id,
                    t.c.member_key == s.c.member_key,
                    (t.c.raw_fp < s.c.raw_fp) | and_(t.c.raw_fp == s.c.raw_fp, t.c.id < s.c.id),
                ),
            )
        )
        self._warn_duplicates(int(dupes))
        return int(dupes)

    def _warn_duplicates(self, dupes: int) -> None:
        log.warning(
            "audience %s: %d member keys appear more than once in the source; kept one row each", self.cfg.name, dupes
        )

    def _merge(self, conn: Connection, change_id: int | None) -> int:
        """Switch the snapshot to the staged rows; returns how many snapshot rows were replaced or added.

        With ``change_id``, the keys of gone, changed and new members are recorded under it first.
        """
        m, s = state.member, state.stage
        stale = and_(
            m.c.audience == self.cfg.name,
            ~exists().where(s.c.run_id == self.run_id, s.c.member_key == m.c.member_key, s.c.raw_fp == m.c.raw_fp),
        )
        if change_id is not None:
            changes.add_keys(conn, self.cfg.name, change_id, select(m.c.member_key).where(stale))
        gone = conn.execute(delete(m).where(stale)).rowcount
        cols = [c.name for c in m.columns if c.name != "audience"]
        fresh = select(s.c.audience, *[s.c[c] for c in cols]).where(
            s.c.run_id == self.run_id,
            s.c.computed.is_(True),
            ~exists().where(m.c.audience == self.cfg.name, m.c.member_key == s.c.member_key),
        )
        if change_id is not None:
            changes.add_keys(conn, self.cfg.name, change_id, select(fresh.subquery().c.member_key))
        added = conn.execute(insert(m).from_select(["audience", *cols], fresh)).rowcount
        conn.execute(delete(s).where(s.c.run_id == self.run_id))
        return max(gone, 0) + max(added, 0)

    # -- shared ------------------------------------------------------------------------------------
    def _open_change(self, conn: Connection, changed: int, members: int) -> int | None:
        """This run's change record; its id when the changed keys are to be recorded (see changes.py).

        First drops recorded keys every destination's mark has passed: staging is the one step that
        adds them, so it is where they are collected.
        """
        changes.collect(conn, self.cfg.name, [d.label for d in self.cfg.destinations])
        if not self.record_changes:
            return None
        # the Python path passes the rows it normalised again (members that left are known only at the merge)
        recorded = changes.should_record(conn, self.cfg.name, changed, members)
        change_id = changes.open_change(conn, self.cfg.name, self.run_id, "stage", recorded)
        return change_id if recorded else None

    def _replace_exclusions(
        self,
        conn: Connection,
        exclusions: dict[str, tuple[Source, str]],
        staging: InDatabaseStaging | None,
        change_id: int | None,
    ) -> None:
        x = state.exclusion
        old = _old_exclusions(conn, self.cfg.name) if change_id is not None else None
        conn.execute(delete(x).where(x.c.audience == self.cfg.name))
        stmt = state.insert_ignore(conn.dialect, x)
        for name, (source, key_column) in exclusions.items():
            in_db = InDatabase.for_source(self.engine, source, key_column, []) if staging else None
            if staging and in_db and in_db.usable(conn) is None:
                staging.stage_exclusion(conn, in_db)
            else:
                for keys in _key_batches(source, key_column, self.batch_size):
                    conn.execute(stmt, [{"audience": self.cfg.name, "member_key": k} for k in keys])
            log.info("audience %s: applied exclusion %s", self.cfg.name, name)
        if old is not None and change_id is not None:  # members whose exclusion flipped, either way
            now = select(x.c.member_key).where(x.c.audience == self.cfg.name)
            changes.add_keys(conn, self.cfg.name, change_id, now.except_(select(old.c.member_key)))
            changes.add_keys(conn, self.cfg.name, change_id, select(old.c.member_key).except_(now))
            old.drop(conn)

    def _record(self, conn: Connection, values: list[int], stats: StageStats) -> None:
        """The snapshot's figures (``engine/figures.py``) into the run's stats, and kept with the snapshot."""
        figures.save(conn, self.cfg, values, self._mark)
        stats.members, stats.excluded, stats.held_out = values[:3]
        n_issues = 3 + len(figures.ISSUES)
        stats.identifier_issues = {
            f"{col.removesuffix('_issue')}_{issue}": n
            for (col, issue), n in zip(figures.ISSUES, values[3:n_issues], strict=True)
            if n
        }
        n_reasons = n_issues + len(figures.REASON_CODES)
        reasons = zip(figures.REASON_CODES, values[n_issues:n_reasons], strict=True)
        stats.identifier_issues.update({f"reason:{code}": n for code, n in reasons if n})
        rest = values[n_reasons:]
        stats.desired = {d.label: rest[2 * i : 2 * i + 2] for i, d in enumerate(self.cfg.destinations)}


def _old_exclusions(conn: Connection, audience: str) -> Table:
    """The exclusion keys before this run, in a session-local table, to find the ones that flipped."""
    x = state.exclusion
    old = state.temp_table(conn, "do_old_exclusion", Column("member_key", String(256)))
    conn.execute(insert(old).from_select(["member_key"], select(x.c.member_key).where(x.c.audience == audience)))
    return old


def _key_batches(source: Source, key_column: str, batch_size: int) -> Iterator[set[str]]:
    for rows in source.iter_batches(batch_size):
        keys = {k for r in rows if (k := member_key(r[key_column])) is not None}
        if keys:
            yield keys
