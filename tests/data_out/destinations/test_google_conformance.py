"""Every request the Google destinations send, parsed strictly by Google's own client libraries.

A full scenario (adds, removes, an identifier change, then a full resync or a replace) runs against each
stand-in; each API request it receives is parsed with the request type Google's library defines for
that route (``google-ads-datamanager`` for the Data Manager API, ``google-ads`` for the Google Ads
API) with ``ignore_unknown_fields=False``: an unknown field, a misspelt one or an enum value the API
does not define fails the parse. The documented limits are checked on the parsed messages. So the
client and its stand-in cannot share a misunderstanding of Google's contract.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import proto
import pytest
from google.ads.datamanager_v1.types import ingestion_service as dm
from google.ads.googleads.v26.enums.types.consent_status import ConsentStatusEnum
from google.ads.googleads.v26.enums.types.offline_user_data_job_type import OfflineUserDataJobTypeEnum
from google.ads.googleads.v26.services.types import google_ads_service
from google.ads.googleads.v26.services.types import offline_user_data_job_service as ads
from google.protobuf.json_format import ParseError

from data_out.connections import ConnectionInfo, engine_for
from data_out.destinations.google import destination as dm_destination
from data_out.destinations.google_ads import destination as ads_destination
from data_out.state import ensure_schema
from sandbox.standins.base import Request, Response, Running, StandIn
from tests.conftest import People
from tests.data_out.destinations.cases import CASES
from tests.data_out.destinations.test_contract import Env, person

HEX64 = re.compile(r"^[0-9a-f]{64}$")


class Capture:
    """Every API request a stand-in answers: (method, path, query, body); token and admin calls excluded."""

    def __init__(self, standin: StandIn) -> None:
        self.requests: list[tuple[str, str, dict[str, list[str]], bytes]] = []
        self.headers: list[dict[str, str]] = []
        self.inner = standin.dispatch
        standin.dispatch = self  # type: ignore[method-assign]

    def __call__(self, req: Request) -> Response:
        if req.path != "/token" and not req.path.startswith("/_admin"):
            self.requests.append((req.method, req.path, req.query, req.body))
            self.headers.append(req.headers)
        return self.inner(req)


def _scenario(kind: str, tmp_path: Path) -> tuple[Env, Capture]:
    standin = CASES[kind].make()
    engine = engine_for(ConnectionInfo("db", "sqlite", host=str(tmp_path / "db.sqlite")))
    ensure_schema(engine)
    capture = Capture(standin)
    with Running(standin) as running:
        env = Env(CASES[kind], standin, running.url, tmp_path, People(engine), engine)
        env.write(batch_size=7)
        rows = [person(i) for i in range(30)]
        env.people.set(rows)
        env.run("t/1")  # adds
        rows = rows[4:] + [person(100 + i) for i in range(3)]  # removes and adds
        rows[0] = {**rows[0], "email": "changed.address@example.com"}  # an identifier change
        env.people.set(rows)
        env.run("t/2")
        env.run("t/3", mode="replace" if CASES[kind].supports_replace else "full_resync")
        assert env.held() == env.expected(rows)
    return env, capture


def _parse(message: type[proto.Message], body: bytes) -> Any:
    return message.from_json(body.decode("utf-8") or "{}", ignore_unknown_fields=False)


@pytest.fixture(scope="module")
def dm_capture(tmp_path_factory: pytest.TempPathFactory) -> Capture:
    return _scenario("google", tmp_path_factory.mktemp("dm"))[1]


@pytest.fixture(scope="module")
def ads_capture(tmp_path_factory: pytest.TempPathFactory) -> Capture:
    return _scenario("google_ads", tmp_path_factory.mktemp("ads"))[1]


@pytest.fixture
def dm_requests(dm_capture: Capture) -> list[tuple[str, str, dict[str, list[str]], bytes]]:
    return dm_capture.requests


@pytest.fixture
def ads_requests(ads_capture: Capture) -> list[tuple[str, str, dict[str, list[str]], bytes]]:
    return ads_capture.requests


@pytest.mark.parametrize("capture", ["dm_capture", "ads_capture"])
def test_google_requests_carry_a_bearer_token_and_no_idempotency_key(capture: str, request: pytest.FixtureRequest):
    """Google ignores ``Idempotency-Key``: relying on it would be a misunderstanding, so none is sent."""
    headers = request.getfixturevalue(capture).headers
    assert headers and all("idempotency-key" not in h for h in headers)
    assert all(h["authorization"].startswith("Bearer ya29.") for h in headers)  # minted, not from the connection


# -- Data Manager API ---------------------------------------------------------------------------------

DM_ROUTES: dict[tuple[str, str], type[proto.Message]] = {
    ("POST", "/v1/audienceMembers:ingest"): dm.IngestAudienceMembersRequest,
    ("POST", "/v1/audienceMembers:remove"): dm.RemoveAudienceMembersRequest,
}


def _check_members(req: Any) -> None:
    assert 1 <= len(req.audience_members) <= dm_destination.MAX_MEMBERS_PER_REQUEST == 10_000
    assert req.encoding == dm.Encoding.HEX
    [dest] = req.destinations
    assert dest.operating_account.account_type.name == "GOOGLE_ADS"
    assert re.fullmatch(r"\d{10}", dest.operating_account.account_id) and dest.product_destination_id.isdigit()
    for member in req.audience_members:
        assert member._pb.WhichOneof("data") == "user_data"
        ids = member.user_data.user_identifiers
        assert 1 <= len(ids) <= dm_destination.MAX_IDENTIFIERS_PER_MEMBER == 10
        for ident in ids:
            kind = ident._pb.WhichOneof("identifier")
            assert kind in ("email_address", "phone_number")
            assert HEX64.match(getattr(ident, kind))


def test_every_data_manager_request_parses_strictly_with_googles_types(dm_requests):
    kinds: dict[str, int] = {}
    for method, path, query, body in dm_requests:
        if (method, path) == ("GET", "/v1/requestStatus:retrieve"):
            assert not body
            req = _parse(dm.RetrieveRequestStatusRequest, b'{"requestId": "%s"}' % query["requestId"][0].encode())
            assert set(query) == {"requestId"} and req.request_id
            kinds["status"] = kinds.get("status", 0) + 1
            continue
        if method == "GET" and re.fullmatch(r"/v1/accountTypes/GOOGLE_ADS/accounts/\d{10}/userLists/\d+", path):
            assert not body and not query  # GetUserListRequest: the name is the path, nothing else
            kinds["size"] = kinds.get("size", 0) + 1
            continue
        message = DM_ROUTES[(method, path)]  # no other route is called
        req = _parse(message, body)
        _check_members(req)
        if message is dm.IngestAudienceMembersRequest:
            assert req.consent.ad_user_data.name == "CONSENT_GRANTED"
            assert req.consent.ad_personalization.name == "CONSENT_GRANTED"
            assert req.terms_of_service.customer_match_terms_of_service_status.name == "ACCEPTED"
        kinds[message.__name__] = kinds.get(message.__name__, 0) + 1
    # the scenario exercised every kind of request, and each accepted one was diagnosed
    assert kinds["IngestAudienceMembersRequest"] >= 3 and kinds["RemoveAudienceMembersRequest"] >= 1
    assert kinds["status"] == kinds["IngestAudienceMembersRequest"] + kinds["RemoveAudienceMembersRequest"]
    assert kinds["size"] >= 3  # one size read a sync


def test_the_data_manager_oracle_refuses_what_google_refuses(dm_requests):
    """Positive control: the strict parse does fail on an unknown field and on an enum Google lacks."""
    body = next(b for m, p, _, b in dm_requests if p.endswith(":ingest")).decode()
    with pytest.raises(ParseError):
        _parse(dm.IngestAudienceMembersRequest, body.replace('"encoding"', '"encodingType"', 1).encode())
    with pytest.raises(ParseError):
        _parse(dm.IngestAudienceMembersRequest, body.replace('"CONSENT_GRANTED"', '"GRANTED"', 1).encode())


def test_the_data_manager_stand_in_refuses_what_the_oracle_refuses(dm_requests, tmp_path: Path):
    """The stand-in's own schema agrees with the library on the same two mistakes and the limits."""
    standin = CASES["google"].make()
    body = next(b for m, p, _, b in dm_requests if p.endswith(":ingest")).decode()
    with Running(standin) as running:
        dest = dm_destination.GoogleDestination(
            "a", dm_destination.GoogleSettings.model_validate({**CASES["google"].settings, "type": "google"}),
            CASES["google"].connection(running.url),
        )  # fmt: skip
        session, url = dest.client.session, running.url + "/v1/audienceMembers:ingest"
        for bad in (body.replace('"encoding"', '"encodingType"', 1), body.replace('"CONSENT_GRANTED"', '"GRANTED"', 1)):
            resp = session.post(url, data=bad, headers={"Content-Type": "application/json"})
            assert resp.status_code == 400 and resp.json()["error"]["status"] == "INVALID_ARGUMENT"
        big = json.loads(body)
        big["audienceMembers"] = big["audienceMembers"][:1] * 10_001
        resp = session.post(url, json=big)
        assert resp.status_code == 400 and "TOO_MANY_AUDIENCE_MEMBERS" in resp.text
        dest.close()


# -- Google Ads API -----------------------------------------------------------------------------------

_V = ads_destination.API_VERSION
ADS_ROUTES: list[tuple[str, re.Pattern[str], type[proto.Message]]] = [
    ("POST", re.compile(rf"/{_V}/customers/\d+/offlineUserDataJobs:create"), ads.CreateOfflineUserDataJobRequest),
    (
        "POST",
        re.compile(rf"/{_V}/customers/\d+/offlineUserDataJobs/\d+:addOperations"),
        ads.AddOfflineUserDataJobOperationsRequest,
    ),
    ("POST", re.compile(rf"/{_V}/customers/\d+/offlineUserDataJobs/\d+:run"), ads.RunOfflineUserDataJobRequest),
    ("POST", re.compile(rf"/{_V}/customers/\d+/googleAds:search"), google_ads_service.SearchGoogleAdsRequest),
]


def _ads_message(method: str, path: str) -> type[proto.Message]:
    for m, pattern, message in ADS_ROUTES:
        if m == method and pattern.fullmatch(path):
            return message
    raise AssertionError(f"unexpected Google Ads request {method} {path}")


def test_every_google_ads_request_parses_strictly_with_googles_types(ads_requests):
    seen: dict[str, int] = {}
    for method, path, _, body in ads_requests:
        message = _ads_message(method, path)
        req = _parse(message, body)
        seen[message.__name__] = seen.get(message.__name__, 0) + 1
        if message is ads.CreateOfflineUserDataJobRequest:
            job = req.job
            assert job.type_ == OfflineUserDataJobTypeEnum.OfflineUserDataJobType.CUSTOMER_MATCH_USER_LIST
            assert job.external_id > 0
            consent = job.customer_match_user_list_metadata.consent
            assert consent.ad_user_data == consent.ad_personalization == ConsentStatusEnum.ConsentStatus.GRANTED
        elif message is ads.AddOfflineUserDataJobOperationsRequest:
            assert req.enable_partial_failure
            identifiers = 0
            for i, op in enumerate(req.operations):
                kind = op._pb.WhichOneof("operation")
                if kind == "remove_all":
                    assert i == 0 and op.remove_all
                    continue
                ids = getattr(op, kind).user_identifiers
                assert 1 <= len(ids) <= 20
                for ident in ids:
                    field = ident._pb.WhichOneof("identifier")
                    assert field in ("hashed_email", "hashed_phone_number") and HEX64.match(getattr(ident, field))
                identifiers += len(ids)
            assert identifiers <= ads_destination.MAX_IDENTIFIERS_PER_REQUEST == 100_000
    assert seen["RunOfflineUserDataJobRequest"] == seen["CreateOfflineUserDataJobRequest"] >= 3
    assert seen["AddOfflineUserDataJobOperationsRequest"] >= seen["CreateOfflineUserDataJobRequest"]
    removes = [b for m, p, _, b in ads_requests if p.endswith(":addOperations") and b'"remove"' in b]
    replaces = [b for m, p, _, b in ads_requests if p.endswith(":addOperations") and b'"removeAll"' in b]
    assert removes and replaces  # the scenario sent removals and a replace


def test_the_google_ads_oracle_refuses_what_google_refuses(ads_requests):
    body = next(b for m, p, _, b in ads_requests if p.endswith(":create")).decode()
    with pytest.raises(ParseError):
        _parse(ads.CreateOfflineUserDataJobRequest, body.replace('"externalId"', '"externalID"').encode())
    with pytest.raises(ParseError):
        _parse(ads.CreateOfflineUserDataJobRequest, body.replace('"GRANTED"', '"CONSENT_GRANTED"', 1).encode())
