"""Airflow's "Test" button for every Data Out connection type, through Airflow's own REST API.

Starts a real ``airflow api-server`` (test connection enabled) and the vendors' stand-ins on loopback,
signs in through ``/auth/token`` and posts each connection to ``POST /api/v2/connections/test``, as the
UI's "Test" button does: the api-server builds the hook from the connection type registered by the
provider and calls its ``test_connection``. Each connection passes with the stand-in's credential and
fails with a message naming the problem when the credential is wrong. Segment has no read call: its test
says so rather than pass on an unchecked key.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from sandbox.standins.base import Running
from sandbox.standins.customerio import CustomerIOStandIn
from sandbox.standins.google_dm import GoogleDataManagerStandIn
from sandbox.standins.google_oauth import CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN
from sandbox.standins.meta import MetaStandIn
from sandbox.standins.tiktok import TikTokStandIn
from sandbox.standins.webhook import WebhookStandIn
from tests.support.api_server import api_server, request, sign_in

pytestmark = [pytest.mark.airflow, pytest.mark.timeout(300)]

WEBHOOK_SECRET = "whsec-" + "k" * 32


@pytest.fixture(scope="module")
def standins() -> Iterator[dict[str, str]]:
    made = {
        "meta": MetaStandIn(),
        "tiktok": TikTokStandIn(),
        "customerio": CustomerIOStandIn(),
        "google": GoogleDataManagerStandIn(),
        "webhook": WebhookStandIn(secret=WEBHOOK_SECRET),
    }
    with ExitStack() as stack:
        yield {name: stack.enter_context(Running(s)).url for name, s in made.items()}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    env = {"AIRFLOW__CORE__TEST_CONNECTION": "Enabled"}
    with api_server(tmp_path_factory.mktemp("api"), "ops", "admin", env) as (base, password):
        yield base, sign_in(base, "ops", password)


def connections(urls: dict[str, str], wrong: bool) -> dict[str, dict[str, Any]]:
    """Each Data Out connection type pointed at its stand-in, with the right or a wrong credential."""

    def secret(good: str) -> str:
        return "wrong-" + secrets.token_hex(8) if wrong else good

    fast = {"max_attempts": 1, "timeout": 10}
    return {
        "data_out_meta": {"host": urls["meta"], "password": secret("meta-test-token"), "extra": fast},
        "data_out_tiktok": {"host": urls["tiktok"], "password": secret("tiktok-test-token"), "extra": fast},
        "data_out_customerio": {"host": urls["customerio"], "password": secret("cio-app-key"), "extra": fast},
        "data_out_webhook": {"host": urls["webhook"], "password": secret(WEBHOOK_SECRET), "extra": fast},
        "data_out_google": {
            "host": urls["google"],
            "login": CLIENT_ID,
            "password": CLIENT_SECRET,
            "extra": {**fast, "token_uri": "/token", "refresh_token": secret(REFRESH_TOKEN)},
        },
    }


def test_connection(api: tuple[str, dict[str, str]], conn_type: str, fields: dict[str, Any]) -> tuple[bool, str]:
    base, bearer = api
    body = {"connection_id": f"probe_{conn_type}", "conn_type": conn_type, **fields}
    if "extra" in body:
        body["extra"] = json.dumps(body["extra"])
    status, answer = request(
        f"{base}/api/v2/connections/test",
        data=json.dumps(body).encode(),
        headers={**bearer, "Content-Type": "application/json"},
    )
    assert status == 200, answer
    result = json.loads(answer)
    return result["status"], result["message"]


test_connection.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


#: words the success message must hold: what the vendor's answer confirmed
CONFIRMED = {
    "data_out_meta": "user Data Out system user",  # the name /me answers
    "data_out_tiktok": "user Data Out",  # the display name /user/info/ answers
    "data_out_customerio": "segments in the workspace",
    "data_out_webhook": "accepted a signed ping",
    "data_out_google": "minted an access token",
}

#: words the failure message must hold for a wrong credential: what was refused
REFUSED = {
    "data_out_meta": "access token was refused (code 190)",
    "data_out_tiktok": "40105",
    "data_out_customerio": "HTTP 401",
    "data_out_webhook": "bad signature",
    "data_out_google": "token endpoint refused the refresh token",
}


@pytest.mark.parametrize("conn_type", sorted(REFUSED))
def test_the_test_button_passes_with_the_right_credential_and_names_a_wrong_one(api, standins, conn_type):
    ok, message = test_connection(api, conn_type, connections(standins, wrong=False)[conn_type])
    assert ok and CONFIRMED[conn_type] in message, message
    wrong = connections(standins, wrong=True)[conn_type]
    ok, message = test_connection(api, conn_type, wrong)
    assert not ok
    assert REFUSED[conn_type] in message, message
    assert wrong["password"] not in message and wrong.get("extra", {}).get("refresh_token", "-") not in message


def test_segment_says_it_cannot_be_tested_without_sending(api):
    ok, message = test_connection(api, "data_out_segment", {"host": "http://127.0.0.1:9", "password": "wk"})
    assert not ok and "cannot be tested without sending" in message
