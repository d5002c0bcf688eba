"""Turning raw identifier values into a snapshot row's identity, in this process or in worker processes.

Normalising (``identity.py``, phone validation above all) is pure Python: about 20 µs a row, holding the
GIL, while the database waits. A first sync of 10M members spends minutes in it and a day's churn of
100,000 rows seconds, on one core. From ``POOL_MIN_ROWS`` rows on, the batches are normalised by a
small pool of forked worker processes, in order, with a fixed number of batches in flight (see
``in_order``), so memory stays bounded however large the change. Raw values reach the workers through the pool's pipes
only; workers never log and never touch a database connection.

While the workers live, the objects this process held when it forked them are frozen out of its garbage
collector (``heap.frozen_heap``): a collection here would copy every page of the heap the workers still
share, and the tree would hold the old heap twice.

Where a pool cannot start (no ``fork``, or a process that may not have children, such as a daemonic
multiprocessing worker) the batches are normalised here, one after the other: slower, never different.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any, TypeVar

from data_out import state
from data_out.config import AudienceConfig, Identifiers
from data_out.engine.holdout import bucket_for
from data_out.errors import SettingError
from data_out.heap import frozen_heap
from data_out.identity import identity_forms, normalize_meta_field, notes_text, sha256_hex

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: below this many rows to normalise, starting worker processes costs more than it saves
POOL_MIN_ROWS = 20_000
#: at most this many workers by default (``DATA_OUT_NORMALISE_WORKERS`` overrides)
MAX_WORKERS = 4
#: parts handed out before the caller's own work (``in_order``'s ``started``) runs alongside, or two per
#: worker if that is more: enough to keep them busy meanwhile; more only hold rows in memory
#: (docs/performance.md)
PREFETCH_PARTS = 4
#: the column order of ``member_rows``
MEMBER_COLUMNS = tuple(c.name for c in state.member.columns)
#: the columns ``Normaliser.identity`` computes, in the order it computes them: ``MEMBER_COLUMNS`` after
#: the audience, the member key and the fingerprint, which ``member_rows`` puts first
IDENTITY_COLUMNS = (
    "bucket",
    "email_sha256",
    "phone_e164_sha256",
    "phone_digits_sha256",
    "external_id",
    "extra",
    "email_issue",
    "phone_issue",
    "external_id_issue",
    "email_google_sha256",
    "id_notes",
)


@dataclass(frozen=True)
class Normaliser:
    """What a snapshot row's identity depends on besides its raw values; small and picklable for the workers."""

    audience: str
    identifiers: Identifiers
    holdout_salt: str | None

    @classmethod
    def for_audience(cls, cfg: AudienceConfig) -> Normaliser:
        return cls(cfg.name, cfg.identifiers, cfg.holdout.salt if cfg.holdout else None)

    def identity(self, key: str, raw: tuple[Any, ...]) -> dict[str, Any]:
        """The identity columns of one member from its raw (email, phone, external id, *extra) values."""
        return dict(zip(IDENTITY_COLUMNS, self.identity_row(key, raw), strict=True))

    def identity_row(self, key: str, raw: tuple[Any, ...]) -> tuple[Any, ...]:
        """``identity`` as a tuple in ``IDENTITY_COLUMNS`` order: what ``member_rows`` needs, without a dict.

        Every path normalises a row through this method (``identity`` and ``member_rows`` alike).
        """
        ids = self.identifiers
        f = identity_forms(raw[0], raw[1], raw[2], default_region=ids.default_region)
        notes = [r for r, mapped in ((f.email_reason, ids.email), (f.phone_reason, ids.phone)) if r and mapped]
        if f.external_id_reason and ids.external_id:
            notes.append(f.external_id_reason)
        extra = self._extra(raw[3:], notes) if ids.extra else None
        return (
            bucket_for(self.holdout_salt, key) if self.holdout_salt is not None else None,
            f.email_sha256,
            f.phone_e164_sha256,
            f.phone_digits_sha256,
            f.external_id,
            json.dumps(extra, sort_keys=True, separators=(",", ":")) if extra else None,
            # an identifier the audience does not map is not "missing", it is not asked for
            f.email_issue if ids.email else None,
            f.phone_issue if ids.phone else None,
            f.external_id_issue if ids.external_id else None,
            f.email_google_sha256,
            notes_text(notes),
        )

    def _extra(self, raw: tuple[Any, ...], notes: list[str]) -> dict[str, str]:
        """Meta's other match keys, hashed, by key; their reason codes go to ``notes``."""
        values = dict(zip(sorted(self.identifiers.extra), raw, strict=True))
        # a member's country shapes its state and postcode (US: state code, 5-digit ZIP)
        country = normalize_meta_field("COUNTRY", values["COUNTRY"]).value if "COUNTRY" in values else None
        extra = {}
        for name, value in values.items():
            norm = normalize_meta_field(name, value, country)
            if norm.value:
                extra[name] = sha256_hex(norm.value)
            if norm.reason:
                notes.append(norm.reason)
        return extra

    def member_rows(self, part: list[Any]) -> list[tuple[Any, ...]]:
        """``do_member`` rows (``MEMBER_COLUMNS`` order) for one batch of (key, fingerprint, n, *raw values).

        Identical duplicates come out once. Tuples, not dicts: they cross from the workers in a third of
        the bytes and go into COPY as they are.
        """
        out, seen, audience = [], set(), self.audience
        for row in part:
            key = row[0]
            if row[2] > 1:  # a duplicated key whose rows are identical: the first one stands for all
                if key in seen:
                    continue
                seen.add(key)
            out.append((audience, key, row[1], *self.identity_row(key, row[3:])))
        return out


def workers_for(rows: int) -> int:
    """How many processes should normalise ``rows`` rows: 1 (this one) for a small change or a single core."""
    configured = os.environ.get("DATA_OUT_NORMALISE_WORKERS")
    if configured is not None:
        if not configured.isdigit() or int(configured) < 1:
            raise SettingError(f"DATA_OUT_NORMALISE_WORKERS={configured!r} is not a whole number of at least 1")
        wanted = int(configured)
    else:
        wanted = min(os.cpu_count() or 1, MAX_WORKERS)
    if rows < POOL_MIN_ROWS or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    return wanted


def in_order(
    fn: Callable[[T], R], parts: Iterable[T], workers: int, started: Callable[[], None] | None = None
) -> Iterator[R]:
    """``fn`` over ``parts``, results in the order of ``parts``; with ``workers`` > 1 in forked processes.

    Parts are read lazily, a fixed number in flight: two per worker, or with ``started`` at least
    ``PREFETCH_PARTS`` (20,000 rows of 5,000-row batches), so a 10M-row stream never sits in memory.
    ``fn`` must be picklable (a module-level function or a bound method of a picklable object).
    ``started`` runs once before the first result is returned, while the workers are busy with the
    first parts: the caller's own work (database statements) then overlaps theirs.
    """
    if workers > 1:
        with frozen_heap():
            pool = _start_pool(workers)
            if pool is not None:
                yield from _pooled(pool, fn, parts, workers, started)
                return
    if started:
        started()
    yield from map(fn, parts)


def _pooled(
    pool: ProcessPoolExecutor,
    fn: Callable[[T], R],
    parts: Iterable[T],
    workers: int,
    started: Callable[[], None] | None,
) -> Iterator[R]:
    """``in_order`` with a started pool, which it shuts down at the end."""
    pending: deque[Future[R]] = deque()
    stream = iter(parts)
    try:
        for part in islice(stream, max(2 * workers, PREFETCH_PARTS) if started else 2 * workers):
            pending.append(pool.submit(fn, part))
        if started:
            started()
        while pending:
            yield pending.popleft().result()
            pending.extend(pool.submit(fn, part) for part in islice(stream, 1))  # the next part, if any
    finally:  # also when the caller stops early (an error while copying): drop what is still queued
        pool.shutdown(wait=True, cancel_futures=True)


def _start_pool(workers: int) -> ProcessPoolExecutor | None:
    """A started pool of ``workers`` forked processes, or ``None`` where this process may not fork any."""
    try:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"))
        pool.submit(int).result()  # processes start on the first submit: fail here, not mid-stream
    except (AssertionError, OSError, ValueError) as exc:  # AssertionError: a daemonic process has no children
        log.info("normalising in this process only: no worker processes (%s)", type(exc).__name__)
        return None
    return pool
