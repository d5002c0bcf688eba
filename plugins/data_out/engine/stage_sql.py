"""In-database staging: when the source query runs in the state database itself (Postgres).

This is the co-located mode (what Hightouch calls Lightning and Census a bookkeeping schema): the state
lives in the warehouse, so the snapshot diff never leaves it. One REPEATABLE READ transaction:

1. one statement reads the source once, fingerprints every row in SQL and full-joins it with the stored
   snapshot by member key. Only the differences land in a temporary table, with the raw values of the
   new and changed rows: on a quiet day a few thousand rows out of millions;
2. a plain count of the source rows (no expression evaluated, so about a tenth of the first read) and
   the snapshot's size before prove that no member key appears twice. (A query with volatile results,
   ``random()`` or a ``LIMIT`` without an order, can make the two reads disagree; staging then fails
   on the snapshot's primary key, loudly.) Only a source that does have duplicates pays for grouping
   by key: the delta is then rebuilt by the grouped statement (duplicates keep the lowest fingerprint,
   so the choice is stable from run to run) and the changed rows are read again from the source;
3. gone and changed members leave ``do_member`` (primary-key deletes of the delta only);
4. the new and changed rows stream to Python, which normalises, hashes and buckets them (the rules live
   in ``identity.py`` and are not duplicated in SQL) and COPYs them into ``do_member``.

Unchanged rows never reach Python, so a no-change sync of 10M members moves no rows over the wire. Raw
identifiers stay in the database they already live in (the temporary table is dropped at commit); only
the delta's raw values pass through this process, one batch at a time, as on the Python path. A crash
anywhere rolls the whole transaction back; a large delta's normalised rows (a first sync) are also
committed to ``do_stage`` in chunks on a second connection (``ResumeLog``), so the next attempt copies
them in instead of normalising them again, and a worker killed more often than staging takes still
gets through.

The audience query is trusted to read only: every statement that evaluates it runs in a read-only,
time-limited savepoint (``sources.warehouse.read_only_section``) and writes only to temporary tables,
created empty beforehand. The delta's new keys are checked for contact data (emails, phone numbers)
before anything is written (``sources.base.contact_key_sql``).

The fingerprint here is built from Postgres' 64-bit ``hashtextextended`` (the stable hash behind hash
partitioning), one hash per column (see ``fingerprint_expr``), written as hex; the Python path's is an
MD5 hex. The two never compare equal, so an audience that moves between the paths (a source moved into
the state database, a column type changed) is normalised again once, which is correct, then never again.

The path is taken only when SQL reads the values exactly as Python would: the source and state engines
are the same Postgres database (UTF-8), every column used is text, varchar, an integer or a uuid (whose
``::text`` is Python's ``str()``), and the column names are plain identifiers. Otherwise the stager
falls back to the Python path, which is correct everywhere.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Select, and_, column, delete, func, select, table, text

from data_out import state
from data_out.config import AudienceConfig
from data_out.engine import figures
from data_out.errors import SettingError
from data_out.normalise import MEMBER_COLUMNS
from data_out.sources.base import (
    KEY_WHITESPACE,
    MAX_MEMBER_KEY_LENGTH,
    QueryShapeError,
    Source,
    contact_key_sql,
    contact_keys_error,
)
from data_out.sources.warehouse import SqlSource, driver_connection, read_only_section

log = logging.getLogger(__name__)

#: Postgres type OIDs whose ``::text`` equals ``str()`` of what psycopg returns: text, varchar, int2,
#: int4, int8, uuid. (char(n) pads, floats and timestamps format differently: those take the Python path.)
TEXT_SAFE_TYPES = frozenset({25, 1043, 21, 23, 20, 2950})
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_PG_SIZE = re.compile(r"^[0-9]{1,7}(kB|MB|GB)$")
DEFAULT_WORK_MEM = "1GB"
#: stale rows up to 1/LOOKUP_SHARE of the snapshot are deleted by key lookups rather than a join
LOOKUP_SHARE = 20
#: audiences with at least this many members are diffed in two halves at once (``materialise_in_halves``)
SPLIT_MIN_MEMBERS = 1_000_000
#: Postgres type OIDs a change column may have (``engine/quiet.py``), with the SQL type its mark is cast to and
#: the expression of "now" in that type (a mark never runs ahead of it): timestamptz, timestamp, date
CHANGE_TYPES = {
    1184: ("timestamptz", "now()"),
    1114: ("timestamp", "localtimestamp"),
    1082: ("date", "current_date"),
}
_SNAPSHOT_ID = re.compile(r"^[0-9A-F]+-[0-9A-F]+(-[0-9]+)?$")
NULL_TAG = "\x1eN"
_NO_WORKERS = "SET LOCAL max_parallel_workers_per_gather = 0"

A = TypeVar("A")
B = TypeVar("B")
#: a delta of at least this many rows to normalise is also written to ``do_stage`` as it goes, committed
#: every ``RESUME_CHUNK_ROWS`` rows, so a killed staging's work survives (``ResumeLog``);
#: ``DATA_OUT_STAGING_RESUME_MIN_ROWS`` overrides it
RESUMABLE_MIN_ROWS = 100_000
RESUME_CHUNK_ROWS = 100_000
#: the temporary table ``find_delta`` builds (the columns statements outside its own SQL use)
_DELTA = table("do_delta", column("src_key"), column("old_key"), column("new_fp"), column("old_fp"))


def _member_key_in_delta(side: str) -> Any:
    """``do_member.member_key`` among the delta's changed keys of one side (``old_key``: stale rows,
    ``src_key``: rows brought back), as one array of primary-key lookups: left to itself, Postgres
    joins a 200,000-row delta by scanning all 10M members."""
    keys = f"SELECT {side} FROM do_delta WHERE {side} IS NOT NULL AND new_fp IS DISTINCT FROM old_fp"
    return text(f"do_member.member_key = ANY(ARRAY({keys}))")


@dataclass
class Delta:
    """What the first pass found; every figure is a count of members or rows."""

    to_compute: int = 0
    gone: int = 0
    duplicate_keys: int = 0
    duplicate_rows: int = 0  # rows beyond the first of each duplicated key
    missing_keys: int = 0
    before: int = 0  # the snapshot's members before this run


def work_mem() -> str:
    """Memory Postgres may use for the snapshot diff's hash (its own server memory, per statement).

    At 10M members the keys' hash takes about 730 MB in one statement, or about 360 MB in each of the
    two halves that run at once; with less, Postgres splits it into batches on disk, which is correct
    and, where the batches stay in the page cache, no slower (docs/performance.md). So the default is
    modest, and ``DATA_OUT_STAGING_WORK_MEM`` overrides it (a Postgres size).
    """
    value = os.environ.get("DATA_OUT_STAGING_WORK_MEM", DEFAULT_WORK_MEM)
    if not _PG_SIZE.match(value):
        raise SettingError(f"DATA_OUT_STAGING_WORK_MEM={value!r} is not a Postgres size such as 512MB or 1GB")
    return value


def _same_database(a: Engine, b: Engine) -> bool:
    return a.url.render_as_string(hide_password=False) == b.url.render_as_string(hide_password=False)


def _quoted(column: str) -> str:
    return f'src."{column}"'


def _subquery(sql: str) -> str:
    """The audience's query as a subquery: a trailing semicolon would end the statement early."""
    return sql.strip().rstrip(";").strip()


class InDatabase:
    """Decides whether a source can be staged in the state database and builds the SQL that does it."""

    def __init__(
        self,
        engine: Engine,
        source: SqlSource,
        key_column: str,
        value_columns: Sequence[str | None],
        change_column: str | None = None,
    ):
        self.engine = engine
        self.source = source
        self.key_column = key_column
        self.value_columns = list(value_columns)
        self.sql = _subquery(source.sql)
        self.change_column = change_column
        #: the change column's (SQL type, "now" in that type), once ``usable`` found it of a supported type
        self.change_type: tuple[str, str] | None = None

    @classmethod
    def for_source(
        cls,
        engine: Engine,
        source: Source,
        key_column: str,
        value_columns: Sequence[str | None],
        change_column: str | None = None,
    ) -> InDatabase | None:
        """``None`` unless the cheap checks pass; ``usable`` then asks the database about column types."""
        if not isinstance(source, SqlSource) or engine.dialect.name != "postgresql":
            return None
        if not _same_database(engine, source.engine):
            return None
        if not all(_IDENTIFIER.match(c) for c in [key_column, *(v for v in value_columns if v)]):
            return None
        if change_column is not None and not _IDENTIFIER.match(change_column):
            return None
        return cls(engine, source, key_column, value_columns, change_column)

    def params(self, **extra: Any) -> dict[str, Any]:
        return {**self.source.params, **extra}

    def usable(self, conn: Connection) -> str | None:
        """Why this source cannot be staged in the database (``None`` if it can). Raises for missing columns."""
        encoding = conn.execute(text("SHOW server_encoding")).scalar()
        if str(encoding).upper() not in {"UTF8", "UTF-8"}:
            return f"the database encoding is {encoding}, not UTF8"
        with read_only_section(conn, self.source):
            cursor = conn.execute(text(f"SELECT * FROM ({self.sql}) AS src LIMIT 0"), self.params()).cursor
        types: dict[str, Any] = {col[0]: col[1] for col in cursor.description or ()}  # DB-API: (name, type_code, ...)
        needed = [self.key_column, *(c for c in self.value_columns if c)]
        missing = [c for c in [*needed, self.change_column] if c and c not in types]
        if missing:
            raise QueryShapeError(
                f"{self.source.label}: the query returns columns {list(types)} but not {missing}; "
                "select them (or alias them) or change the column names in the audience file"
            )
        odd = [c for c in needed if types[c] not in TEXT_SAFE_TYPES]
        if self.change_column:
            self.change_type = CHANGE_TYPES.get(types[self.change_column])
            if self.change_type is None:
                log.warning(
                    "%s: change column %s is not a timestamp, timestamptz or date: every run compares in full",
                    self.source.label,
                    self.change_column,
                )
        return f"columns {odd} are not text, integer or uuid" if odd else None

    def key_expr(self) -> str:
        return f"btrim({_quoted(self.key_column)}::text, :ws)"

    def fingerprint_expr(self) -> str:
        """The row's 64-bit fingerprint: the context's hash XOR one hash per value column.

        Each column is hashed with its own seed (its position), so moving a value to another column
        changes the result; NULL hashes under the negated seed, so no value's hash equals it other
        than by a 64-bit accident; an unmapped column is fixed by the context. Hashing each value in
        place costs a tenth of building an encoded row to hash (1M rows, one core: 0.02 s over the
        scan against 0.22 s).
        """
        parts = ["hashtextextended(:fp_context, 0)"]
        for i, col in enumerate(self.value_columns, start=1):
            if col is not None:
                v = f"{_quoted(col)}::text"
                parts.append(f"coalesce(hashtextextended({v}, {i}), hashtextextended(:null_tag, -{i}))")
        return "to_hex(" + " # ".join(parts) + ")"

    def fingerprint_params(self, context: bytes) -> dict[str, Any]:
        return {
            "fp_context": context.decode("utf-8"),
            "null_tag": NULL_TAG,
            "ws": KEY_WHITESPACE,
        }


@contextlib.contextmanager
def alongside(
    conn: Connection, here: Callable[[Connection], A], there: Callable[[Connection], B]
) -> Iterator[tuple[A, B, Connection]]:
    """``here`` on ``conn`` and ``there`` on a helper connection, at once, both in ``conn``'s snapshot.

    The helper imports this transaction's snapshot (``pg_export_snapshot``), so both statements read the
    same source and the same snapshot rows: two cores on one consistent read. Yields both results and the
    helper, whose transaction (and any temporary table it made) ends when the block does. Neither side
    gets parallel workers: the two sides already keep the cores busy.
    """
    snapshot = str(conn.execute(text("SELECT pg_export_snapshot()")).scalar())
    if not _SNAPSHOT_ID.match(snapshot):
        raise RuntimeError(f"unexpected snapshot id {snapshot!r} from pg_export_snapshot()")
    failed: list[BaseException] = []
    theirs: list[B] = []
    with conn.engine.connect().execution_options(isolation_level="REPEATABLE READ") as helper:

        def other_side() -> None:
            try:
                helper.exec_driver_sql(f"SET TRANSACTION SNAPSHOT '{snapshot}'")  # first in its transaction
                helper.execute(text(_NO_WORKERS))
                theirs.append(there(helper))
            except BaseException as exc:  # re-raised in the caller's thread below
                failed.append(exc)

        thread = threading.Thread(target=other_side, name="stage-alongside", daemon=True)
        thread.start()
        try:
            conn.execute(text(_NO_WORKERS))
            mine = here(conn)
            conn.execute(text("SET LOCAL max_parallel_workers_per_gather TO DEFAULT"))  # the scans that follow
        finally:
            thread.join()
        if failed:
            raise failed[0]
        yield mine, theirs[0], helper
        helper.rollback()  # it only ever read, or wrote its own temporary tables


class InDatabaseStaging:
    """The steps of the module docstring, on one connection inside one transaction."""

    def __init__(self, plan: InDatabase, audience: str, context: bytes, batch_size: int) -> None:
        self.plan = plan
        self.audience = audience
        self.context = context
        self.batch_size = batch_size
        self.grouped = False  # True once duplicates forced the grouped delta (raw values not carried)
        self.resuming = False  # True when an interrupted staging left computed rows in do_stage

    def _params(self, **extra: Any) -> dict[str, Any]:
        return self.plan.params(aud=self.audience, **self.plan.fingerprint_params(self.context), **extra)

    def source_rows(self, with_values: bool, also: str = "", where: str = "") -> str:
        """The source as (member key, fingerprint[, raw values]); the key is NULL when blank.

        Keys longer than ``MAX_MEMBER_KEY_LENGTH`` are not filtered here: testing the length in the
        same expression makes Postgres trim every key three times (a third of the statement's cost).
        Such a key never matches the snapshot, so it lands in the delta, where ``find_delta`` turns it
        into a row without a key. ``also`` adds columns and ``where`` a filter (``engine/quiet.py``: the change
        column and the rows past its mark).
        """
        p = self.plan
        values = "".join(
            f", {_quoted(c)} AS v{i}" if c else f", NULL::text AS v{i}" for i, c in enumerate(p.value_columns)
        )
        columns = f"nullif({p.key_expr()}, '') AS member_key, {p.fingerprint_expr()} AS fp"
        return f"""
            SELECT {columns}{values if with_values else ""}{also}
            FROM ({p.sql}) AS src{where}"""

    def materialise(self, conn: Connection, table: str, select_sql: str, **params: Any) -> None:
        """``select_sql`` into a new temporary ``table``: created empty, then filled in a read-only section.

        (``CREATE TABLE AS`` is refused in read-only mode, so the table is made first, from the plan alone.)
        """
        conn.execute(
            text(f"CREATE TEMP TABLE {table} ON COMMIT DROP AS {select_sql} WITH NO DATA"), self._params(**params)
        )
        with read_only_section(conn, self.plan.source):
            conn.execute(text(f"INSERT INTO {table} {select_sql}"), self._params(**params))

    def _diff_sql(self, half: int | None = None) -> str:
        """The full join of the source with the snapshot; ``half``: only keys of that hash parity.

        Key-less rows go with half 0, so each source row lands in exactly one half.
        """
        source, snapshot = "", ""
        if half is not None:
            source = f" WHERE coalesce(hashtext(r.member_key) & 1, 0) = {half}"
            snapshot = f" AND (hashtext(member_key) & 1) = {half}"
        return f"""
            SELECT s.member_key AS src_key, m.member_key AS old_key, s.fp AS new_fp, m.raw_fp AS old_fp,
                   1 AS n, {", ".join(f"s.v{i}" for i in range(len(self.plan.value_columns)))}
            FROM (SELECT * FROM ({self.source_rows(with_values=True)}) AS r{source}) AS s
            FULL JOIN (SELECT member_key, raw_fp FROM do_member WHERE audience = :aud{snapshot}) AS m
                   ON m.member_key = s.member_key
            WHERE s.fp IS DISTINCT FROM m.raw_fp"""

    def find_delta(self, conn: Connection, before: int | None = None) -> Delta:
        """Build ``do_delta``: new, changed and gone members (and key-less rows), in one read of the source.

        ``before``: the snapshot's size when it is known (``figures.carried``); else it is counted.
        """
        conn.execute(text(f"SET LOCAL work_mem = '{work_mem()}'"))  # the hash of the snapshot's keys
        if before is None:
            before = self.snapshot_size(conn)
        if before >= SPLIT_MIN_MEMBERS:
            self.materialise_in_halves(conn, "do_delta", self._diff_sql)
        else:
            self.materialise(conn, "do_delta", self._diff_sql())
        conn.execute(  # an over-long key matched nothing, so every such row is here: it has no usable key
            text(f"UPDATE do_delta SET src_key = NULL WHERE length(src_key) > {MAX_MEMBER_KEY_LENGTH}")
        )
        rows = self.source_count(conn)
        gone, new_keys, missing = conn.execute(
            text(
                """
                SELECT count(*) FILTER (WHERE src_key IS NULL AND old_key IS NOT NULL),
                       count(DISTINCT src_key) FILTER (WHERE old_key IS NULL),
                       count(*) FILTER (WHERE src_key IS NULL AND old_key IS NULL)
                FROM do_delta
                """
            )
        ).one()
        if rows - missing > before - gone + new_keys:  # more keyed rows than distinct keys: a key appears twice
            conn.execute(text("DROP TABLE do_delta"))
            self._find_grouped_delta(conn)
        return self.summarise(conn, before, int(missing))

    def snapshot_size(self, conn: Connection) -> int:
        return state.scalar_int(conn, text("SELECT count(*) FROM do_member WHERE audience = :aud"), aud=self.audience)

    def source_count(self, conn: Connection) -> int:
        """The source's row count, a read without any expression evaluated."""
        with read_only_section(conn, self.plan.source):
            return state.scalar_int(conn, text(f"SELECT count(*) FROM ({self.plan.sql}) AS src"), **self.plan.params())

    def summarise(self, conn: Connection, before: int, missing: int) -> Delta:
        """The finished ``do_delta``: contact keys refused, statistics taken, its figures counted."""
        self._refuse_contact_keys(conn)
        conn.execute(text("ANALYZE do_delta"))  # temp tables are never auto-analysed
        row = conn.execute(
            text(
                """
                SELECT count(*) FILTER (WHERE src_key IS NOT NULL AND new_fp IS DISTINCT FROM old_fp),
                       count(*) FILTER (WHERE src_key IS NULL AND old_key IS NOT NULL),
                       count(*) FILTER (WHERE src_key IS NOT NULL AND n > 1),
                       coalesce(sum(n - 1) FILTER (WHERE src_key IS NOT NULL AND n > 1), 0)
                FROM do_delta
                """
            )
        ).one()
        to_compute, gone, duplicate_keys, duplicate_rows = (int(v) for v in row)
        return Delta(to_compute, gone, duplicate_keys, duplicate_rows, missing_keys=missing, before=before)

    def materialise_in_halves(self, conn: Connection, table: str, sql_of_half: Callable[[int], str]) -> None:
        """A full join in two halves by key hash, at once: this connection and a helper sharing its snapshot.

        ``sql_of_half(half)`` is the join restricted to keys of that hash parity (``_diff_sql``, or the
        key-only pass of ``engine/quiet.py``); the result lands in the temporary ``table``.

        Postgres 15 runs a full join on one core only (parallel full joins came in 16). Split by the
        parity of the key's hash, each half builds a hash table half the size; the helper imports this
        transaction's snapshot (``pg_export_snapshot``), so both read the same source and snapshot,
        and its half is copied into ``do_delta`` here: two cores each build half the hash table at once
        (the gain at 10M is in docs/performance.md).

        Each half runs without parallel workers: the two halves already keep the cores busy, and
        workers would only pass every scanned row through a queue to their half (at 10M, with two
        workers each: 9.5 s; without: 7.8 s).
        """

        def half(c: Connection, which: int) -> None:
            c.execute(text(f"SET LOCAL work_mem = '{work_mem()}'"))
            self.materialise(c, table if which == 0 else f"{table}_half", sql_of_half(which))

        with alongside(conn, lambda c: half(c, 0), lambda c: half(c, 1)) as (_, _, helper):
            reader, writer = driver_connection(helper), driver_connection(conn)
            with (
                reader.cursor() as rc,
                writer.cursor() as wc,
                rc.copy(f"COPY {table}_half TO STDOUT") as out,
                wc.copy(f"COPY {table} FROM STDIN") as into,
            ):
                for block in out:
                    into.write(block)

    def _find_grouped_delta(self, conn: Connection) -> None:
        """The delta for a source with duplicate keys: grouped by key, the lowest fingerprint stands."""
        self.grouped = True
        self.materialise(
            conn,
            "do_delta",
            f"""
                WITH s AS (
                    SELECT member_key, min(fp) AS raw_fp, count(*) AS n
                    FROM ({self.source_rows(with_values=False)}) AS r
                    WHERE length(member_key) BETWEEN 1 AND {MAX_MEMBER_KEY_LENGTH}
                    GROUP BY 1
                ), m AS (
                    SELECT member_key, raw_fp FROM do_member WHERE audience = :aud
                )
                SELECT s.member_key AS src_key, m.member_key AS old_key,
                       s.raw_fp AS new_fp, m.raw_fp AS old_fp, coalesce(s.n, 0) AS n
                FROM s FULL JOIN m ON m.member_key = s.member_key
                WHERE s.raw_fp IS DISTINCT FROM m.raw_fp OR s.n > 1
                """,
        )

    def _refuse_contact_keys(self, conn: Connection) -> None:
        """Every key that reaches the snapshot passes through the delta: refuse emails and phones there."""
        found = state.scalar_int(conn, text(f"SELECT count(*) FROM do_delta WHERE {contact_key_sql('src_key')}"))
        if found:
            raise contact_keys_error(self.plan.source.label, self.plan.key_column, found, "among new and changed rows")

    @staticmethod
    def changed_keys() -> Select:
        """The keys of new, changed and gone members, each with whether it left the snapshot
        (``changes.add_keys`` records them)."""
        d = _DELTA
        key = func.coalesce(d.c.src_key, d.c.old_key)
        return select(key, d.c.src_key.is_(None)).where(d.c.new_fp.is_distinct_from(d.c.old_fp))

    def drop_stale(self, conn: Connection, delta: Delta, cfg: AudienceConfig | None = None) -> list[int] | None:
        """Gone and changed members leave the snapshot; changed ones come back from ``stream_changed``.

        A usual day's few stale members are deleted by primary-key lookups of their keys. Left to
        itself, Postgres would join even a small delta by scanning the whole snapshot, which costs far
        more than the lookups. A large share of the audience is deleted through that join, which is then cheaper.
        With ``cfg``, returns the figures of the deleted rows (``figures.of_rows``), from the delete itself.
        """
        m, d = state.member, _DELTA
        if (delta.to_compute + delta.gone) * LOOKUP_SHARE <= delta.before:  # an upper bound of the stale rows
            gone = delete(m).where(m.c.audience == self.audience, _member_key_in_delta("old_key"))
        else:
            stale = and_(d.c.old_key.is_not(None), d.c.new_fp.is_distinct_from(d.c.old_fp))
            gone = delete(m).where(m.c.audience == self.audience, m.c.member_key == d.c.old_key, stale)
        if cfg is None:
            conn.execute(gone)
            return None
        return figures.of_rows(conn, cfg, gone.returning(*m.c).cte("gone"))

    def figures_of_new(self, conn: Connection, cfg: AudienceConfig) -> list[int]:
        """The figures of the rows ``stream_changed`` brought back, by primary-key lookups of their keys."""
        m = state.member
        return figures.of_rows(conn, cfg, m, m.c.audience == self.audience, _member_key_in_delta("src_key"))

    def stream_changed(self, conn: Connection) -> Any:
        """(key, fingerprint, n, *raw values) of new and changed members only, in batches (a server-side cursor).

        The delta carries them already; a grouped delta does not, and the source is read again
        (the same snapshot, thanks to REPEATABLE READ) for its changed keys only.
        """
        p = self.plan
        values = [f"v{i}" for i in range(len(p.value_columns))]
        # rows an interrupted staging computed and committed (``take_over`` brings them in) are not streamed
        kept = (
            " AND NOT EXISTS (SELECT 1 FROM do_stage s WHERE s.audience = :aud AND s.computed"
            " AND s.member_key = d.src_key AND s.raw_fp = d.new_fp)"
            if self.resuming
            else ""
        )
        if not self.grouped:
            sql = f"SELECT src_key, new_fp, n, {', '.join(values)} FROM do_delta d WHERE src_key IS NOT NULL{kept}"
        else:
            # one row per key: identical duplicates (same fingerprint, same values) must not reach
            # the COPY twice, and they may fall into different batches. Read from the source into a
            # table first: a cursor over the source would go on evaluating it outside the read-only section
            self.materialise(
                conn,
                "do_changed",
                f"""
                SELECT DISTINCT ON (d.src_key) d.src_key, d.new_fp, d.n, {", ".join("s." + v for v in values)}
                FROM ({self.source_rows(with_values=True)}) AS s
                JOIN do_delta d ON d.src_key = s.member_key
                WHERE d.new_fp IS DISTINCT FROM d.old_fp AND d.new_fp = s.fp{kept}
                ORDER BY d.src_key
                """,
            )
            sql = "SELECT * FROM do_changed"
        result = conn.execute(
            text(sql),
            self._params(),
            execution_options={"stream_results": True, "yield_per": self.batch_size},  # this statement only
        )
        return result.partitions(self.batch_size)

    def find_leftovers(self, conn: Connection) -> bool:
        """Whether an interrupted staging of this audience left computed rows behind (``ResumeLog``)."""
        s = state.stage
        first = conn.execute(select(s.c.id).where(s.c.audience == self.audience, s.c.computed).limit(1)).first()
        self.resuming = first is not None
        return self.resuming

    def take_over(self, conn: Connection) -> int:
        """Copy into ``do_member`` the rows interrupted stagings computed for this delta's new and changed
        members; ``stream_changed`` left them out. Returns how many. A row is taken only for the same
        key and fingerprint, which covers the raw values and everything that shapes their normalisation.
        """
        if not self.resuming:
            return 0
        cols = ", ".join(MEMBER_COLUMNS)
        picked = ", ".join(f"s.{c}" for c in MEMBER_COLUMNS)
        return conn.execute(
            text(
                f"""
                INSERT INTO do_member ({cols})
                SELECT DISTINCT ON (s.member_key) {picked}
                FROM do_stage s JOIN do_delta d ON d.src_key = s.member_key AND d.new_fp = s.raw_fp
                WHERE s.audience = :aud AND s.computed AND d.new_fp IS DISTINCT FROM d.old_fp
                ORDER BY s.member_key, s.id
                """
            ),
            {"aud": self.audience},
        ).rowcount

    @staticmethod
    def copy_members(conn: Connection, rows: list[tuple[Any, ...]]) -> None:
        """COPY normalised rows (``normalise.MEMBER_COLUMNS`` order) into ``do_member``: several times
        faster than INSERT for large first syncs."""
        if not rows:
            return
        cursor = driver_connection(conn).cursor()  # the same session, inside our transaction
        with cursor, cursor.copy(f"COPY do_member ({', '.join(MEMBER_COLUMNS)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def stage_exclusion(self, conn: Connection, excluded: InDatabase) -> None:
        """An excluded audience whose source is in this database: its keys read read-only, then inserted."""
        conn.execute(text("CREATE TEMP TABLE do_excluded_keys (k text) ON COMMIT DROP"))
        with read_only_section(conn, excluded.source):
            conn.execute(
                text(
                    f"""
                    INSERT INTO do_excluded_keys
                    SELECT k FROM (SELECT {excluded.key_expr()} AS k FROM ({excluded.sql}) AS src) AS r
                    WHERE length(k) BETWEEN 1 AND {MAX_MEMBER_KEY_LENGTH}
                    """
                ),
                excluded.params(ws=KEY_WHITESPACE),
            )
        conn.execute(
            text(
                "INSERT INTO do_exclusion (audience, member_key) SELECT DISTINCT :aud, k FROM do_excluded_keys "
                "ON CONFLICT DO NOTHING"
            ),
            {"aud": self.audience},
        )
        conn.execute(text("DROP TABLE do_excluded_keys"))


def resumable_min_rows() -> int:
    value = os.environ.get("DATA_OUT_STAGING_RESUME_MIN_ROWS")
    if value is None:
        return RESUMABLE_MIN_ROWS
    if not value.isdigit():
        raise SettingError(f"DATA_OUT_STAGING_RESUME_MIN_ROWS={value!r} is not a whole number of rows")
    return int(value)


class ResumeLog:
    """Normalised rows of a large delta, also written to ``do_stage`` on a second connection and committed
    every ``RESUME_CHUNK_ROWS`` rows.

    The staging transaction itself commits only at the end (the snapshot switches at once), so a kill
    used to lose every normalised row. What this log committed survives it: the next attempt leaves
    those rows out of its stream and copies them in (``InDatabaseStaging.take_over``). Each batch is
    one COPY into the open chunk transaction, so memory stays at one batch. ``clear`` empties the
    audience's rows once the staging committed.
    """

    def __init__(self, engine: Engine, audience: str, run_id: int) -> None:
        self.engine = engine
        self.audience = audience
        self.run_id = run_id
        self.conn: Connection | None = None
        self.uncommitted = 0
        self.committed = 0

    def write(self, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        if self.conn is None:
            self.conn = self.engine.connect()
            self.conn.begin()
        cursor = driver_connection(self.conn).cursor()
        columns = ", ".join((*MEMBER_COLUMNS, "run_id", "computed"))
        with cursor, cursor.copy(f"COPY do_stage ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row((*row, self.run_id, True))
        self.uncommitted += len(rows)
        if self.uncommitted >= RESUME_CHUNK_ROWS:
            self.conn.commit()
            self.conn.begin()
            self.committed += self.uncommitted
            self.uncommitted = 0

    def close(self) -> None:
        """Commit what is open (a failure that is not a kill keeps it too) and let the connection go."""
        if self.conn is not None:
            self.conn.commit()
            self.conn.close()
            self.conn = None
            self.committed += self.uncommitted
            self.uncommitted = 0

    def clear(self) -> None:
        """The staging committed: no attempt will need these rows (nor those of the attempts before it)."""
        s = state.stage
        with self.engine.begin() as conn:
            conn.execute(delete(s).where(s.c.audience == self.audience))
