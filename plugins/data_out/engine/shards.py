"""Key-hash shards: split one destination's planned batches so that Airflow can push them in parallel.

A member's shard is ``key_hash(member_key) % shards``, computed in SQL by the planner. The hash is the
first 32 bits of the MD5 of the key's UTF-8 bytes, read as an unsigned integer: Postgres computes it
with built-ins, SQLite with a function registered on every connection (see ``connections.py``), and
both give the same number, so a plan written on one dialect means the same on the other. MD5 is used
for spreading keys evenly, not for security.
"""

from __future__ import annotations

import hashlib
import math
import os
from typing import Any

from sqlalchemy import BigInteger
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

#: the name of the SQLite function that ``connections.py`` registers
SQLITE_FUNCTION = "do_key_hash"

#: planned rows per push shard before the planner adds another shard; the environment variable
#: ``DATA_OUT_ROWS_PER_SHARD`` (set on the workers) changes it for a deployment
ROWS_PER_SHARD = int(os.environ.get("DATA_OUT_ROWS_PER_SHARD") or 200_000)

#: upper bound on shards per (audience, destination): far below Airflow's max_map_length (1024),
#: and more parallelism than any vendor's rate limit allows for one audience anyway
MAX_PUSH_SHARDS = 32


def key_hash(member_key: str) -> int:
    """The first 32 bits of MD5(member_key) as an unsigned integer; equal to ``member_key_hash`` in SQL."""
    return int(hashlib.md5(member_key.encode("utf-8"), usedforsecurity=False).hexdigest()[:8], 16)


def shard_of(member_key: str, shards: int) -> int:
    return key_hash(member_key) % shards


def shard_count(planned_rows: int, limit: int, rows_per_shard: int = ROWS_PER_SHARD) -> int:
    """One shard per ``rows_per_shard`` planned rows, at least one, at most ``limit``.

    A small diff is one shard, so a small audience is one mapped push task as before.
    """
    return max(1, min(limit, MAX_PUSH_SHARDS, math.ceil(planned_rows / rows_per_shard)))


class member_key_hash(FunctionElement):  # noqa: N801 - used like a SQL function
    """``key_hash`` of a text column, in SQL; compiled per dialect below."""

    type = BigInteger()
    inherit_cache = True
    name = "member_key_hash"


@compiles(member_key_hash, "postgresql")
def _pg_member_key_hash(element: member_key_hash, compiler: Any, **kw: Any) -> str:
    arg = compiler.process(element.clauses, **kw)
    return f"(('x' || substr(md5({arg}), 1, 8))::bit(32)::bigint)"


@compiles(member_key_hash, "sqlite")
def _sqlite_member_key_hash(element: member_key_hash, compiler: Any, **kw: Any) -> str:
    return f"{SQLITE_FUNCTION}({compiler.process(element.clauses, **kw)})"


def register_sqlite(dbapi_conn: Any) -> None:
    """Make ``do_key_hash`` available on a new SQLite connection (called from the connect listener)."""
    dbapi_conn.create_function(SQLITE_FUNCTION, 1, _sqlite_key_hash, deterministic=True)


def _sqlite_key_hash(value: str | None) -> int | None:
    return None if value is None else key_hash(value)
