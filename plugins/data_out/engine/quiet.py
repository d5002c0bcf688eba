"""Quiet days: read only the source rows a change column says changed, and whether a run may.

An audience's SQL source may name a ``change_column`` (e.g. ``updated_at``) that moves forward whenever a
row's member key or identifier values change. A run that may trust it reads the rows whose change value
is past the last mark (less ``change_lookback``, for writers that commit late), compares them with the
snapshot by key, and then checks the member keys (``find_changed_delta``): on a quiet day a count and a
hash of every key on both sides prove that no member left (``_keys_unchanged``); otherwise a key-only
pass over the source finds who did. Everything after (normalising, the snapshot's
update, recorded changes, figures) is the same as after a full comparison.

The mark is kept with the snapshot (``do_snapshot.change_mark``), written in the staging transaction, so
it always describes the snapshot it sits beside. A run compares in full instead when:

* there is no mark yet (a first sync, or the snapshot was last staged another way);
* what the mark is valid for changed (``basis``: the query, the key column, the change column, the
  lookback, or anything that shapes a row's fingerprint, such as the normalisation version);
* the last full comparison is older than ``full_compare_every`` (the schedule that catches a change
  column someone forgot to bump);
* the key check finds a new member the change column did not flag, or the source has duplicate
  keys: the shortcut's assumptions do not hold, so the same run falls back to the full comparison.
"""

from __future__ import annotations

import datetime as dt
import logging
import time

from sqlalchemy import Connection, select, text

from data_out import state
from data_out.config import AudienceConfig, SqlSource
from data_out.engine import stage_sql
from data_out.engine.figures import Mark
from data_out.engine.stage_sql import Delta, InDatabaseStaging, work_mem
from data_out.hashing import sha256_hex
from data_out.sources.base import KEY_WHITESPACE, MAX_MEMBER_KEY_LENGTH
from data_out.sources.warehouse import read_only_section

log = logging.getLogger(__name__)

FULL = "full"
CHANGED = "changed"
#: a quiet run tries to prove that no member left (``_keys_unchanged``) when at most this many new or changed
#: rows are past the mark (rows read again and found unchanged do not count), or this share of the audience;
#: a busier day goes straight to the key-only pass, which a day on which members left needs anyway, so the
#: proof would only add a scan of each side
PROOF_MIN_ROWS = 1_000
PROOF_MAX_SHARE = 0.001
#: the old fingerprint of a gone member in ``do_delta`` (any value but NULL: the key pass reads keys only)
_GONE = "gone"
#: marks are kept as text in ISO 8601, which Postgres reads alike in every DateStyle, written with ``to_char``
#: rather than by changing the session's DateStyle: the audience's own query may read or print dates by it
_MARK_TEXT = {
    "timestamptz": """to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')""",
    "timestamp": """to_char({}, 'YYYY-MM-DD"T"HH24:MI:SS.US')""",
    "date": "to_char({}, 'YYYY-MM-DD')",
}


def basis(cfg: AudienceConfig, context: bytes, sql: str) -> str | None:
    """A hash of everything the mark is valid for (``sql``: the query as run); ``None`` without a change column."""
    src = cfg.source
    if not isinstance(src, SqlSource) or src.change_column is None:
        return None
    parts = [
        "quiet1",
        sql,
        cfg.member_key,
        src.change_column,
        str(src.change_lookback.total_seconds()),
        context.hex(),
    ]
    return sha256_hex("\x1f".join(parts))


def since(conn: Connection, cfg: AudienceConfig, basis_: str, now: dt.datetime) -> Mark | None:
    """The stored mark when this run may read only what changed after it; ``None`` (and why, logged) if not."""
    src = cfg.source
    assert isinstance(src, SqlSource)  # basis() is None for any other source
    s = state.snapshot
    row = conn.execute(
        select(s.c.change_mark, s.c.change_basis, s.c.compared_at).where(s.c.audience == cfg.name)
    ).first()
    why = None
    if row is None or row.compared_at is None:
        why = "no change mark yet"
    elif row.change_basis != basis_:
        why = "the query, its keys or identifier rules changed since the mark was taken"
    elif now - _aware(row.compared_at) >= src.full_compare_every:
        why = f"the last full comparison is older than full_compare_every ({src.full_compare_every})"
    if why is not None or row is None:
        log.info("audience %s: comparing the whole source with the snapshot: %s", cfg.name, why)
        return None
    return Mark(row.change_mark, row.change_basis, _aware(row.compared_at))


def _aware(at: dt.datetime) -> dt.datetime:
    """SQLite hands back naive datetimes for timezone-aware columns; they were written in UTC."""
    return at if at.tzinfo else at.replace(tzinfo=dt.UTC)


def full_mark(staging: InDatabaseStaging, conn: Connection) -> str | None:
    """The mark after a full comparison: the source's highest change value, never ahead of now."""
    p = staging.plan
    assert p.change_column is not None and p.change_type is not None
    kind, now = p.change_type
    highest = _MARK_TEXT[kind].format(f'least(max(src."{p.change_column}"), {now})')
    with read_only_section(conn, p.source):
        value = conn.execute(text(f"SELECT {highest} FROM ({p.sql}) AS src"), p.params()).scalar()
    return None if value is None else str(value)


def find_changed_delta(
    staging: InDatabaseStaging, conn: Connection, mark: Mark, lookback: dt.timedelta, before: int
) -> tuple[Delta, str | None] | None:
    """``do_delta`` from the rows changed since ``mark`` and a check of the keys; ``None`` when it cannot be trusted.

    The keys are checked by the proof that no member left (a quiet day) or else by the key-only pass.

    Returns the delta and the new mark. On ``None`` the temporary tables are gone and the caller compares
    in full, in the same transaction (so over the same snapshot of the source).
    """
    p = staging.plan
    assert p.change_column is not None and p.change_type is not None
    kind, now = p.change_type
    col = f'src."{p.change_column}"'
    # at or after: a date column's rows of the mark's own day, and rows stamped with the mark's very value
    # after it was taken, are read again (and found unchanged if they are)
    since = f" WHERE {col} >= CAST(coalesce(:mark, '-infinity') AS {kind}) - make_interval(secs => :lookback)"
    values = ", ".join(f"s.v{i}" for i in range(len(p.value_columns)))
    conn.execute(text(f"SET LOCAL work_mem = '{work_mem()}'"))  # the key pass's hash of the snapshot's keys
    started = time.monotonic()
    # 1. the flagged rows: a few thousand on a usual day, so compiling the statement (JIT, which the plan of
    # a scan of the whole source might ask for) costs more than it saves
    conn.execute(text("SET LOCAL jit = off"))
    staging.materialise(
        conn,
        "do_flagged",
        staging.source_rows(with_values=True, also=f", {col} AS chg", where=since),
        mark=mark.value,
        lookback=lookback.total_seconds(),
    )
    highest = f"least(greatest(CAST(:mark AS {kind}), (SELECT max(chg) FROM do_flagged)), {now})"
    value = conn.execute(text(f"SELECT {_MARK_TEXT[kind].format(highest)}"), {"mark": mark.value}).scalar()
    new_mark = None if value is None else str(value)
    # each against its snapshot row by a primary-key lookup: left to itself, Postgres would hash the whole
    # snapshot for a hundred thousand keys (only Data Out's own tables are in this statement). Rows without a
    # usable key are counted by the key pass, which sees them all; unchanged rows are left out
    conn.execute(text("SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off"))
    conn.execute(
        text(
            f"""
            CREATE TEMP TABLE do_delta ON COMMIT DROP AS
            SELECT s.member_key AS src_key, m.member_key AS old_key, s.fp AS new_fp, m.raw_fp AS old_fp,
                   1 AS n, {values}
            FROM do_flagged s LEFT JOIN do_member m ON m.audience = :aud AND m.member_key = s.member_key
            WHERE length(s.member_key) <= {MAX_MEMBER_KEY_LENGTH} AND s.fp IS DISTINCT FROM m.raw_fp
            """
        ),
        {"aud": staging.audience},
    )
    conn.execute(text("SET LOCAL enable_hashjoin TO DEFAULT; SET LOCAL enable_mergejoin TO DEFAULT"))
    conn.execute(text("DROP TABLE do_flagged"))
    conn.execute(text("SET LOCAL jit TO DEFAULT"))  # the key-only pass scans everything: JIT pays there
    flagged_s = time.monotonic() - started
    # 2. a day on which no member left is proven from a count and a hash of the keys, if it looks like one
    flagged = state.scalar_int(conn, text("SELECT count(*) FROM do_delta"))
    if flagged <= max(PROOF_MIN_ROWS, before * PROOF_MAX_SHARE):
        missing = _keys_unchanged(staging, conn, before)
        if missing is not None:
            proof_s = time.monotonic() - started - flagged_s
            log.info(
                "audience %s: rows past the change mark read in %.2f s; no member left, the source's keys being "
                "the snapshot's and the new ones (a count and a hash of every key, %.2f s)",
                staging.audience,
                flagged_s,
                proof_s,
                extra={"quiet_seconds": {"flagged": flagged_s, "key_pass": proof_s}},
            )
            return staging.summarise(conn, before, missing), new_mark
    # 3. the key-only pass: members who left, keys the change column did not flag, rows without a key
    if before >= stage_sql.SPLIT_MIN_MEMBERS:
        staging.materialise_in_halves(conn, "do_keys", lambda half: _key_pass_sql(staging, half))
    else:
        staging.materialise(conn, "do_keys", _key_pass_sql(staging))
    new = f"old_key IS NULL AND length(src_key) <= {MAX_MEMBER_KEY_LENGTH}"
    unflagged = state.scalar_int(  # an anti-join: inside an aggregate's filter it would scan do_delta per key
        conn,
        text(
            f"SELECT count(*) FROM do_keys k WHERE {new}"
            " AND NOT EXISTS (SELECT FROM do_delta d WHERE d.src_key = k.src_key)"
        ),
    )
    new_keys, gone, missing = conn.execute(
        text(
            f"""
            SELECT count(DISTINCT src_key) FILTER (WHERE {new}),
                   count(*) FILTER (WHERE src_key IS NULL AND old_key IS NOT NULL),
                   count(*) FILTER (WHERE old_key IS NULL AND (src_key IS NULL
                                                             OR length(src_key) > {MAX_MEMBER_KEY_LENGTH}))
            FROM do_keys k
            """
        )
    ).one()
    key_pass_s = time.monotonic() - started - flagged_s
    rows = staging.source_count(conn)
    log.info(
        "audience %s: rows past the change mark read in %.2f s, key-only pass %.2f s, source counted in %.2f s",
        staging.audience,
        flagged_s,
        key_pass_s,
        time.monotonic() - started - flagged_s - key_pass_s,
        extra={"quiet_seconds": {"flagged": flagged_s, "key_pass": key_pass_s}},
    )
    why = None
    if unflagged:
        why = f"{unflagged} new members have no change value past the mark"
    elif rows - missing > before - gone + new_keys:  # a key appears twice: the full comparison groups them
        why = "the source has duplicate member keys"
    if why is not None:
        log.warning("audience %s: %s; comparing the whole source with the snapshot", staging.audience, why)
        conn.execute(text("DROP TABLE do_delta; DROP TABLE do_keys"))
        return None
    conn.execute(
        text(
            "INSERT INTO do_delta (src_key, old_key, new_fp, old_fp, n) "
            f"SELECT NULL, old_key, NULL, '{_GONE}', 1 FROM do_keys WHERE src_key IS NULL AND old_key IS NOT NULL"
        )
    )
    conn.execute(text("DROP TABLE do_keys"))
    return staging.summarise(conn, before, int(missing)), new_mark


def _keys_unchanged(staging: InDatabaseStaging, conn: Connection, before: int) -> int | None:
    """The source's rows without a usable key, if no member left and no key was added unflagged or twice.

    Then the source's usable keys are exactly the snapshot's plus the new keys among the flagged rows
    (``do_delta`` rows without an old key). Both sides are summarised by their count and the XOR of a
    64-bit hash of every key, the source and the snapshot read at once in the same snapshot: one scan
    of each, where the key-only pass joins them. A member gone, a new key the change column did not
    flag, or a key twice changes the count or the XOR, short of 64-bit hash accidents (which the
    scheduled full comparison would still catch). ``None``: they differ, and the key-only pass finds out
    how. Key-less and over-long keys are counted apart, as the key-only pass counts them.
    """
    p = staging.plan
    usable = f"length(k) <= {MAX_MEMBER_KEY_LENGTH}"
    source_sql = f"""
        SELECT count(*) FILTER (WHERE {usable}), bit_xor(hashtextextended(k, 0)) FILTER (WHERE {usable}),
               count(*) FILTER (WHERE k IS NULL OR length(k) > {MAX_MEMBER_KEY_LENGTH})
        FROM (SELECT nullif({p.key_expr()}, '') AS k FROM ({p.sql}) AS src OFFSET 0) AS r"""  # OFFSET 0: trim once

    def source(c: Connection) -> tuple[int, int, int]:
        with read_only_section(c, p.source):
            rows, xor, missing = c.execute(text(source_sql), p.params(ws=KEY_WHITESPACE)).one()
        return int(rows), int(xor or 0), int(missing)

    def snapshot(c: Connection) -> tuple[int, int]:
        members, xor = c.execute(
            text("SELECT count(*), bit_xor(hashtextextended(member_key, 0)) FROM do_member WHERE audience = :aud"),
            {"aud": staging.audience},
        ).one()
        return int(members), int(xor or 0)

    if before >= stage_sql.SPLIT_MIN_MEMBERS:
        with stage_sql.alongside(conn, source, snapshot) as (src, snap, _):
            pass
    else:
        src, snap = source(conn), snapshot(conn)
    new, new_xor = conn.execute(
        text(
            "SELECT count(*), bit_xor(hashtextextended(src_key, 0)) FROM"
            " (SELECT DISTINCT src_key FROM do_delta WHERE old_key IS NULL AND src_key IS NOT NULL) AS n"
        )
    ).one()
    (rows, xor, missing), (members, members_xor) = src, snap
    if rows == members + int(new) and xor == members_xor ^ int(new_xor or 0):
        return missing
    return None


def find_delta(
    staging: InDatabaseStaging, conn: Connection, cfg: AudienceConfig, context: bytes, before: int | None
) -> tuple[Delta, Mark | None, str]:
    """The delta, the mark to keep with the snapshot, and which comparison found it (``FULL`` or ``CHANGED``)."""
    p = staging.plan
    basis_ = basis(cfg, context, p.sql) if p.change_type else None
    if basis_ is None:
        return staging.find_delta(conn, before=before), None, FULL
    now = state.utcnow()
    mark = since(conn, cfg, basis_, now)
    if mark is not None:
        assert isinstance(cfg.source, SqlSource)
        size = before if before is not None else staging.snapshot_size(conn)
        found = find_changed_delta(staging, conn, mark, cfg.source.change_lookback, size)
        if found is not None:
            delta, value = found
            return delta, Mark(value, basis_, mark.compared_at), CHANGED
    delta = staging.find_delta(conn, before=before)
    return delta, Mark(full_mark(staging, conn), basis_, now), FULL


def _key_pass_sql(staging: InDatabaseStaging, half: int | None = None) -> str:
    """The source's keys full-joined with the snapshot's, the differences only; ``half``: one hash parity.

    Keys alone: the snapshot side can be read from its primary key's index instead of its wide rows.
    """
    p = staging.plan
    source, snapshot = "", ""
    if half is not None:
        source = f" WHERE coalesce(hashtext(r.k) & 1, 0) = {half}"
        snapshot = f" AND (hashtext(member_key) & 1) = {half}"
    return f"""
        SELECT s.k AS src_key, m.member_key AS old_key
        FROM (SELECT * FROM (SELECT nullif({p.key_expr()}, '') AS k FROM ({p.sql}) AS src) AS r{source}) AS s
        FULL JOIN (SELECT member_key FROM do_member WHERE audience = :aud{snapshot}) AS m ON m.member_key = s.k
        WHERE s.k IS NULL OR m.member_key IS NULL
        """
