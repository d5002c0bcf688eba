"""The webhook destination's signing: no empty secret, a fresh signature per attempt, and the verifier in
docs/webhooks.md run as published against the requests the destination really sends."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from data_out.connections import ConnectionInfo
from data_out.destinations.base import DestinationError, MemberRow, Op
from data_out.destinations.webhook.destination import WebhookDestination
from data_out.destinations.webhook.settings import WebhookSettings
from sandbox.standins.base import Response, Running
from sandbox.standins.webhook import WebhookStandIn
from tests.deploy.test_compose import ENV_EXAMPLE, read_env_file

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "webhooks.md"
SECRET = "9f8e7d6c5b4a39281706f5e4d3c2b1a0"
AUDIENCE = "cio_cart_abandon_6h_v2"


def rows(n: int, start: int = 0) -> list[MemberRow]:
    return [MemberRow(f"c{i:04d}", f"{i:064x}", None, None, None, False) for i in range(start, start + n)]


def destination(url: str, password: str | None = SECRET, **extra: Any) -> WebhookDestination:
    settings = WebhookSettings.model_validate({"type": "webhook", "path": "/hooks/crm", "fields": ["email_sha256"]})
    conn = ConnectionInfo("data_out_webhook", "data_out_webhook", host=url, password=password, extra=extra)
    return WebhookDestination(AUDIENCE, settings, conn)


def template_secret() -> str:
    values, _ = read_env_file(ENV_EXAMPLE)
    return json.loads(values["AIRFLOW_CONN_DATA_OUT_WEBHOOK"])["password"]


@pytest.mark.parametrize("password", [None, "", "  \n", "template"])
def test_an_empty_or_placeholder_secret_is_refused_before_anything_is_sent(password: str | None) -> None:
    password = template_secret() if password == "template" else password
    standin = WebhookStandIn(secret=password or "")
    with Running(standin) as running, pytest.raises(DestinationError) as refused:
        dest = destination(running.url, password)
        dest.push(Op.ADD, rows(3), "batch-1")
    assert refused.value.retryable is False
    assert "'data_out_webhook'" in str(refused.value) and "signing secret" in str(refused.value)
    assert standin.seen == 0 and standin.members == {}


class SlowToAccept(WebhookStandIn):
    """Answers the first request 429 with a Retry-After longer than its own replay window."""

    def server_error(self, status: int) -> Response:
        return Response(status, {"error": "slow down"}, {"Retry-After": "3"})


def test_each_attempt_is_signed_with_a_fresh_timestamp_so_a_late_retry_is_accepted() -> None:
    # a 2.5 s window, shorter than the 3 s Retry-After, so the first attempt's signature is refused by the
    # time of the retry; a fresh one passes even when signed just before a second ends (timestamps are
    # whole seconds: up to 1 s of the window is spent by the truncation, 1.5 s is left for the request)
    standin = SlowToAccept(secret=SECRET, tolerance_s=2.5)
    standin.faults.forced = [429]
    with Running(standin) as running:
        dest = destination(running.url, backoff_initial=0.01, backoff_max=0.01)
        result = dest.push(Op.ADD, rows(3), "batch-1")
    assert result.rejected == {} and sorted(standin.members[AUDIENCE]) == ["c0000", "c0001", "c0002"]
    assert [status for _, _, status in standin.log] == [429, 200]
    first, retry = standin.payloads  # one body for both attempts: the batch is the same
    assert first == retry


# --------------------------------------------------------------------------------------------------
# the verifier published in docs/webhooks.md
# --------------------------------------------------------------------------------------------------


def doc_receiver_source() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) == 1, "docs/webhooks.md should publish exactly one Python receiver"
    return blocks[0]


@pytest.fixture
def doc_receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, dict[str, Any]]]:
    """The documented receiver, executed as published, served on loopback."""
    monkeypatch.setenv("DATAOUT_WEBHOOK_SECRET", SECRET)
    namespace: dict[str, Any] = {"__name__": "dataout_webhook_receiver"}
    exec(compile(doc_receiver_source(), str(DOC), "exec"), namespace)  # noqa: S102 - our own published snippet
    handler = namespace["AudienceWebhook"]
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", namespace
    finally:
        server.shutdown()
        server.server_close()


class Recorder(WebhookStandIn):
    """Captures requests as sent (no verification) so the documented ``verify`` can be tried on them."""

    def check_auth(self, req: Any) -> None:
        self.captured.append((req.headers["x-dataout-signature"], req.body))

    def __init__(self) -> None:
        self.captured: list[tuple[str, bytes]] = []
        super().__init__()


def test_the_documented_receiver_accepts_the_destinations_requests_once(
    doc_receiver: tuple[str, dict[str, Any]],
) -> None:
    url, ns = doc_receiver
    dest = destination(url)
    dest.push(Op.ADD, rows(4), "batch-1")
    dest.push(Op.ADD, rows(4), "batch-1")  # a retry of an applied batch
    dest.push(Op.REMOVE, rows(1), "batch-2")
    assert sorted(ns["AudienceWebhook"].members[AUDIENCE]) == ["c0001", "c0002", "c0003"]
    assert ns["AudienceWebhook"].applied == {"batch-1", "batch-2"}


def test_the_documented_receiver_refuses_a_wrong_secret(doc_receiver: tuple[str, dict[str, Any]]) -> None:
    url, ns = doc_receiver
    with pytest.raises(DestinationError, match="HTTP 401") as refused:
        destination(url, password="another-secret-of-32-characters!").push(Op.ADD, rows(2), "batch-1")
    assert refused.value.retryable is False
    assert AUDIENCE not in ns["AudienceWebhook"].members


def test_the_documented_verify_checks_body_secret_and_age_of_real_requests(
    doc_receiver: tuple[str, dict[str, Any]],
) -> None:
    _, ns = doc_receiver
    verify = ns["verify"]
    recorder = Recorder()
    with Running(recorder) as running:
        destination(running.url).push(Op.ADD, rows(2), "batch-1")
    ((header, body),) = recorder.captured
    sent_at = int(dict(p.split("=", 1) for p in header.split(","))["t"])
    assert verify(SECRET.encode(), header, body, now=sent_at)
    assert verify(SECRET.encode(), header, body, now=sent_at + 300)
    assert not verify(SECRET.encode(), header, body, now=sent_at + 301)  # a replay after the window
    assert not verify(SECRET.encode(), header, body.replace(b"c0001", b"c0009"), now=sent_at)  # tampered body
    assert not verify(b"wrong", header, body, now=sent_at)
    for broken in ("", "t=1", "v1=abc", "t=x,v1=abc", "t=" + "9" * 5000 + ",v1=abc", "garbage", f"t={sent_at},v1=é"):
        assert not verify(SECRET.encode(), broken, body, now=sent_at)
