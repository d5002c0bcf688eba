"""Stage a source snapshot into the state database and merge it into the audience's member snapshot.

The source is streamed in batches. For each row a fingerprint of its raw values is compared with the
stored snapshot: unchanged rows are staged by key and fingerprint only, and only new or changed rows are
normalised, hashed and bucketed. The merge into ``do_member`` is three set-based statements in one
transaction, so the snapshot switches atomically and memory never grows with audience size.

Raw identifiers exist only in the batch being processed; nothing raw is written or logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, exists, func, insert, select

from data_out import faults, state
from data_out.config import AudienceConfig
from data_out.holdout import bucket_for, holdout_threshold
from data_out.identity import NORMALIZATION_VERSION, identity_forms, normalize_meta_field, sha256_hex
from data_out.sources.base import Source

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 5_000
MAX_MEMBER_KEY_LENGTH = 256
_ISSUE_COLUMNS = ("email_issue", "phone_issue", "external_id_issue")
_UNCHANGED: dict[str, Any] = {
    "computed": False,
    "bucket": None,
    "email_sha256": None,
    "phone_e164_sha256": None,
    "phone_digits_sha256": None,
    "external_id": None,
    "extra": None,
    "email_issue": None,
    "phone_issue": None,
    "external_id_issue": None,
}


@dataclass
class StageStats:
    source_rows: int = 0
    source_reported: int | None = None  # what the source itself says it holds (Customer.io customer_count)
    members: int = 0
    duplicate_keys: int = 0
    missing_keys: int = 0  # rows without a usable member key: counted, never silently dropped
    recomputed: int = 0
    excluded: int = 0
    held_out: int = 0
    identifier_issues: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _encode(value: Any) -> bytes:
    if value is None:
        return b"N"
    if isinstance(value, bytes | bytearray | memoryview):
        return b"B" + bytes(value)
    return b"S" + str(value).encode("utf-8", "surrogatepass")


def raw_fingerprint(context: bytes, values: Iterable[Any]) -> str:
    """128-bit BLAKE2b over the raw identifier values and everything that shapes their normalisation."""
    h = hashlib.blake2b(context, digest_size=16)
    for v in values:
        enc = _encode(v)
        h.update(len(enc).to_bytes(4, "big"))
        h.update(enc)
    return h.hexdigest()


def _fingerprint_context(cfg: AudienceConfig) -> bytes:
    ids = cfg.identifiers
    salt = cfg.holdout.salt if cfg.holdout else ""
    extra = ",".join(f"{k}={v}" for k, v in sorted(ids.extra.items()))
    parts = [
        NORMALIZATION_VERSION,
        ids.default_region,
        ids.email or "",
        ids.phone or "",
        ids.external_id or "",
        extra,
        salt,
    ]
    return "\x1f".join(parts).encode()


def _member_key(raw: Any) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, bytes | bytearray | memoryview):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            return None
    key = str(raw).strip()
    if not key or len(key) > MAX_MEMBER_KEY_LENGTH:
        return None
    return key


class Stager:
    """Builds one run's snapshot of one audience. The caller holds the audience's lease."""

    def __init__(self, engine: Engine, cfg: AudienceConfig, run_id: int, batch_size: int = DEFAULT_BATCH_SIZE):
        self.engine = engine
        self.cfg = cfg
        self.run_id = run_id
        self.batch_size = batch_size
        self._context = _fingerprint_context(cfg)

    def stage(self, source: Source, exclusions: dict[str, tuple[Source, str]]) -> StageStats:
        """Stage ``source``; ``exclusions`` maps an excluded audience to its source and member-key column."""
        started = time.monotonic()
        stats = StageStats()
        with self.engine.begin() as conn:  # leftovers of a crashed run of this audience
            conn.execute(delete(state.stage).where(state.stage.c.audience == self.cfg.name))
        for rows in source.iter_batches(self.batch_size):
            self._stage_batch(rows, stats)
            faults.point("stage.batch")
        stats.source_reported = getattr(source, "reported_count", None)
        with self.engine.begin() as conn:
            stats.duplicate_keys = self._drop_duplicates(conn)
            self._merge(conn)
            self._replace_exclusions(conn, exclusions)
            self._count(conn, stats)
            faults.point("stage.merge")  # inside the merge transaction: a crash here rolls it all back
        stats.seconds = round(time.monotonic() - started, 3)
        log.info(
            "staged audience %s: %d source rows, %d members, %d recomputed, %d duplicate keys, "
            "%d rows without a member key, %d excluded, %d held out",
            self.cfg.name,
            stats.source_rows,
            stats.members,
            stats.recomputed,
            stats.duplicate_keys,
            stats.missing_keys,
            stats.excluded,
            stats.held_out,
        )
        return stats

    def _stage_batch(self, rows: list[Any], stats: StageStats) -> None:
        cfg, ids = self.cfg, self.cfg.identifiers
        keyed = []
        for r in rows:
            stats.source_rows += 1
            key = _member_key(r[cfg.member_key])
            if key is None:
                stats.missing_keys += 1
                continue
            raw = (
                r[ids.email] if ids.email else None,
                r[ids.phone] if ids.phone else None,
                r[ids.external_id] if ids.external_id else None,
            )
            keyed.append((key, raw_fingerprint(self._context, raw), raw))
        if not keyed:
            return
        m = state.member
        with self.engine.begin() as conn:
            known = dict(
                conn.execute(
                    select(m.c.member_key, m.c.raw_fp).where(
                        m.c.audience == cfg.name, m.c.member_key.in_({k for k, _, _ in keyed})
                    )
                ).all()
            )
            out = []
            for key, fp, raw in keyed:
                row: dict[str, Any] = {"audience": cfg.name, "run_id": self.run_id, "member_key": key, "raw_fp": fp}
                if known.get(key) == fp:  # unchanged: the snapshot row already holds its identity
                    row.update(_UNCHANGED)
                else:
                    row.update(self._normalise(key, raw), computed=True)
                    stats.recomputed += 1
                out.append(row)
            conn.execute(insert(state.stage), out)

    def _normalise(self, key: str, raw: tuple[Any, ...]) -> dict[str, Any]:
        ids = self.cfg.identifiers
        f = identity_forms(*raw[:3], default_region=ids.default_region)
        extra = {}
        for (name, _), value in zip(sorted(ids.extra.items()), raw[3:], strict=True):
            norm = normalize_meta_field(name, value)
            if norm:
                extra[name] = sha256_hex(norm)
        return {
            "bucket": bucket_for(self.cfg.holdout.salt, key) if self.cfg.holdout else None,
            "email_sha256": f.email_sha256,
            "phone_e164_sha256": f.phone_e164_sha256,
            "phone_digits_sha256": f.phone_digits_sha256,
            "external_id": f.external_id,
            "extra": json.dumps(extra, sort_keys=True, separators=(",", ":")) if extra else None,
            # an identifier the audience does not map is not "missing", it is not asked for
            "email_issue": f.email_issue if ids.email else None,
            "phone_issue": f.phone_issue if ids.phone else None,
            "external_id_issue": f.external_id_issue if ids.external_id else None,
        }

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
        log.warning(
            "audience %s: %d member keys appear more than once in the source; kept one row each", self.cfg.name, dupes
        )
        return int(dupes)

    def _merge(self, conn: Connection) -> None:
        m, s = state.member, state.stage
        conn.execute(
            delete(m).where(
                m.c.audience == self.cfg.name,
                ~exists().where(s.c.run_id == self.run_id, s.c.member_key == m.c.member_key, s.c.raw_fp == m.c.raw_fp),
            )
        )
        cols = [c.name for c in m.columns if c.name != "audience"]
        conn.execute(
            insert(m).from_select(
                ["audience", *cols],
                select(s.c.audience, *[s.c[c] for c in cols]).where(
                    s.c.run_id == self.run_id,
                    s.c.computed.is_(True),
                    ~exists().where(m.c.audience == self.cfg.name, m.c.member_key == s.c.member_key),
                ),
            )
        )
        conn.execute(delete(s).where(s.c.run_id == self.run_id))

    def _replace_exclusions(self, conn: Connection, exclusions: dict[str, tuple[Source, str]]) -> None:
        x = state.exclusion
        conn.execute(delete(x).where(x.c.audience == self.cfg.name))
        stmt = state.insert_ignore(conn.dialect, x)
        for name, (source, member_key) in exclusions.items():
            for rows in source.iter_batches(self.batch_size):
                keys = {k for r in rows if (k := _member_key(r[member_key])) is not None}
                if keys:
                    conn.execute(stmt, [{"audience": self.cfg.name, "member_key": k} for k in keys])
            log.info("audience %s: applied exclusion %s", self.cfg.name, name)

    def _count(self, conn: Connection, stats: StageStats) -> None:
        m, x = state.member, state.exclusion
        mine = m.c.audience == self.cfg.name
        is_excluded = exists().where(x.c.audience == self.cfg.name, x.c.member_key == m.c.member_key)
        stats.members = state.scalar_int(conn, select(func.count()).where(mine))
        stats.excluded = state.scalar_int(conn, select(func.count()).where(mine, is_excluded))
        if self.cfg.holdout:
            thr = holdout_threshold(self.cfg.holdout.percent)
            stats.held_out = state.scalar_int(conn, select(func.count()).where(mine, ~is_excluded, m.c.bucket < thr))
        issues: dict[str, int] = {}
        for col in _ISSUE_COLUMNS:
            for issue, n in conn.execute(
                select(m.c[col], func.count()).where(mine, m.c[col].is_not(None)).group_by(m.c[col])
            ):
                issues[f"{col.removesuffix('_issue')}_{issue}"] = int(n)
        stats.identifier_issues = issues
