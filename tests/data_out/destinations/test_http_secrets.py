"""Secrets never leave through the HTTP transport: not in errors, not to another host on a redirect.

``requests`` quotes a refused header value (token included) in ``InvalidHeader``, and its connection
errors quote the URL (query strings can hold tokens). Vendors authenticate with headers of their own,
which ``requests`` forwards to any host a redirect names. Real servers on loopback stand in for the
vendor and for the host a redirect points at.
"""

from __future__ import annotations

import inspect
import logging
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from data_out import alerts, state
from data_out.connections import ConnectionInfo, engine_for
from data_out.destinations import REGISTRY
from data_out.destinations.base import DestinationError, MemberRow, Op
from data_out.destinations.http import HttpClient
from data_out.destinations.http_hook import http_hook
from data_out.engine.runner import RunFailed
from data_out.redact import scrub
from data_out.state import ensure_schema
from sandbox.standins.base import Running
from tests.conftest import People
from tests.data_out.destinations.cases import AUDIENCE, CASES, FAST_RETRIES
from tests.support.recorder import Answer, Seen, recording

SECRET = "tok-9f8e7d6c5b4a"
ROWS = [MemberRow("k1", "a" * 64, "b" * 64, None, None, False)]


def _all_request_errors() -> list[type[requests.RequestException]]:
    return sorted(
        (
            cls
            for _, cls in inspect.getmembers(requests.exceptions, inspect.isclass)
            if issubclass(cls, requests.RequestException)
        ),
        key=lambda cls: cls.__name__,
    )


def _raise(kind: type[Exception], message: str) -> Exception:
    try:
        return kind(message)
    except TypeError:  # requests.JSONDecodeError takes (msg, doc, pos) like json's
        return kind(message, message, 0)  # type: ignore[call-arg]


def _client(url: str = "http://127.0.0.1:9", **extra: object) -> HttpClient:
    conn = ConnectionInfo("data_out_tiktok", "data_out_tiktok", host=url, extra={**FAST_RETRIES, **extra})
    return HttpClient("tiktok", conn, hook=http_hook(conn, url), headers={"Access-Token": SECRET})


def _leaks(exc: BaseException, *secrets: str) -> list[str]:
    """Secrets found in what Airflow would log for ``exc``: its message and its printed traceback."""
    printed = "".join(traceback.format_exception(exc))
    return [s for s in secrets if s in str(exc) or s in printed]


@pytest.mark.parametrize("kind", _all_request_errors(), ids=lambda k: k.__name__)
def test_every_requests_error_is_reported_without_its_text(kind: type[Exception], monkeypatch: pytest.MonkeyPatch):
    """Whatever ``requests`` raises, the batch fails with a ``DestinationError`` naming only the kind of failure."""
    url = f"https://api.example.com/v1/x?access_token={SECRET}"
    client = _client(max_attempts=2)

    def fail(*args: object, **kwargs: object) -> requests.Response:
        raise _raise(kind, f"header value 'Bearer {SECRET}\\n' refused; url {url}")

    monkeypatch.setattr(client.session, "request", fail)
    with pytest.raises(DestinationError) as failed:
        client.request("POST", "/open_api/v1.3/segment/mapping/")
    assert kind.__name__ in str(failed.value)
    assert _leaks(failed.value, SECRET, url) == []


@pytest.mark.parametrize(
    ("kind", "retryable"),
    [
        (requests.ConnectTimeout, True),
        (requests.ReadTimeout, True),
        (requests.ConnectionError, True),
        (requests.exceptions.ChunkedEncodingError, True),
        (requests.exceptions.InvalidHeader, False),
        (requests.exceptions.InvalidURL, False),
        (requests.exceptions.MissingSchema, False),
        (requests.TooManyRedirects, False),
    ],
)
def test_passing_faults_are_retried_and_configuration_faults_are_not(
    kind: type[Exception], retryable: bool, monkeypatch: pytest.MonkeyPatch
):
    client = _client(max_attempts=3)
    monkeypatch.setattr(client.session, "request", lambda *a, **k: (_ for _ in ()).throw(kind("x")))
    with pytest.raises(DestinationError) as failed:
        client.request("GET", "/x")
    assert failed.value.retryable is retryable
    assert client.attempts == (3 if retryable else 1)


@pytest.mark.parametrize("vendor", ["meta", "tiktok"])
def test_a_token_with_a_line_break_fails_the_batch_without_quoting_it(vendor: str):
    """The token reaches the destination unstripped (built without ``connection_info``): ``requests`` refuses
    the header, and the error says what to correct without the value."""
    case = CASES[vendor]
    token = f"{SECRET}\n"
    cls = REGISTRY[vendor]
    conn = case.connection("http://127.0.0.1:9", token)
    dest = cls(AUDIENCE, cls.settings_model(type=vendor, **case.settings), conn)
    with pytest.raises(DestinationError) as failed:
        dest.push(Op.ADD, ROWS, "key-1")
    assert "header value is not valid" in str(failed.value) and not failed.value.retryable
    assert _leaks(failed.value, SECRET) == []


def test_a_run_with_a_broken_token_records_and_mails_no_secret(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """The path of the reported leak: do_sync.error, the task log and the failure email."""
    from tests.data_out.destinations.test_contract import Env

    caplog.set_level(logging.DEBUG)
    case = CASES["tiktok"]
    db = ConnectionInfo("db", "sqlite", host=str(tmp_path / "db.sqlite"))
    engine = engine_for(db)
    ensure_schema(engine)
    standin = case.make()
    with Running(standin) as running:
        env = Env(case, standin, running.url, tmp_path, People(engine), engine, secret=f"{SECRET}\r\nX-Extra: 1")
        env.write()
        env.people.set([{"customer_id": f"c{i}", "email": f"p{i}@example.com", "phone": None} for i in range(5)])
        with pytest.raises(RunFailed) as failed:
            env.run("t/1")
    with engine.connect() as conn:
        errors = conn.execute(select(state.sync.c.error).where(state.sync.c.error.is_not(None))).scalars().all()
    reason = scrub(str(failed.value), limit=1500)  # what the failure callback mails
    email = alerts.failure_email(AUDIENCE, "push", reason, "next", ["a@example.com"])
    assert errors and all("header value is not valid" in e for e in errors)
    haystack = "\n".join([*errors, str(failed.value), caplog.text, email.text, email.html])
    assert SECRET not in haystack


# --- redirects --------------------------------------------------------------------------------------


TOKEN = {"access_token": "ya29.minted-for-the-test", "expires_in": 3600, "token_type": "Bearer"}


def _vendor_redirecting_to(target: str) -> Callable[[Seen], Answer]:
    """The vendor's host: mints Google's tokens (``/token``) and redirects every API call to ``target``."""

    def answer(seen: Seen) -> Answer:
        if seen.path == "/token":
            return Answer(200, TOKEN)
        return Answer(307, headers={"Location": target + "/elsewhere"})

    return answer


@pytest.mark.parametrize("vendor", sorted(CASES))
@pytest.mark.parametrize("other_host", ["127.0.0.2", "127.0.0.1"], ids=["other-host", "other-port"])
def test_a_redirect_to_another_host_is_not_followed(vendor: str, other_host: str):
    """The vendor's host answers 307 to a server on another host (or port): nothing reaches that server,
    neither the headers that carry the token, the developer token or the signature, nor the payload."""
    case = CASES[vendor]
    cls = REGISTRY[vendor]
    with (
        recording(lambda seen: Answer(200, {}), host=other_host) as other,
        recording(_vendor_redirecting_to(other.url)) as vendor_host,
    ):
        conn = case.connection(vendor_host.url)
        dest = cls(AUDIENCE, cls.settings_model(type=vendor, **case.settings), conn)
        with pytest.raises(DestinationError) as failed:
            dest.push(Op.ADD, ROWS, "key-1")
        dest.close()
    api_calls = [s for s in vendor_host.seen if s.path != "/token"]
    assert api_calls, "positive control: the vendor's host received the call"
    assert other.seen == []
    assert f"redirected from 127.0.0.1:{vendor_host.url.rsplit(':', 1)[1]} to {other_host}:" in str(failed.value)
    assert "not followed" in str(failed.value) and not failed.value.retryable


def test_a_token_endpoint_redirecting_elsewhere_gets_no_refresh_token():
    """Google's token request (refresh token and client secret in its body) is not resent to another host."""
    case = CASES["google"]
    cls = REGISTRY["google"]
    with (
        recording(lambda seen: Answer(200, TOKEN), host="127.0.0.2") as other,
        recording(lambda seen: Answer(307, headers={"Location": other.url + "/token"})) as vendor_host,
    ):
        dest = cls(AUDIENCE, cls.settings_model(type="google", **case.settings), case.connection(vendor_host.url))
        with pytest.raises(DestinationError) as failed:
            dest.push(Op.ADD, ROWS, "key-1")
        dest.close()
    assert [s.path for s in vendor_host.seen] == ["/token"]
    assert other.seen == []
    assert "token endpoint" in str(failed.value)


def test_a_redirect_on_the_same_host_keeps_the_credentials():
    """A vendor moving a path on its own host still gets an authenticated request."""

    def answer(seen: Seen) -> Answer:
        return Answer(307, headers={"Location": "/moved"}) if seen.path != "/moved" else Answer(200, {"ok": 1})

    with recording(answer) as host:
        client = _client(host.url)
        assert client.request("GET", "/v1/x").json() == {"ok": 1}
    assert [s.headers.get("Access-Token") for s in host.seen] == [SECRET, SECRET]


def test_a_vendor_body_echoing_the_token_is_masked():
    with recording(lambda seen: Answer(400, {"message": f"token {SECRET} is not valid for this advertiser"})) as host:
        client = _client(host.url)
        with pytest.raises(DestinationError) as failed:
            client.request("GET", "/v1/x")
    assert "HTTP 400" in str(failed.value) and SECRET not in str(failed.value)
