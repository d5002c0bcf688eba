"""Meta against Meta's own rules: the version schedule, ``appsecret_proof`` (the ``facebook-business`` SDK as
the oracle for its value and, run against the stand-in, for the request shapes), and ``usersreplace``
sessions that are never re-sent batch by batch."""

from __future__ import annotations

import datetime as dt
import json
import threading
from pathlib import Path

import pytest
from facebook_business import apiconfig
from facebook_business.adobjects.customaudience import CustomAudience
from facebook_business.api import FacebookAdsApi
from facebook_business.session import FacebookSession
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from data_out.connections import ConnectionInfo, engine_for
from data_out.destinations.base import DestinationError, MemberRow, Op
from data_out.destinations.http import FORM_CONTENT_TYPE, form_encode
from data_out.destinations.meta.destination import MetaDestination
from data_out.destinations.meta.hook import appsecret_proof
from data_out.destinations.meta.settings import MetaSettings
from data_out.destinations.meta.versions import DEFAULT_API_VERSION, EXPIRES, expired
from data_out.engine.runner import RunFailed
from data_out.state import ensure_schema
from sandbox.standins import meta as meta_standin
from sandbox.standins.base import Running
from sandbox.standins.meta import MetaStandIn
from tests.conftest import People
from tests.data_out.destinations.cases import AUDIENCE, CASES
from tests.data_out.destinations.test_contract import Env, person
from tests.support.airflow_processes import wait_for

AUD = "23850000001"
HASH = "a" * 64


def version_number(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.lstrip("v").split("."))


def test_the_default_version_is_not_past_metas_expiry_today():
    """Fails on the day Meta retires the default: move DEFAULT_API_VERSION before every sync fails."""
    until = EXPIRES[DEFAULT_API_VERSION]
    assert until is None or dt.date.today() < until, f"Meta retired {DEFAULT_API_VERSION} on {until}"
    assert not expired(DEFAULT_API_VERSION)


def test_the_default_is_not_older_than_the_pinned_sdks():
    assert version_number(DEFAULT_API_VERSION) >= version_number(apiconfig.ads_api_config["API_VERSION"])


def test_client_and_stand_in_agree_on_the_schedule():
    assert meta_standin.VERSIONS == EXPIRES


def test_an_expired_version_is_refused_when_the_audience_is_loaded():
    with pytest.raises(ValidationError, match="retired Marketing API v21.0"):
        MetaSettings(type="meta", audience_id=AUD, api_version="v21.0")
    assert expired("v19.0") and not expired("v24.0", dt.date(2026, 11, 9)) and expired("v24.0", dt.date(2026, 11, 10))


def destination(url: str, *, version: str = DEFAULT_API_VERSION, app_secret: str | None = None) -> MetaDestination:
    extra = {**CASES["meta"].connection(url).extra, **({"app_secret": app_secret} if app_secret else {})}
    conn = ConnectionInfo("m", "data_out_meta", host=url, password="meta-test-token", extra=extra)
    # model_construct: a version the loader would refuse, to see what Meta itself answers
    settings = MetaSettings.model_construct(
        type="meta", audience_id=AUD, match_keys=["EMAIL"], api_version=version, batch_size=None, name=None
    )
    return MetaDestination(AUDIENCE, settings, conn)


def member(i: int = 1) -> list[MemberRow]:
    return [MemberRow(f"k{i}", f"{i:064x}", None, None, None, False)]


def test_the_stand_in_answers_2635_for_an_expired_version_and_the_error_names_the_fix():
    standin = MetaStandIn()
    standin.today = lambda: dt.date(2026, 12, 7)
    with Running(standin) as running:
        for old in ("v21.0", "v24.0"):  # the former default, and one that expired a month ago
            with pytest.raises(DestinationError) as exc:
                destination(running.url, version=old).push(Op.ADD, member(), "do-k")
            assert not exc.value.retryable
            assert "2635" in str(exc.value) and "api_version" in str(exc.value)
        destination(running.url).push(Op.ADD, member(), "do-k")
        destination(running.url, version="v25.0").push(Op.ADD, member(2), "do-k2")
    assert len(standin.audiences[AUD]) == 2


def test_appsecret_proof_is_the_sdks():
    session = FacebookSession(app_id="1", app_secret="s3cret", access_token="token-value")
    assert appsecret_proof("token-value", "s3cret") == session.appsecret_proof
    assert appsecret_proof("token-value", None) is None


def test_an_app_that_requires_the_secret_refuses_calls_without_a_right_proof():
    standin = MetaStandIn(require_app_secret=True)
    with Running(standin) as running:
        with pytest.raises(DestinationError, match="require an appsecret_proof") as missing:
            destination(running.url).push(Op.ADD, member(), "do-k")
        assert "app_secret" in str(missing.value)  # the fix, in the message
        with pytest.raises(DestinationError, match="Invalid appsecret_proof") as wrong:
            destination(running.url, app_secret="not-the-secret").push(Op.ADD, member(), "do-k")
        assert "not-the-secret" not in str(wrong.value)
        dest = destination(running.url, app_secret="meta-app-secret")
        dest.push(Op.ADD, member(1) + member(2), "do-k")
        dest.push(Op.REMOVE, member(2), "do-k2")
        dest.replace(iter([member(3), member(4)]), 2, "do-r")
        assert dest.size() == 2
    assert standin.audiences[AUD] == {(f"EMAIL={3:064x}",), (f"EMAIL={4:064x}",)}


def test_the_sdk_itself_is_accepted_by_the_stand_in(tmp_path: Path):
    """Cross-check: what Meta's own SDK sends (token and proof as parameters, a DELETE's payload in the
    query string, ``is_raw``) is accepted, and ends in the same audience as our destination's requests."""
    standin = MetaStandIn(require_app_secret=True)
    with Running(standin) as running:
        api = FacebookAdsApi.init(
            app_id="1", app_secret="meta-app-secret", access_token="meta-test-token", api_version=DEFAULT_API_VERSION
        )
        api._session.GRAPH = running.url  # noqa: SLF001 - the SDK's own way to choose its host
        audience = CustomAudience("999", api=api)
        rows = [[f"{i:064x}"] for i in range(1, 5)]
        audience.add_users(["EMAIL"], rows, is_raw=True, pre_hashed=True)
        audience.remove_users(["EMAIL"], rows[:1], is_raw=True, pre_hashed=True)
        dest = destination(running.url, app_secret="meta-app-secret")
        dest.push(Op.ADD, [m for i in range(1, 5) for m in member(i)], "do-k")
        dest.push(Op.REMOVE, member(1), "do-k2")
    assert standin.audiences["999"] == standin.audiences[AUD] and len(standin.audiences[AUD]) == 3


_HASHES = st.one_of(st.none(), st.just(""), st.text("0123456789abcdef", min_size=64, max_size=64))


@settings(max_examples=60, deadline=None)
@given(
    keys=st.permutations(["EMAIL", "PHONE", "EXTERN_ID"]).flatmap(lambda p: st.integers(1, 3).map(lambda n: p[:n])),
    rows=st.lists(st.tuples(_HASHES, _HASHES, st.one_of(st.none(), st.just(" Ab1 ")), st.booleans()), max_size=8),
)
def test_rows_read_by_position_are_the_rows_the_general_reading_makes(keys, rows):
    """Rows without extra keys, for match keys that are stored hashes, are read by position: the same payload."""
    conn = ConnectionInfo("m", "data_out_meta", host="http://127.0.0.1:9", password="t", extra={})
    settings_ = MetaSettings.model_construct(
        type="meta", audience_id=AUD, match_keys=list(keys), api_version=DEFAULT_API_VERSION, batch_size=None
    )
    fast, general = MetaDestination(AUDIENCE, settings_, conn), MetaDestination(AUDIENCE, settings_, conn)
    general._direct = None  # noqa: SLF001
    assert (fast._direct is None) == ("EXTERN_ID" in keys)  # noqa: SLF001
    members = [MemberRow(f"k{i}", e, p, x, None, h) for i, (e, p, x, h) in enumerate(rows)]
    assert fast._payload(members) == general._payload(members)  # noqa: SLF001


def test_a_repeated_batch_seq_is_refused_by_the_stand_in():
    standin = MetaStandIn()
    with Running(standin) as running:
        dest = destination(running.url)

        def send(seq: int, last: bool) -> None:
            session = {"session_id": 7, "batch_seq": seq, "last_batch_flag": last, "estimated_num_total": 2}
            body = form_encode({"payload": dest._payload(member(seq)), "session": json.dumps(session)})  # noqa: SLF001
            dest.client.request("POST", f"{dest.path}/usersreplace", data=body, headers=FORM_CONTENT_TYPE)

        send(1, False)
        with pytest.raises(DestinationError, match="batch_seq 1 was already received"):
            send(1, False)
        send(2, True)
        with pytest.raises(DestinationError, match="already finished"):
            send(2, True)


def test_a_slow_answer_counts_as_in_flight_until_the_stand_in_applied_it():
    """What the Celery kill test waits on before reading what a killed worker had sent."""
    standin = MetaStandIn()
    standin.faults.delay = 0.5
    with Running(standin) as running:
        dest = destination(running.url)
        done = threading.Thread(target=dest.push, args=(Op.ADD, member(1), "k-1"), daemon=True)
        done.start()
        wait_for("the request to arrive", lambda: standin.inflight == 1, 5, 0.01)
        assert standin.applied["k-1"] == 0
        wait_for("its answer", lambda: standin.inflight == 0, 5, 0.01)
        assert standin.applied["k-1"] == 1 and len(standin.audiences[AUD]) == 1
        done.join(5)


def test_a_lost_replace_answer_fails_retryably_without_resending():
    standin = MetaStandIn()
    standin.faults.lose_response = [1]
    with Running(standin) as running, pytest.raises(DestinationError, match="not re-sent") as exc:
        destination(running.url).replace(iter([member(1), member(2)]), 2, "do-r")
    assert exc.value.retryable
    assert [status for _, _, status in standin.log] == [503]  # sent once, never again


@pytest.mark.parametrize("lost", [2, 3])  # a middle batch, and the last one (the swap happened)
def test_a_replace_whose_answer_was_lost_is_restarted_not_resent(tmp_path: Path, lost: int):
    case = CASES["meta"]
    standin = case.make()
    engine = engine_for(ConnectionInfo("db", "sqlite", host=str(tmp_path / "db.sqlite")))
    ensure_schema(engine)
    before = [person(i) for i in range(12)]
    after = [person(i) for i in range(4, 20)]
    with Running(standin) as running:
        env = Env(case, standin, running.url, tmp_path, People(engine), engine)
        env.write(batch_size=6)
        env.people.set(before)
        env.run("t/1")
        env.people.set(after)
        standin.seen = 0
        standin.log.clear()
        standin.faults.lose_response = [lost]  # requests: replace batches 1..3 of 16 desired members, 6 each
        with pytest.raises(RunFailed, match="not re-sent"):
            env.run("t/2", mode="replace")
        held_after_failure = env.held()
        assert held_after_failure == (env.expected(after) if lost == 3 else env.expected(before))
        env.run("t/3", mode="replace")
    assert env.held() == env.expected(after)
    assert env.last_sync()["status"] == "success"
    assert all(status != 400 for _, _, status in standin.log)  # no batch_seq was ever sent twice
