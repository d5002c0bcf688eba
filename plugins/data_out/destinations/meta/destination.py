"""Meta Custom Audiences: add and remove through ``/{audience_id}/users``, full replace via ``usersreplace``.

Connection (type ``data_out_meta``): ``host`` the Graph API base URL (default https://graph.facebook.com),
``password`` the system-user access token, extra ``app_secret`` the app's secret: with it every call
carries ``appsecret_proof`` (HMAC-SHA256 of the token keyed by the secret, hex), as Meta's SDK sends it,
which apps with "Require app secret" on demand. Per audience: ``audience_id``, ``match_keys``,
``api_version`` (default and Meta's expiry dates in ``meta/versions.py``; an expired one is refused when
the audience is loaded).

Keys are normalised as Meta's customer-list and customer-information pages say (``identity.py``,
docs/identity.md) and sent SHA-256 hashed; EXTERN_ID is sent unhashed (trimmed, lower-cased). The phone
is digits with the country code and no ``+``. Meta does not say which rows were invalid, only how many:
``num_invalid_entries`` feeds the run's match figures rather than row-level rejects.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator, Sequence
from typing import cast

import requests

from data_out.connection_types import kind
from data_out.connections import ConnectionInfo
from data_out.destinations import register
from data_out.destinations.base import BatchResult, Destination, DestinationError, DestinationSettings, MemberRow, Op
from data_out.destinations.http import FORM_CONTENT_TYPE, HttpClient, form_encode
from data_out.destinations.meta.settings import MetaSettings
from data_out.identity import META_EXTRA_KEYS

MAX_ROWS = 10_000


@register
class MetaDestination(Destination):
    type_name = "meta"
    pool = kind("meta").pool  # sized in deploy/pools.json
    settings_model = MetaSettings
    default_conn_id = kind("meta").conn_type
    max_batch_rows = MAX_ROWS
    supports_replace = True
    # ``approximate_count_*`` is an estimate Meta updates hours after an upload is processed
    reported_size_is_live = False

    settings: MetaSettings

    def __init__(self, audience: str, settings: DestinationSettings, connection: ConnectionInfo) -> None:
        super().__init__(audience, settings, connection)
        from data_out.destinations.meta.hook import MetaHook  # bearer token and appsecret_proof from the connection

        self.client: HttpClient = MetaHook(connection=self.connection).client()
        self.path = f"/{self.settings.api_version}/{self.settings.audience_id}"
        #: where each match key sits in a ``MemberRow`` when every key is a stored hash (EMAIL, PHONE), so a
        #: row without extra keys is read by position (``_row``); ``None``: some key needs more than that
        direct = {"EMAIL": MemberRow._fields.index("email_sha256"), "PHONE": MemberRow._fields.index("phone_sha256")}
        keys = self.settings.match_keys
        self._direct = tuple(direct[k] for k in keys) if all(k in direct for k in keys) else None

    @classmethod
    def columns_for(cls, settings: DestinationSettings) -> dict[str, str]:
        assert isinstance(settings, MetaSettings)
        keys = set(settings.match_keys)
        cols = {}
        if "EMAIL" in keys:
            cols["email_sha256"] = "email_sha256"
        if "PHONE" in keys:
            cols["phone_sha256"] = "phone_digits_sha256"  # Meta: digits with country code, no "+"
        if "EXTERN_ID" in keys:
            cols["external_id"] = "external_id"
        if keys & set(META_EXTRA_KEYS):
            cols["extra"] = "extra"
        return cols

    @property
    def identity_columns(self) -> dict[str, str]:  # type: ignore[override]  # class-wide in the base
        return self.columns_for(self.settings)

    def _row(self, r: MemberRow) -> list[str]:
        if self._direct is not None and not r.extra:  # most rows: the same values as below, by position
            return cast(list[str], [r[i] or "" for i in self._direct])  # positions of str fields
        extra = json.loads(r.extra) if r.extra else {}
        values = {
            "EMAIL": r.email_sha256,
            "PHONE": r.phone_sha256,
            "EXTERN_ID": r.external_id.strip(" \t\r\n\0\x0b.").lower() if r.external_id else None,
        }
        return [values.get(k) or extra.get(k) or "" for k in self.settings.match_keys]

    def _payload(self, rows: Sequence[MemberRow]) -> str:
        rows_out = [self._row(r) for r in rows]
        return json.dumps({"schema": list(self.settings.match_keys), "data": rows_out}, separators=(",", ":"))

    def _result(self, resp: requests.Response) -> BatchResult:
        body = resp.json()
        received = int(body.get("num_received", 0))
        invalid = int(body.get("num_invalid_entries", 0))
        return BatchResult(received=received, matched=received - invalid)

    def push(self, op: Op, rows: Sequence[MemberRow], idempotency_key: str) -> BatchResult:
        resp = self.client.request(
            "POST" if op is Op.ADD else "DELETE",
            f"{self.path}/users",
            data=form_encode({"payload": self._payload(rows)}),
            headers={**FORM_CONTENT_TYPE, "Idempotency-Key": idempotency_key},
        )
        return self._result(resp)

    def replace(self, batches: Iterator[list[MemberRow]], total: int, idempotency_key: str) -> BatchResult:
        """One ``usersreplace`` session: Meta swaps the audience only when the last batch arrives.

        A batch whose answer was lost (timeout, 5xx) is not sent again: Meta documents no retry of a
        ``batch_seq``, and the stand-in, like the strictest reading of the docs, refuses one it already
        has. The session is abandoned instead (an unfinished session never swaps the audience) and the
        error is retryable: the next attempt opens a new session, which replaces the audience whole,
        so a session whose last batch did land is simply replaced again with the same members.
        """
        if total == 0:
            raise DestinationError(
                "meta: usersreplace cannot leave an audience empty; run an incremental sync to remove everyone",
                retryable=False,
            )
        session_id = secrets.randbits(52)
        result = BatchResult(received=0, matched=0)
        seq, batch = 0, next(batches, [])
        while True:
            following = next(batches, None)
            seq += 1
            session = {
                "session_id": session_id,
                "batch_seq": seq,
                "last_batch_flag": following is None,
                "estimated_num_total": total,
            }
            resp = self.client.request(
                "POST",
                f"{self.path}/usersreplace",
                data=form_encode({"payload": self._payload(batch), "session": json.dumps(session)}),
                headers={**FORM_CONTENT_TYPE, "Idempotency-Key": f"{idempotency_key}-{seq}"},
                resend_unanswered=False,
            )
            part = self._result(resp)
            result.received = (result.received or 0) + (part.received or 0)
            result.matched = (result.matched or 0) + (part.matched or 0)
            if following is None:
                return result
            batch = following

    def size(self) -> int | None:
        resp = self.client.request(
            "GET", self.path, params={"fields": "approximate_count_lower_bound,approximate_count_upper_bound"}
        )
        return int(resp.json().get("approximate_count_lower_bound", 0))

    def close(self) -> None:
        self.client.close()
