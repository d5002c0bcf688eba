"""Where is this person, and why: one email, phone or member key against every audience.

The value is normalised and hashed by the same functions the sync uses (``data_out.identity``), so a
lookup finds exactly what the sync stored. The raw value lives only in this request's memory: it is never
logged, stored, put in an exception or echoed into the page; the lookup is recorded with the Airflow user
and the hash only (``do_ui_lookup``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Engine

from data_out import identity, state
from data_out.engine.holdout import holdout_threshold
from data_out.hashing import sha256_hex
from data_out.ui import queries
from data_out.ui.catalog import Catalog

Kind = Literal["email", "phone", "member_key"]
KINDS: tuple[Kind, ...] = ("email", "phone", "member_key")


@dataclass
class DestinationStatus:
    name: str
    acknowledged_since: Any = None
    in_holdout: bool | None = None
    rejected: bool = False
    #: the last add (or refresh) the destination acknowledged: sync, run, DAG run, batch number (None: a
    #: replace, or a row acknowledged before batches were recorded on it), ``exact`` False: the sync was
    #: inferred from the time of the acknowledgement
    last_add: dict[str, Any] | None = None
    #: planned and not yet acknowledged: op (add, remove, refresh), batch number, planning sync and run
    pending: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class AudienceAnswer:
    audience: str
    dag_id: str
    member: bool
    member_key: str | None = None
    held_out: bool | None = None
    excluded_by: list[str] = field(default_factory=list)
    destinations: list[DestinationStatus] = field(default_factory=list)
    windows: dict[str, str] = field(default_factory=dict)
    role: str = ""


@dataclass
class LookupResult:
    kind: Kind
    value_sha256: str | None
    problem: str | None  # why nothing could be looked up (the value did not normalise): no raw value in it
    answers: list[AudienceAnswer]
    rejects: list[dict[str, Any]]
    events: list[dict[str, Any]]

    @property
    def found(self) -> list[AudienceAnswer]:
        return [a for a in self.answers if a.member]


def _key_hash(key: str) -> str:
    """How ``do_reject`` records a member key (``engine/push.py``)."""
    return sha256_hex(key)


def _matches(engine: Engine, catalog: Catalog, kind: Kind, value: str) -> tuple[str | None, str | None, list[dict]]:
    """(hash recorded for the lookup, problem, snapshot rows found) for one entered value."""
    names = sorted(catalog.audiences)
    with engine.connect() as conn:
        if kind == "member_key":
            key = identity.normalize_external_id(value)
            if key.value is None:  # not ``key.ok``: the type checker narrows on the value itself
                return None, f"the member key is {key.issue}", []
            return _key_hash(key.value), None, queries.members_by(conn, names, "member_key", key.value)
        if kind == "email":
            forms = identity.identity_forms(value, None, None, "US")
            if forms.email_sha256 is None:
                return None, f"the email address is {forms.email_issue}", []
            return forms.email_sha256, None, queries.members_by(conn, names, "email_sha256", forms.email_sha256)
        # a phone written without "+" is read in each audience's own default region, as its sync read it
        by_region: dict[str, list[str]] = {}
        for name in names:
            by_region.setdefault(catalog.audiences[name].default_region, []).append(name)
        recorded, problem, rows = None, None, []
        for region, group in sorted(by_region.items()):
            forms = identity.identity_forms(None, value, None, region)
            if forms.phone_e164_sha256 is None:
                problem = f"the phone number is {forms.phone_issue}"
                continue
            recorded = recorded or forms.phone_e164_sha256
            rows += queries.members_by(conn, group, "phone_e164_sha256", forms.phone_e164_sha256)
        return recorded, (None if recorded else problem), rows


def _last_add(ack: dict[str, Any], origins: dict[int, dict[str, Any]]) -> dict[str, Any] | None:
    """The sync, run and batch that wrote the person's acknowledged (or rejected) row."""
    sync_id = ack["acked_sync"] or ack.get("inferred_sync")
    origin = origins.get(sync_id) if sync_id is not None else None
    if origin is None:
        return None
    return {
        "sync_id": sync_id,
        "run_id": origin["run_id"],
        "dag_run_id": origin["dag_run_id"],
        "mode": origin["mode"],
        "batch": ack["acked_batch"],
        "at": ack["acked_at"],
        "exact": ack["acked_sync"] is not None,
    }


def lookup(engine: Engine, catalog: Catalog, kind: Kind, value: str, username: str) -> LookupResult:
    """Answer for every configured audience, and record who asked (with the hash only)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    value_hash, problem, rows = _matches(engine, catalog, kind, value)
    # the keys found through the entered value, then every audience those keys are in (an audience
    # without that identifier still knows the person by key)
    keys = sorted({r["member_key"] for r in rows})
    names = sorted(catalog.audiences)
    answers: list[AudienceAnswer] = []
    with engine.connect() as conn:
        bucket = queries.memberships(conn, names, keys)
        excluded = queries.exclusions_of(conn, keys)
        acks = queries.acks_of(conn, names, keys)
        for a in acks:
            if a["acked_sync"] is None:  # acknowledged before rows recorded their sync: the one running then
                found = queries.sync_at(conn, a["audience"], a["destination"], a["acked_at"])
                a["inferred_sync"] = found["id"] if found else None
        origins = queries.syncs_by_id(conn, [a["acked_sync"] or a.get("inferred_sync") for a in acks])
        places = [
            (name, d, k)
            for name in names
            for k in keys
            if (name, k) in bucket
            for d in catalog.audiences[name].destinations
        ]
        pending = queries.pending_of(conn, places)
        rejects = queries.rejects_of(conn, [_key_hash(k) for k in keys])
        events = queries.send_events_of(conn, keys)
    for name in names:
        info = catalog.audiences[name]
        mine = [k for k in keys if (name, k) in bucket]
        answer = AudienceAnswer(
            audience=name, dag_id=info.dag_id, member=bool(mine), windows=info.windows, role=info.role
        )
        if mine:
            key = mine[0]
            answer.member_key = key
            b = bucket[(name, key)]
            if info.holdout_percent is not None and b is not None:
                answer.held_out = b < holdout_threshold(info.holdout_percent)
            elif info.holdout_percent is None:
                answer.held_out = False
            if (name, key) in excluded:
                answer.excluded_by = [x for x in info.exclusions if (x, key) in bucket]
            for d in info.destinations:
                ack = next(
                    (a for a in acks if a["audience"] == name and a["destination"] == d and a["member_key"] == key),
                    None,
                )
                answer.destinations.append(
                    DestinationStatus(
                        name=d,
                        acknowledged_since=ack["acked_at"] if ack and not ack["rejected"] else None,
                        in_holdout=ack["in_holdout"] if ack else None,
                        rejected=bool(ack and ack["rejected"]),
                        last_add=_last_add(ack, origins) if ack else None,
                        pending=[
                            p for p in pending if (p["audience"], p["destination"], p["member_key"]) == (name, d, key)
                        ],
                    )
                )
        answers.append(answer)
    with engine.begin() as conn:
        queries.record_lookup(conn, username, kind, value_hash, sum(a.member for a in answers), state.utcnow())
    return LookupResult(kind, value_hash, problem, answers, rejects, events)
