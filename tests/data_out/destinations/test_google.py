"""Google destinations: consent, renewing credentials, Data Manager diagnostics, Google Ads job semantics.

Both run against their stand-ins over real HTTP; google-auth mints the tokens at the stand-ins' ``/token``.
"""

from __future__ import annotations

import hashlib
import json
import pkgutil
import re
from collections.abc import Iterator
from pathlib import Path

import google.ads.googleads
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from data_out.config import load_audiences
from data_out.connections import ConnectionInfo, engine_for
from data_out.destinations.base import DestinationError, MemberRow, Op
from data_out.destinations.google.auth import token_uri
from data_out.destinations.google.destination import GoogleDestination
from data_out.destinations.google.errors import describe_google_error
from data_out.destinations.google.settings import GoogleSettings
from data_out.destinations.google_ads.destination import API_VERSION, GoogleAdsDestination
from data_out.destinations.google_ads.settings import GoogleAdsSettings
from data_out.engine.runner import RunFailed
from data_out.state import ensure_schema
from sandbox.standins.base import Request, Response, Running, StandIn
from sandbox.standins.google_ads import GoogleAdsStandIn
from sandbox.standins.google_dm import RANGES, GoogleDataManagerStandIn
from sandbox.standins.google_oauth import CLIENT_ID, JWT_BEARER, REFRESH_TOKEN
from tests.conftest import People, write_audience
from tests.data_out.destinations.cases import AUDIENCE, CASES
from tests.data_out.destinations.test_contract import Env, person

GOOGLE_TYPES = ("google", "google_ads")


def _env(case_name: str, standin: StandIn, tmp_path: Path) -> Iterator[Env]:
    case = CASES[case_name]
    engine = engine_for(ConnectionInfo("db", "sqlite", host=str(tmp_path / "db.sqlite")))
    ensure_schema(engine)
    with Running(standin) as running:
        env = Env(case, standin, running.url, tmp_path, People(engine), engine)
        env.write()
        yield env


def _rows(n: int = 3) -> list[MemberRow]:
    return [MemberRow(f"k{i}", f"{i:064x}", f"{i + 1000:064x}", None, None, False) for i in range(n)]


# -- consent is explicit ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", GOOGLE_TYPES)
def test_a_google_destination_without_consent_is_refused_with_the_fix(tmp_path: Path, kind: str):
    settings = {k: v for k, v in CASES[kind].settings.items() if k != "consent"}
    write_audience(
        tmp_path,
        "no_consent_v1",
        f"""
        name: no_consent_v1
        owner: tests
        purpose: consent check
        source: {{conn_id: db, query: SELECT customer_id, email FROM people}}
        identifiers: {{email: email}}
        destinations:
          - {json.dumps({"type": kind, **settings})}
        """,
    )
    loaded = load_audiences(tmp_path)
    assert not loaded.audiences
    text = "\n".join(map(str, loaded.errors))
    assert "no_consent_v1.yaml" in text and "consent is required" in text
    assert "ad_user_data: GRANTED, ad_personalization: GRANTED" in text  # says what to add


@pytest.mark.parametrize(("kind", "model"), [("google", GoogleSettings), ("google_ads", GoogleAdsSettings)])
def test_half_a_consent_or_unspecified_is_refused(kind: str, model: type):
    base = {**CASES[kind].settings, "type": kind}
    with pytest.raises(ValueError, match="must set ad_personalization"):
        model.model_validate({**base, "consent": {"ad_user_data": "GRANTED"}})
    with pytest.raises(ValueError, match="ad_user_data"):
        model.model_validate({**base, "consent": {"ad_user_data": "UNSPECIFIED", "ad_personalization": "GRANTED"}})
    assert model.model_validate(base).consent.ad_personalization == "GRANTED"


def test_the_data_manager_destination_needs_the_customer_match_terms():
    settings = {**CASES["google"].settings, "type": "google"}
    del settings["customer_match_terms_accepted"]
    with pytest.raises(ValueError, match="customer_match_terms_accepted: true is required"):
        GoogleSettings.model_validate(settings)


def test_shipped_audiences_validate_with_consent():
    loaded = load_audiences(Path(__file__).parents[3] / "include" / "audiences")
    assert loaded.errors == []
    google = [d for a in loaded.audiences.values() for d in a.config.destinations if d.type in GOOGLE_TYPES]
    assert {d.type for d in google} == set(GOOGLE_TYPES)  # the default (Data Manager) and the Ads API path
    assert all(d.consent.ad_user_data in ("GRANTED", "DENIED") for d in google)


# -- credentials that renew ---------------------------------------------------------------------------


class _RevokingAfter:
    """Revokes every access token after the ``n``-th API request it answered: an early expiry mid-sync."""

    def __init__(self, standin: StandIn, n: int) -> None:
        self.standin, self.n, self.seen = standin, n, 0
        self.inner = standin.dispatch
        standin.dispatch = self  # type: ignore[method-assign]

    def __call__(self, req: Request) -> Response:
        resp = self.inner(req)
        if req.path != "/token" and not req.path.startswith("/_admin"):
            self.seen += 1
            if self.seen == self.n:
                self.standin.oauth.expire_tokens()  # type: ignore[attr-defined]
        return resp


@pytest.mark.parametrize("kind", GOOGLE_TYPES)
def test_the_access_token_expires_mid_sync_and_the_sync_completes_after_a_refresh(tmp_path: Path, kind: str):
    standin = CASES[kind].make()
    for env in _env(kind, standin, tmp_path):
        rows = [person(i) for i in range(30)]
        env.people.set(rows)
        _RevokingAfter(standin, 5)
        env.run("t/1")
        assert env.held() == env.expected(rows)
        assert env.last_sync()["status"] == "success"
        assert standin.oauth.grants == ["refresh_token", "refresh_token"]  # type: ignore[attr-defined]
        assert [s for _, _, s in standin.log].count(401) == 1  # one refused request, then a refresh and a retry


@pytest.mark.parametrize("kind", GOOGLE_TYPES)
def test_a_token_refused_after_a_refresh_is_a_terminal_error_naming_the_credential(tmp_path: Path, kind: str):
    standin = CASES[kind].make()
    for env in _env(kind, standin, tmp_path):
        env.people.set([person(i) for i in range(4)])
        standin.oauth.token_ttl = 3600.0
        _RefusingEveryToken(standin)
        with pytest.raises(RunFailed):
            env.run("t/1")
        error = env.last_sync()["error"]
        assert "refused too" in error and "refresh token" in error and f"data_out_{kind}" in error
        assert len(standin.oauth.grants) == 2  # type: ignore[attr-defined]  # minted, refused, renewed once, refused
        assert CASES[kind].secret not in error and REFRESH_TOKEN not in error


class _RefusingEveryToken(_RevokingAfter):
    """Revokes every access token after each API request: even a freshly minted one is refused next."""

    def __init__(self, standin: StandIn) -> None:
        super().__init__(standin, 0)
        original = standin.oauth.check  # type: ignore[attr-defined]

        def check(req: Request) -> None:
            standin.oauth.expire_tokens()  # type: ignore[attr-defined]
            original(req)

        standin.oauth.check = check  # type: ignore[attr-defined]


def test_a_revoked_refresh_token_fails_with_the_credential_to_fix(tmp_path: Path):
    standin = GoogleDataManagerStandIn()
    standin.oauth.refresh_tokens.clear()
    with Running(standin) as running:
        dest = GoogleDestination(AUDIENCE, _settings(), CASES["google"].connection(running.url))
        with pytest.raises(DestinationError) as exc:
            dest.push(Op.ADD, _rows(), "key-1")
    assert not exc.value.retryable
    assert "invalid_grant" in str(exc.value) and "refresh token" in str(exc.value)
    assert standin.lists == {}


def test_a_service_account_key_mints_tokens_through_the_jwt_bearer_grant(tmp_path: Path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    email = "data-out@project.iam.gserviceaccount.com"
    standin = GoogleDataManagerStandIn()
    standin.oauth.service_accounts[email] = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    sa = {
        "type": "service_account",
        "client_email": email,
        "private_key": pem.decode(),
        "private_key_id": "k1",
        "token_uri": "https://oauth2.googleapis.com/token",  # the connection's token_uri wins
    }
    with Running(standin) as running:
        conn = ConnectionInfo(
            "data_out_google",
            "data_out_google",
            host=running.url,
            password=json.dumps(sa),
            extra={"token_uri": "/token"},
        )
        dest = GoogleDestination(AUDIENCE, _settings(), conn)
        dest.push(Op.ADD, _rows(), "key-1")
        standin.oauth.expire_tokens()
        dest.push(Op.ADD, _rows(5), "key-2")
    assert standin.oauth.grants == [JWT_BEARER, JWT_BEARER]
    assert len(standin.lists[("1234567890", "555")]) == 5


def test_a_service_account_key_signed_by_another_key_is_refused(tmp_path: Path):
    signer = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    registered = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    email = "data-out@project.iam.gserviceaccount.com"
    standin = GoogleDataManagerStandIn()
    standin.oauth.service_accounts[email] = registered.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pem = signer.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    sa = {"type": "service_account", "client_email": email, "private_key": pem.decode(), "token_uri": "x"}
    with Running(standin) as running:
        conn = ConnectionInfo(
            "g", "data_out_google", host=running.url, extra={"token_uri": "/token", "service_account": sa}
        )
        with pytest.raises(DestinationError, match="service account key of connection 'g'.*Invalid JWT Signature"):
            GoogleDestination(AUDIENCE, _settings(), conn).push(Op.ADD, _rows(), "key-1")


def test_the_token_endpoint_is_configurable():
    def uri(host: str | None, extra: dict) -> str:
        return token_uri(ConnectionInfo("g", "data_out_google", host=host, extra=extra), "https://api.example")

    assert uri(None, {}) == "https://oauth2.googleapis.com/token"
    assert uri("http://127.0.0.1:8080", {"token_uri": "/token"}) == "http://127.0.0.1:8080/token"
    assert uri(None, {"token_uri": "https://sts.example/token"}) == "https://sts.example/token"


def test_a_connection_without_a_credential_says_what_to_set():
    conn = ConnectionInfo("g", "data_out_google", host="http://127.0.0.1:9", login=CLIENT_ID)
    with pytest.raises(DestinationError, match=r"client_secret, refresh_token missing.*service account key"):
        GoogleDestination(AUDIENCE, _settings(), conn)


# -- Data Manager diagnostics -------------------------------------------------------------------------


def _settings() -> GoogleSettings:
    return GoogleSettings.model_validate({**CASES["google"].settings, "type": "google"})


def test_request_status_feeds_received_and_matched_into_the_run_record(tmp_path: Path):
    standin = GoogleDataManagerStandIn()
    for env in _env("google", standin, tmp_path):
        rows = [person(i) for i in range(20)]
        sent = env.expected(rows)
        for ident in list(sent)[:6]:  # Google finds no account for 6 of the members sent
            standin.unmatched_hashes.update(v for _, v in ident)
        env.write(batch_size=100)
        env.people.set(rows)
        env.run("t/1")
        sync = env.last_sync()
        rate = 100 * (len(sent) - 6) / len(sent)
        [lower] = [lo for lo, hi, _ in RANGES if lo <= rate < hi]  # the range Google reports holds the rate
        assert sync["received"] == len(sent)
        assert sync["matched"] == len(sent) * lower // 100 < len(sent) - 6
        env.people.set(rows[:10])
        env.run("t/2")  # removals only: Google processed every record, no match rate to report
        removed = env.last_sync()
        assert removed["removed"] == removed["received"] == removed["matched"] > 0


def test_gmail_addresses_reach_the_data_manager_in_googles_form(tmp_path: Path):
    standin = GoogleDataManagerStandIn()
    for env in _env("google", standin, tmp_path):
        rows = [person(i, email=f"First.Last+{i}@Gmail.com") for i in range(12)]
        env.people.set(rows)
        env.run("t/1")
        emails = {v for member in env.held() for k, v in member if k == "emailAddress"}
        assert emails == {hashlib.sha256(b"firstlast@gmail.com").hexdigest()}  # Google's documented form


def test_a_request_still_processing_reports_no_match_figure(tmp_path: Path):
    standin = GoogleDataManagerStandIn(processing_polls=10)
    with Running(standin) as running:
        dest = GoogleDestination(AUDIENCE, _settings(), CASES["google"].connection(running.url))
        result = dest.push(Op.ADD, _rows(), "key-1")
    assert (result.received, result.matched) == (3, None)


def test_a_request_google_failed_fails_the_batch_with_its_reasons(tmp_path: Path):
    standin = GoogleDataManagerStandIn()
    original = standin.status

    def failed(req, m):  # type: ignore[no-untyped-def]
        resp = original(req, m)
        for entry in resp.body["requestStatusPerDestination"]:
            entry["requestStatus"] = "FAILED"
            entry["errorInfo"] = {
                "errorCounts": [{"recordCount": "3", "reason": "PROCESSING_ERROR_REASON_UNSPECIFIED"}]
            }
        return resp

    standin.routes = [(m, p, failed if h == original else h) for m, p, h in standin.routes]
    with Running(standin) as running:
        dest = GoogleDestination(AUDIENCE, _settings(), CASES["google"].connection(running.url))
        with pytest.raises(DestinationError, match="failed at Google: PROCESSING_ERROR_REASON_UNSPECIFIED: 3") as exc:
            dest.push(Op.ADD, _rows(), "key-1")
    assert not exc.value.retryable


def test_the_google_error_formatter_survives_any_body():
    def resp(status: int, body: object) -> requests.Response:
        r = requests.Response()
        r.status_code = status
        r._content = json.dumps(body).encode() if not isinstance(body, bytes) else body
        return r

    assert "body of 11000000 bytes" in describe_google_error(resp(413, {"error": "body of 11000000 bytes exceeds"}))
    assert describe_google_error(resp(502, b"<html>bad gateway</html>")).startswith("<html>")
    assert describe_google_error(resp(400, ["not", "a", "dict"])) == "['not', 'a', 'dict']"
    text = describe_google_error(
        resp(
            400,
            {
                "error": {
                    "status": "INVALID_ARGUMENT",
                    "message": "m",
                    "details": [
                        {"reason": "TOO_MANY_AUDIENCE_MEMBERS"},
                        {"fieldViolations": [{"field": "audienceMembers"}]},
                    ],
                }
            },
        )
    )
    assert text == "INVALID_ARGUMENT: m [TOO_MANY_AUDIENCE_MEMBERS] (field audienceMembers)"


# -- Google Ads API: version and jobs -----------------------------------------------------------------


def test_the_google_ads_api_version_is_one_the_pinned_library_still_ships():
    shipped = sorted(
        int(m.name[1:]) for m in pkgutil.iter_modules(google.ads.googleads.__path__) if re.fullmatch(r"v\d+", m.name)
    )
    assert shipped, "google-ads ships no version modules?"
    assert int(API_VERSION[1:]) >= shipped[0], (
        f"Google Ads API {API_VERSION} is older than the oldest version google-ads still ships (v{shipped[0]}): "
        "Google has retired it or soon will; move API_VERSION in google_ads/destination.py to a current one"
    )
    assert int(API_VERSION[1:]) <= shipped[-1]


def _ads(running: Running, **extra: object) -> GoogleAdsDestination:
    settings = GoogleAdsSettings.model_validate({**CASES["google_ads"].settings, "type": "google_ads"})
    conn = CASES["google_ads"].connection(running.url)
    conn = ConnectionInfo(
        conn.conn_id, conn.conn_type, conn.host, login=conn.login, password=conn.password, extra={**conn.extra, **extra}
    )
    return GoogleAdsDestination(AUDIENCE, settings, conn)


def _runs(standin: GoogleAdsStandIn) -> list[str]:
    return [p for m, p, s in standin.log if p.endswith(":run")]


def test_a_run_whose_answer_was_lost_is_not_run_again(tmp_path: Path):
    standin = GoogleAdsStandIn()
    # requests of one push: job lookup, create, addOperations, run (answered 503 after it started the job)
    standin.faults.lose_response = [4]
    with Running(standin) as running:
        result = _ads(running).push(Op.ADD, _rows(), "batch-key-1")
    assert result.rejected == {}
    assert len(standin.lists["customers/1234567890/userLists/555"]) == 3
    assert [s for _, p, s in standin.log if p.endswith(":run")] == [503, 400]  # the retry was refused; no harm
    assert len(standin.jobs) == 1


def test_a_batch_pushed_again_finds_its_job_and_does_not_apply_it_twice(tmp_path: Path):
    standin = GoogleAdsStandIn()
    with Running(standin) as running:
        dest = _ads(running)
        dest.push(Op.ADD, _rows(), "batch-key-1")
        dest.push(Op.ADD, _rows(), "batch-key-1")  # a crash before the commit: the same batch again
        dest.push(Op.REMOVE, _rows(1), "batch-key-2")
    assert len(standin.jobs) == 2 and len(_runs(standin)) == 2
    assert len(standin.lists["customers/1234567890/userLists/555"]) == 2


def test_a_job_still_running_when_the_task_gave_up_is_polled_again_not_rerun(tmp_path: Path):
    standin = GoogleAdsStandIn(polls_until_done=10**6)
    with Running(standin) as running:
        with pytest.raises(DestinationError, match="not done after") as exc:
            _ads(running, poll_timeout=0).push(Op.ADD, _rows(), "batch-key-1")
        assert exc.value.retryable
        [job] = standin.jobs.values()
        assert job["status"] == "RUNNING"
        standin.polls_until_done = job["polls"] + 2  # Google finishes it meanwhile
        _ads(running).push(Op.ADD, _rows(), "batch-key-1")  # the task's retry: same batch, same key
    assert len(standin.jobs) == 1 and len(_runs(standin)) == 1 and job["status"] == "SUCCESS"


def test_a_failed_job_is_replaced_by_a_new_job_for_the_same_batch(tmp_path: Path):
    standin = GoogleAdsStandIn()
    with Running(standin) as running:
        dest = _ads(running)
        dest.push(Op.ADD, _rows(), "batch-key-1")
        [job] = standin.jobs.values()
        job["status"] = "FAILED"
        standin.lists.clear()
        dest.push(Op.ADD, _rows(), "batch-key-1")
    assert len(standin.jobs) == 2 and len(_runs(standin)) == 2
    assert len(standin.lists["customers/1234567890/userLists/555"]) == 3


def test_a_job_left_pending_is_not_filled_again_and_the_replace_still_starts_with_remove_all(tmp_path: Path):
    standin = GoogleAdsStandIn()
    with Running(standin) as running:
        dest = _ads(running)
        dest.push(Op.ADD, _rows(4), "add-1")
        standin.faults.down_after = 4  # lookup, create, two addOperations: then the :run never gets through
        rows = _rows(2)
        with pytest.raises(DestinationError, match="still failing"):
            dest.replace(iter([rows[:1], rows[1:]]), 2, "replace-1")
        standin.faults = type(standin.faults)()
        assert len(standin.lists["customers/1234567890/userLists/555"]) == 4  # nothing applied yet
        dest.replace(iter([rows[:1], rows[1:]]), 2, "replace-1")
    statuses = sorted(j["status"] for j in standin.jobs.values())
    assert statuses == ["PENDING", "SUCCESS", "SUCCESS"]  # the half-filled job was left alone
    assert len(standin.lists["customers/1234567890/userLists/555"]) == 2


def test_a_google_ads_jobs_match_rate_range_feeds_the_match_figures(tmp_path: Path):
    standin = GoogleAdsStandIn()
    rows = _rows(10)
    standin.unmatched_hashes.update(h for r in rows[:3] for h in (r.email_sha256, r.phone_sha256))  # 70 % match
    with Running(standin) as running:
        dest = _ads(running)
        added = dest.push(Op.ADD, rows, "add")
        removed = dest.push(Op.REMOVE, rows[:2], "remove")
    assert (added.received, added.matched) == (10, 10 * 61 // 100)  # MATCH_RANGE_61_TO_70: at least 61 %
    assert (removed.received, removed.matched) == (2, 2)


def test_a_full_size_batch_over_10_mib_is_accepted(tmp_path: Path):
    """Google caps identifiers per request, not bytes: 50,000 members with two hashes is about 10.5 MB."""
    standin = GoogleAdsStandIn()
    rows = [MemberRow(f"k{i}", f"{i:064x}", f"{i + 10**6:064x}", None, None, False) for i in range(50_000)]
    with Running(standin) as running:
        # a generous timeout: parsing 10.5 MB of JSON in the in-process stand-in is slow on a loaded machine
        result = _ads(running, timeout=300).push(Op.ADD, rows, "big")
    sizes = [len(b) for b in standin.payloads]
    assert max(sizes) > 10 * 1024 * 1024 and result.rejected == {}
    assert len(standin.lists["customers/1234567890/userLists/555"]) == 50_000


def test_google_ads_requests_use_the_version_kept_in_one_place(tmp_path: Path):
    standin = GoogleAdsStandIn()
    with Running(standin) as running:
        _ads(running).push(Op.ADD, _rows(), "k")
    paths = [p for _, p, _ in standin.log if p != "/token"]
    assert paths and all(p.startswith(f"/{API_VERSION}/") for p in paths)
