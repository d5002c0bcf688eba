"""Audience leases: two runs of one audience never interleave.

A lease row names the Airflow DAG run that owns an audience until it finishes or the lease expires
(a killed worker cannot release it). Re-entrant for the same holder, so task retries within the run
continue; a different run gets ``LeaseHeld`` naming the holder, and its stage task waits for its turn
(``StageAudienceOperator``) rather than failing. The holder renews it at the
start of every step and, while a push drains, every ``RENEW_EVERY``: only a run that stopped working
loses its audience, however long its pushes take. Airflow's ``max_active_runs=1``
is the first line of defence; this is the one that also covers backfills (whose runs Airflow counts
apart), manual runs and other DAGs.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Engine, and_, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from data_out import state
from data_out.errors import LEASE_NEXT_STEP, TerminalError

DEFAULT_TTL = dt.timedelta(hours=3)
#: how often a draining push renews its lease (a Google Ads job may poll for an hour)
RENEW_EVERY = dt.timedelta(minutes=1)


class LeaseHeld(TerminalError):
    """Another run holds the audience's lease: this run may not write its state."""

    next_step = LEASE_NEXT_STEP


def run_holder(dag_id: str, run_id: str) -> str:
    """The lease holder a DAG run writes as: the same for each of its tasks and their retries, unique per run."""
    return f"{dag_id}/{run_id}"


def acquire(engine: Engine, audience: str, holder: str, ttl: dt.timedelta = DEFAULT_TTL) -> None:
    lease = state.lease
    now = state.utcnow()
    values = {"holder": holder, "acquired_at": now, "expires_at": now + ttl}
    with engine.begin() as conn:
        taken = conn.execute(
            update(lease)
            .where(lease.c.audience == audience, or_(lease.c.holder == holder, lease.c.expires_at < now))
            .values(**values)
        ).rowcount
        if taken:
            return
    try:
        with engine.begin() as conn:
            conn.execute(insert(lease).values(audience=audience, **values))
    except IntegrityError:
        with engine.connect() as conn:
            row = conn.execute(select(lease.c.holder, lease.c.expires_at).where(lease.c.audience == audience)).first()
        who, until = row or ("another run", "unknown")
        raise LeaseHeld(
            f"audience {audience} is being synced by run {who!r} (lease until {until} UTC); "
            "this run did nothing. Wait for it to finish, or clear that run in Airflow first."
        ) from None


def check(engine: Engine, audience: str, holder: str, ttl: dt.timedelta = DEFAULT_TTL) -> None:
    """Fencing and heartbeat: refuse to write state for an audience this run no longer owns, and
    extend the lease of one it does."""
    lease = state.lease
    with engine.begin() as conn:
        mine = and_(lease.c.audience == audience, lease.c.holder == holder)
        if conn.execute(update(lease).where(mine).values(expires_at=state.utcnow() + ttl)).rowcount:
            return
        who = conn.scalar(select(lease.c.holder).where(lease.c.audience == audience))
    raise LeaseHeld(
        f"audience {audience}: this run ({holder!r}) does not hold the lease (holder: {who!r}); "
        "it may have expired. Rerun the DAG."
    )


def release(engine: Engine, audience: str, holder: str) -> None:
    lease = state.lease
    with engine.begin() as conn:
        conn.execute(delete(lease).where(lease.c.audience == audience, lease.c.holder == holder))
