"""TikTok segment mapping: a member lacking one of the schema's identifiers keeps its row's positions with
``{}``, never ``{"id": ""}``; a member with none of them is not sent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_out.connections import ConnectionInfo, engine_for
from data_out.destinations.base import DestinationError, MemberRow, Op
from data_out.destinations.tiktok.destination import TikTokDestination
from data_out.destinations.tiktok.settings import TikTokSettings
from data_out.state import ensure_schema
from sandbox.standins.base import Running
from sandbox.standins.tiktok import TikTokStandIn
from tests.conftest import People
from tests.data_out.destinations.cases import AUDIENCE, CASES
from tests.data_out.destinations.test_contract import Env, person

EMAIL, PHONE = "e" * 64, "f" * 64


def destination(url: str) -> TikTokDestination:
    settings = TikTokSettings(type="tiktok", advertiser_id="7000000001", segment_id="seg42")
    return TikTokDestination(AUDIENCE, settings, CASES["tiktok"].connection(url))


def sent_rows(standin: TikTokStandIn) -> list[list[dict]]:
    return [row for body in standin.payloads if body for row in json.loads(body)["batch_data"]]


def test_a_missing_identifier_is_an_empty_entry_and_the_member_still_matches():
    standin = TikTokStandIn()
    rows = [MemberRow("a", EMAIL, None, None, None, False), MemberRow("b", None, PHONE, None, None, False)]
    with Running(standin) as running:
        result = destination(running.url).push(Op.ADD, rows, "do-k")
    assert result.rejected == {}
    assert sent_rows(standin) == [
        [{"id": EMAIL, "audience_ids": ["seg42"]}, {}],
        [{}, {"id": PHONE, "audience_ids": ["seg42"]}],
    ]
    assert standin.segments["seg42"] == {(f"EMAIL_SHA256={EMAIL}",), (f"PHONE_SHA256={PHONE}",)}


def test_a_member_without_any_identifier_is_not_sent_and_its_add_is_rejected_by_row():
    standin = TikTokStandIn()
    bare = MemberRow("bare", None, None, None, None, False)
    with Running(standin) as running:
        dest = destination(running.url)
        assert dest.push(Op.ADD, [bare], "do-k").rejected == {
            "bare": "no identifier of id_schema EMAIL_SHA256/PHONE_SHA256"
        }
        assert dest.push(Op.REMOVE, [bare], "do-k2").rejected == {}
        result = dest.push(Op.ADD, [bare, MemberRow("a", EMAIL, None, None, None, False)], "do-k3")
    assert set(result.rejected) == {"bare"} and result.received == 1
    assert len(sent_rows(standin)) == 1  # only the batch with something to send reached TikTok


@pytest.mark.parametrize("entry", [{"id": ""}, {"id": "", "audience_ids": ["seg42"]}, {"id": "Not-Hex"}])
def test_the_stand_in_refuses_an_empty_or_malformed_id(entry: dict):
    standin = TikTokStandIn()
    body = {
        "advertiser_ids": ["7000000001"],
        "action": "add",
        "id_schema": ["EMAIL_SHA256", "PHONE_SHA256"],
        "batch_data": [[{"id": EMAIL, "audience_ids": ["seg42"]}, entry]],
    }
    with Running(standin) as running:
        dest = destination(running.url)
        with pytest.raises(DestinationError, match="40002"):
            dest.client.request("POST", "/open_api/v1.3/segment/mapping/", json=body)
        body["batch_data"] = [[{}, {}]]
        with pytest.raises(DestinationError, match="at least one id"):
            dest.client.request("POST", "/open_api/v1.3/segment/mapping/", json=body)
    assert standin.segments == {}


def test_a_sync_with_members_missing_a_phone_converges(tmp_path: Path):
    case = CASES["tiktok"]
    standin = case.make()
    engine = engine_for(ConnectionInfo("db", "sqlite", host=str(tmp_path / "db.sqlite")))
    ensure_schema(engine)
    rows = [person(i, phone=None) if i % 3 == 0 else person(i) for i in range(30)]
    with Running(standin) as running:
        env = Env(case, standin, running.url, tmp_path, People(engine), engine)
        env.write(batch_size=8)
        env.people.set(rows)
        env.run("t/1")
        env.people.set(rows[10:])
        env.run("t/2")
    assert env.held() == env.expected(rows[10:])
    assert all(entry == {} or entry["id"] for row in sent_rows(standin) for entry in row)
