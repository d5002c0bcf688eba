"""A destination for tests: keeps members in a dict, matches on email and phone, records every request.

It behaves like a well-behaved vendor: an idempotency key it has seen is acknowledged without applying
the batch again, and ``applied_keys`` counts how often each key was *applied* (must never exceed 1).
``fail_after_apply`` makes it accept and apply a batch and then fail the call, as when a response is lost.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import ClassVar, Literal

from data_out.destinations import register
from data_out.destinations.base import BatchResult, Destination, DestinationError, DestinationSettings, MemberRow, Op


class MemoryStore:
    def __init__(self) -> None:
        self.members: dict[str, dict[str, MemberRow]] = {}
        self.applied_keys: Counter[str] = Counter()
        self.requests: list[tuple[str, str, list[MemberRow]]] = []
        self.fail_after_apply: set[int] = set()  # request numbers (1-based) whose response is "lost"
        self.fail_before_apply: set[int] = set()
        self.reject: dict[str, str] = {}  # member_key -> reason, for adds
        self.refuse_remove: dict[str, str] = {}  # member_key -> reason, for removes (the member stays)
        self.results: dict[str, dict[str, str]] = {}  # idempotency key -> rejects it answered with

    def audience(self, name: str) -> dict[str, MemberRow]:
        return self.members.setdefault(name, {})


STORE = MemoryStore()


class MemorySettings(DestinationSettings):
    type: Literal["memory"]
    audience_id: str = "aud-1"


@register
class MemoryDestination(Destination):
    type_name = "memory"
    settings_model = MemorySettings
    default_conn_id = "memory_default"
    max_batch_rows = 3
    identity_columns: ClassVar = {"email_sha256": "email_sha256", "phone_sha256": "phone_e164_sha256"}

    def push(self, op: Op, rows: Sequence[MemberRow], idempotency_key: str) -> BatchResult:
        STORE.requests.append((op.value, idempotency_key, list(rows)))
        n = len(STORE.requests)
        if n in STORE.fail_before_apply:
            raise DestinationError("503 from the stand-in", retryable=True)
        if idempotency_key not in STORE.applied_keys:
            members = STORE.audience(self.settings.audience_id)
            rejected = {}
            for r in rows:
                if op is Op.ADD and r.member_key in STORE.reject:
                    rejected[r.member_key] = STORE.reject[r.member_key]
                elif op is Op.ADD:
                    members[r.member_key] = r
                elif r.member_key in STORE.refuse_remove:
                    rejected[r.member_key] = STORE.refuse_remove[r.member_key]
                else:
                    members.pop(r.member_key, None)
            STORE.applied_keys[idempotency_key] += 1
            STORE.results[idempotency_key] = rejected
        rejected = STORE.results[idempotency_key]  # a replay gets the original answer
        if n in STORE.fail_after_apply:
            raise DestinationError("connection reset after the batch was applied", retryable=True)
        return BatchResult(rejected=rejected, received=len(rows))

    def size(self) -> int:
        return len(STORE.audience(self.settings.audience_id))
