"""The contract every destination implements.

A destination is one module with a settings model (what an audience YAML may say about it) and a class
that pushes a batch of adds or removes and reports what the far side accepted. Batching, idempotency
keys, the commit protocol, reject recording and run tallies live in ``engine/push.py`` and are shared by all.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

from data_out.connections import ConnectionInfo
from data_out.engine.shards import MAX_PUSH_SHARDS
from data_out.errors import VENDOR_REFUSED_NEXT_STEP, VENDOR_UNAVAILABLE_NEXT_STEP, DataOutError

IDENTIFIER_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class Op(StrEnum):
    ADD = "add"
    REMOVE = "remove"
    #: a full resync re-sending a member the destination acknowledged unchanged: an add everywhere
    #: except where an add is also an event (``Destination.distinguishes_refresh``)
    REFRESH = "refresh"

    @property
    def adds(self) -> bool:
        """The member is (again) in the audience afterwards: an add or a refresh."""
        return self is not Op.REMOVE


class GuardSettings(BaseModel):
    """Mass-removal guard: refuse to push a diff that looks like a broken source rather than churn."""

    model_config = ConfigDict(extra="forbid")

    max_removal_share: float = Field(0.5, gt=0, le=1)
    allow_empty_source: bool = False
    removal_window_days: float = Field(
        7,
        ge=0,
        description="removals are judged against the largest acknowledged size within this many days, so "
        "shrinks in a row add up; 0 judges each run on its own",
    )


#: ``DriftSettings.min_reported_share`` of a destination whose reported size is live, unless the audience says
LIVE_SIZE_MIN_SHARE = 0.5


class DriftSettings(BaseModel):
    """Reconciliation thresholds. Set on the audience; a destination's ``drift`` overrides only the
    fields it names."""

    model_config = ConfigDict(extra="forbid")

    max_gap_pct: float = Field(5.0, ge=0, description="acknowledged vs destination-reported size")
    min_reported_share: float | None = Field(
        None,
        ge=0,
        le=1,
        description="right after a push, the destination must report at least this share of the "
        "acknowledged members, or the sync is marked size_mismatch; 0 turns the check off. Default: "
        f"{LIVE_SIZE_MIN_SHARE} where the destination's reported size is live, off where it lags behind "
        "uploads (``Destination.reported_size_is_live``); reconciliation's gap checks judge those a day later",
    )
    max_source_gap_pct: float = Field(5.0, ge=0, description="latest source snapshot vs acknowledged")
    max_day_over_day_pct: float = Field(30.0, ge=0)
    max_baseline_pct: float = Field(50.0, ge=0, description="vs the median of the last baseline_runs")
    baseline_runs: int = Field(7, ge=1)
    min_match_rate: float = Field(0.3, ge=0, le=1)
    max_holdout_pp: float = Field(2.0, ge=0, description="observed vs configured holdout, percentage points")
    max_reject_rate: float = Field(0.05, ge=0, le=1)
    max_failed_sync_rate: float = Field(0.0, ge=0, le=1)
    repair: bool = Field(True, description="rebuild the destination when its gaps breach")
    rebuild_every_days: int | None = Field(
        None, ge=1, description="also rebuild on a schedule: when the last full resync is older than this"
    )


#: a member is refreshed once this share of its membership lifetime has passed since its last upload
DEFAULT_REFRESH_AT_SHARE = 0.8


class MembershipSettings(BaseModel):
    """Settings of a destination whose members expire (``Destination.membership_lifetime_days``)."""

    membership_lifetime_days: int | None = Field(
        None,
        ge=2,
        description="the list's own membership duration, when it is shorter than the vendor's maximum",
    )
    refresh_at_share: float = Field(
        DEFAULT_REFRESH_AT_SHARE,
        ge=0.5,
        le=0.95,
        description="re-send a member once this share of its lifetime has passed since it was last sent",
    )


class DestinationSettings(BaseModel):
    """Fields every destination accepts in an audience file; modules subclass it with their own."""

    model_config = ConfigDict(extra="forbid")

    type: str
    name: str | None = Field(None, description="label, unique within the audience; defaults to type")
    conn_id: str | None = Field(None, description="Airflow connection; defaults to the destination's own")
    include: Literal["targeted", "holdout", "all"] = "targeted"
    batch_size: int | None = Field(None, gt=0)
    push_shards: int | None = Field(
        None,
        ge=1,
        le=MAX_PUSH_SHARDS,
        description="at most this many parallel push tasks; default: one per 200,000 planned rows",
    )
    guard: GuardSettings | None = None
    drift: DriftSettings | None = None

    @field_validator("name")
    @classmethod
    def _name_is_identifier(cls, v: str | None) -> str | None:
        if v is not None and not IDENTIFIER_RE.match(v):
            raise ValueError(
                "must be lowercase letters, digits and underscores, starting with a letter "
                "(it becomes part of a task id)"
            )
        return v

    @property
    def label(self) -> str:
        return self.name or self.type


class MemberRow(NamedTuple):
    """One member as a destination sees it: key plus the hashed identifiers it matches on."""

    member_key: str
    email_sha256: str | None
    phone_sha256: str | None
    external_id: str | None
    extra: str | None
    in_holdout: bool


#: Identity columns of the acknowledged and pending tables, in ``MemberRow`` order after member_key.
IDENTITY_COLUMNS = ("email_sha256", "phone_sha256", "external_id", "extra", "in_holdout")


@dataclass
class BatchResult:
    """What the destination said about one batch. Members not in ``rejected`` were accepted."""

    rejected: dict[str, str] = field(default_factory=dict)  # member_key -> reason (never a raw value)
    received: int | None = None  # vendor's own count, when it reports one
    matched: int | None = None  # vendor-reported valid/matched entries, for match-rate figures


class DestinationError(DataOutError):
    """A batch failed. ``retryable`` tells the caller whether trying again later can help.

    The next step follows: a refusal needs a person to fix a setting, an outage resumes by itself.
    """

    def __init__(self, message: str, *, retryable: bool, next_step: str | None = None) -> None:
        default = VENDOR_UNAVAILABLE_NEXT_STEP if retryable else VENDOR_REFUSED_NEXT_STEP
        super().__init__(message, retryable=retryable, next_step=next_step or default)


class PayloadTooLarge(DestinationError):
    """The vendor refused a request as too large (HTTP 413): nothing of it was applied.

    A destination sizes its requests under the vendor's limits, so this is a sizing bug in Data Out;
    the push path reports it as one and splits the batch rather than failing it on every run.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


#: joins a planned batch's idempotency key and the number of one of its halves after a 413
SPLIT_MARK = "~"


def split_key(idempotency_key: str, half: int) -> str:
    """The key of one half of a batch split after a 413: new for each half, stable across retries."""
    return f"{idempotency_key}{SPLIT_MARK}{half}"


def planned_key(idempotency_key: str) -> str:
    """The key the planner gave the batch, whatever splits followed: what vendor-side dedupe ids
    (Segment's ``messageId``) derive from, so a member's event keeps its id when its batch is split."""
    return idempotency_key.split(SPLIT_MARK, 1)[0]


class Destination(ABC):
    """Base class: one instance per (audience, destination) for the length of a task."""

    type_name: ClassVar[str]
    settings_model: ClassVar[type[DestinationSettings]]
    default_conn_id: ClassVar[str]
    max_batch_rows: ClassVar[int]
    #: ad platforms and other activation channels must never receive holdout members
    activation: ClassVar[bool] = True
    #: acknowledged-state column -> member snapshot column it is filled from
    identity_columns: ClassVar[Mapping[str, str]] = {}
    #: whether ``replace`` swaps the whole audience in one vendor-side operation
    supports_replace: ClassVar[bool] = False
    #: whether ``push`` is given ``Op.REFRESH`` as such; otherwise it gets ``Op.ADD`` (a list or a table
    #: that already holds the member simply keeps it)
    distinguishes_refresh: ClassVar[bool] = False
    #: the Airflow pool its push tasks run in: caps concurrent calls to the vendor across all workers
    #: (``deploy/pools.json`` defines one per destination type, sized from the vendor's rate limits)
    pool: ClassVar[str] = "default_pool"
    #: how many push shards of one audience may call the vendor at once (1: the vendor refuses
    #: concurrent writes to one list)
    max_push_shards: ClassVar[int] = MAX_PUSH_SHARDS
    #: days a member stays in the vendor's audience after its last upload (None: until removed); members
    #: acknowledged that long ago are re-sent as refreshes before then (``plan.refresh_policy``)
    membership_lifetime_days: ClassVar[int | None] = None
    #: whether ``size`` counts what was just uploaded; False where the vendor's count is an estimate that
    #: lags behind uploads (hours to a day), so the post-push size check is off by default
    reported_size_is_live: ClassVar[bool] = True

    @classmethod
    def columns_for(cls, settings: DestinationSettings) -> dict[str, str]:
        """``identity_columns`` for these settings, without a connection (staging counts per destination)."""
        return dict(cls.identity_columns)

    def __init__(self, audience: str, settings: DestinationSettings, connection: ConnectionInfo) -> None:
        self.audience = audience
        self.settings = settings
        self.connection = connection

    @property
    def batch_rows(self) -> int:
        return min(self.settings.batch_size or self.max_batch_rows, self.max_batch_rows)

    @property
    def lifetime_days(self) -> int | None:
        """The membership lifetime refreshes must beat: the audience's own (``membership_lifetime_days``
        in settings that have it, for a list configured shorter) within the vendor's."""
        vendor = self.membership_lifetime_days
        own = getattr(self.settings, "membership_lifetime_days", None)
        if vendor is None:
            return None
        return min(vendor, own) if own else vendor

    @property
    def refresh_at_share(self) -> float:
        """Share of the lifetime after which an acknowledged member is due for a refresh."""
        return float(getattr(self.settings, "refresh_at_share", None) or DEFAULT_REFRESH_AT_SHARE)

    @property
    def push_shard_limit(self) -> int:
        return min(self.settings.push_shards or self.max_push_shards, self.max_push_shards)

    @abstractmethod
    def push(self, op: Op, rows: Sequence[MemberRow], idempotency_key: str) -> BatchResult:
        """Apply one batch. Must be safe to call again with the same key (the far side dedupes)."""

    def replace(self, batches: Iterator[list[MemberRow]], total: int, idempotency_key: str) -> BatchResult:
        """Replace the whole audience with ``batches`` (``total`` rows); only where ``supports_replace``."""
        raise DestinationError(f"{self.type_name} has no replace API; use a full resync instead", retryable=False)

    def size(self) -> int | None:
        """Members the destination itself reports, for run records and reconciliation."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Release connections; called once at the end of a task."""
