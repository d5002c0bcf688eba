"""What changed since each destination was last planned: the bookkeeping of incremental plans.

A destination's diff can only differ from what it acknowledged for members whose snapshot row or
exclusion status changed since its last plan, or whose removal it refused. So:

* staging records one ``do_change`` per run and, in the same transaction as the snapshot switch, the
  keys it touched (``do_dirty``): new, changed and gone members (marked as gone), and members whose
  exclusion flipped;
* a push records the removals a destination refused, as a change of that destination only;
* a plan leaves a mark (``do_plan_mark``): the last change its acknowledged and pending rows reflect,
  and the *shape* of its desired set (include, holdout, identity columns): what a member's row alone
  does not say.

A plan whose mark is valid diffs only the keys changed since. Any doubt falls back to the full diff,
which is always correct: no mark yet, another shape, a change whose keys were not recorded (too many
at once, or recorded before any destination had a mark), a full resync, a replace, a dry run. Keys are
garbage-collected once every configured destination's mark has passed them.

Why this is safe: the runner pushes an unfinished sync's batches before it plans again (``engine/runner.py``)
and a plan commits its batches and its mark in one transaction, so "acknowledged plus pending equals
desired as of the mark" holds for every key not recorded since. Staging holds the audience's lease, and
a destination's own changes are written only by its own push, which never runs beside its plan.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import (
    CompoundSelect,
    Connection,
    Select,
    and_,
    case,
    delete,
    false,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)

from data_out import state
from data_out.chunking import chunks
from data_out.config import AudienceConfig
from data_out.destinations.base import Destination
from data_out.hashing import sha256_hex

#: above this share of the audience changed in one run, keys are not recorded: a full diff costs the same
MAX_RECORDED_SHARE = 0.25
#: ... unless the change is this small (a tiny audience)
ALWAYS_RECORD = 10_000
#: bump when the meaning of a shape changes, so every mark is invalidated once
_SHAPE_VERSION = "1"


def shape(cfg: AudienceConfig, dest: Destination) -> str:
    """Everything besides the member's own row and exclusion status that decides what is desired and sent."""
    hold = cfg.holdout
    parts = {
        "v": _SHAPE_VERSION,
        "type": dest.type_name,
        "include": dest.settings.include,
        "identity": sorted(dest.identity_columns.items()),
        "holdout": [hold.percent, hold.salt] if hold else None,
    }
    return sha256_hex(json.dumps(parts, sort_keys=True, default=str))


def has_marks(conn: Connection, audience: str) -> bool:
    m = state.plan_mark
    return conn.execute(select(m.c.destination).where(m.c.audience == audience).limit(1)).first() is not None


def should_record(conn: Connection, audience: str, changed: int, members: int) -> bool:
    """Record keys only when some destination can use them and the change is not most of the audience."""
    if not has_marks(conn, audience):
        return False
    return changed <= max(ALWAYS_RECORD, members * MAX_RECORDED_SHARE)


def open_change(
    conn: Connection, audience: str, run_id: int | None, kind: str, recorded: bool, destination: str | None = None
) -> int:
    c = state.change
    return state.inserted_id(
        conn.execute(
            insert(c).values(
                audience=audience,
                destination=destination,
                run_id=run_id,
                kind=kind,
                key_count=0,
                recorded=recorded,
                at=state.utcnow(),
            )
        )
    )


def add_keys(conn: Connection, audience: str, change_id: int, keys: Select | CompoundSelect) -> None:
    """Record the keys ``keys`` selects under ``change_id``, once however often each comes.

    ``keys`` selects the key, and optionally a second column saying whether the member left the
    snapshot in this change (``do_dirty.gone``; without it: not known). ``EXCEPT`` drops the keys
    already recorded under the change (one pass over them, not a lookup per key) and repeats within
    ``keys``. A key recorded once as gone and once as not (an exclusion that flipped for a member who
    left) keeps both rows, which a plan reads as "look it up": the safe reading.
    """
    d = state.dirty
    sub = keys.subquery("k")
    key, *rest = sub.c
    gone = rest[0] if rest else false()
    recorded = select(d.c.member_key, d.c.gone).where(d.c.audience == audience, d.c.change_id == change_id)
    fresh = select(key, gone).where(key.is_not(None)).except_(recorded).subquery("fresh")
    rows = select(literal(audience), literal(change_id), *fresh.c)
    conn.execute(insert(d).from_select(["audience", "change_id", "member_key", "gone"], rows))
    _count_keys(conn, audience, change_id)


def _count_keys(conn: Connection, audience: str, change_id: int) -> None:
    """The change's key count, for run history (INSERT ... SELECT row counts are not reliable across drivers).
    Distinct keys: a key recorded both as gone and as not (``add_keys``) is one member."""
    c, d = state.change, state.dirty
    n = (
        select(func.count(d.c.member_key.distinct()))
        .where(d.c.audience == audience, d.c.change_id == change_id)
        .scalar_subquery()
    )
    conn.execute(update(c).where(c.c.id == change_id).values(key_count=n))


def record_refused(conn: Connection, audience: str, destination: str, run_id: int | None, keys: list[str]) -> None:
    """Removals the destination refused stay acknowledged; its next plan must look at them again."""
    if not keys:
        return
    change_id = open_change(conn, audience, run_id, "refused_remove", True, destination)
    d = state.dirty
    unique = sorted(set(keys))  # recorded once each, as ``add_keys`` does
    for chunk in chunks(unique, 5_000):
        conn.execute(insert(d), [{"audience": audience, "change_id": change_id, "member_key": k} for k in chunk])
    _count_keys(conn, audience, change_id)


def _mine(audience: str, destination: str) -> Any:
    c = state.change
    return and_(c.c.audience == audience, or_(c.c.destination.is_(None), c.c.destination == destination))


def latest(conn: Connection, audience: str, destination: str) -> int:
    """The newest change that concerns this destination (0 before the audience's first stage)."""
    c = state.change
    return state.scalar_int(conn, select(func.max(c.c.id)).where(_mine(audience, destination)))


def dirty_keys(conn: Connection, audience: str, destination: str, shape_now: str, upto: int) -> Select | None:
    """The keys to diff since this destination's mark, with whether each is known to have left the
    snapshot (``gone``), or ``None`` when only a full diff is safe."""
    m, c, d = state.plan_mark, state.change, state.dirty
    mark = conn.execute(
        select(m.c.change_id, m.c.shape).where(m.c.audience == audience, m.c.destination == destination)
    ).first()
    if mark is None or mark.shape != shape_now:
        return None
    unrecorded = conn.execute(
        select(c.c.id).where(_mine(audience, destination), c.c.id > mark.change_id, c.c.recorded.is_(False)).limit(1)
    ).first()
    if unrecorded is not None:
        return None
    # gone: every change since the mark that recorded the key says it left, so the last one does
    gone = func.min(case((d.c.gone, 1), else_=0)) == 1
    return (
        select(d.c.member_key, gone.label("gone"))
        .join(c, and_(c.c.id == d.c.change_id, c.c.audience == d.c.audience))
        .where(d.c.audience == audience, _mine(audience, destination), c.c.id > mark.change_id, c.c.id <= upto)
        .group_by(d.c.member_key)
    )


def set_mark(conn: Connection, audience: str, destination: str, change_id: int, shape_now: str, sync_id: int) -> None:
    m = state.plan_mark
    conn.execute(delete(m).where(m.c.audience == audience, m.c.destination == destination))
    conn.execute(
        insert(m).values(
            audience=audience,
            destination=destination,
            change_id=change_id,
            shape=shape_now,
            sync_id=sync_id,
            at=state.utcnow(),
        )
    )


def forget(conn: Connection, audience: str, destination: str | None = None) -> None:
    """Drop marks (one destination's, or the audience's): the next plans are full diffs."""
    m = state.plan_mark
    where = [m.c.audience == audience]
    if destination is not None:
        where.append(m.c.destination == destination)
    conn.execute(delete(m).where(*where))


def collect(conn: Connection, audience: str, destinations: list[str]) -> None:
    """Drop marks of destinations no longer configured and keys every remaining mark has passed."""
    m, c, d = state.plan_mark, state.change, state.dirty
    conn.execute(delete(m).where(m.c.audience == audience, m.c.destination.not_in(destinations)))
    low = conn.scalar(select(func.min(m.c.change_id)).where(m.c.audience == audience))
    if low is None:  # no marks: nobody reads recorded keys
        conn.execute(delete(d).where(d.c.audience == audience))
        return
    conn.execute(delete(d).where(d.c.audience == audience, d.c.change_id <= low))
    conn.execute(delete(c).where(c.c.audience == audience, c.c.id < low))
