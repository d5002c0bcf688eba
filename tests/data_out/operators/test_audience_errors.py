"""Each error a step can raise: does the task retry or fail at once, and what does the failure email say to do?"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException

from data_out import alerts, errors
from data_out.config import AudienceNotLoaded, ConfigError, ConfigFileError
from data_out.connections import UnsupportedConnection
from data_out.destinations.base import DestinationError, PayloadTooLarge
from data_out.destinations.google.auth import GoogleCredentialError
from data_out.destinations.http import _unanswered
from data_out.engine.lease import LeaseHeld
from data_out.engine.plan import GuardTripped
from data_out.engine.runner import RunFailed, SizeMismatch
from data_out.hooks.state import MissingConnection
from data_out.operations import InvalidRequest
from data_out.operators import audience as ops
from data_out.sources.base import CustomerIOError, QueryShapeError, SourceError
from data_out.state.errors import StateDatabaseError

RETRY, FAIL = "retry", "fail"

#: (error raised by a step, what the task does, the failure email's next step)
CASES: dict[str, tuple[BaseException, str, str]] = {
    "state_database": (StateDatabaseError("state database down"), RETRY, errors.STATE_DATABASE_NEXT_STEP),
    "guard": (GuardTripped("mass-removal guard for a/meta"), FAIL, errors.GUARD_NEXT_STEP),
    "lease": (LeaseHeld("audience a is being synced by run 'x'"), FAIL, errors.LEASE_NEXT_STEP),
    "size_mismatch": (SizeMismatch("a/meta: reports 1 members"), RETRY, errors.SIZE_MISMATCH_NEXT_STEP),
    "run_failed": (
        RunFailed("audience a run 1 failed: meta: failed", [GuardTripped("guard")]),
        FAIL,
        errors.GUARD_NEXT_STEP,
    ),
    "run_failed_without_causes": (RunFailed("audience a run 1 failed: x"), FAIL, errors.GENERIC_NEXT_STEP),
    "vendor_refused": (DestinationError("meta: refused", retryable=False), FAIL, errors.VENDOR_REFUSED_NEXT_STEP),
    "vendor_down": (DestinationError("meta: 503", retryable=True), RETRY, errors.VENDOR_UNAVAILABLE_NEXT_STEP),
    "vendor_silent": (_unanswered("meta", "POST", "/x", "no response"), RETRY, errors.VENDOR_NO_RESPONSE_NEXT_STEP),
    "payload_too_large": (PayloadTooLarge("meta: 413"), FAIL, errors.VENDOR_REFUSED_NEXT_STEP),
    "query_failed": (SourceError("a: the query failed: timeout"), RETRY, errors.QUERY_FAILED_NEXT_STEP),
    "query_refused": (SourceError("a: tried to write", retryable=False), FAIL, errors.QUERY_FAILED_NEXT_STEP),
    "query_shape": (QueryShapeError("a: the query returns columns"), FAIL, errors.QUERY_SHAPE_NEXT_STEP),
    "customerio_refused": (CustomerIOError("a: refused", retryable=False), FAIL, errors.CUSTOMERIO_NEXT_STEP),
    "customerio_down": (CustomerIOError("a: 503"), RETRY, errors.CUSTOMERIO_NEXT_STEP),
    "missing_connection": (MissingConnection("connection 'x'"), FAIL, errors.MISSING_CONNECTION_NEXT_STEP),
    "audience_not_loaded": (AudienceNotLoaded("no audience named 'a'"), FAIL, errors.CONFIG_NEXT_STEP),
    "config_file": (
        ConfigFileError([ConfigError(Path("a.yaml"), "source", "bad", "fix it")]),
        FAIL,
        errors.CONFIG_NEXT_STEP,
    ),
    "unsupported_connection": (UnsupportedConnection("connection 'x': type"), FAIL, errors.SETTING_NEXT_STEP),
    "google_credential": (GoogleCredentialError("connection 'g': no key"), FAIL, errors.SETTING_NEXT_STEP),
    "setting": (errors.SettingError("DATA_OUT_X='y'"), FAIL, errors.SETTING_NEXT_STEP),
    "invalid_request": (InvalidRequest("mode 'x'"), FAIL, errors.REQUEST_NEXT_STEP),
}
#: bugs: no advice of their own, left to the task's retry policy
BUGS = {"key_error": KeyError("x"), "value_error": ValueError("x"), "runtime_error": RuntimeError("x")}


@dataclass
class FakeTI:
    task_id: str
    dag_id: str = "audience__a_v1"


class Raising(ops.AudienceStepOperator):
    def __init__(self, *, error: BaseException, **kwargs: Any) -> None:
        super().__init__(audience="a_v1", **kwargs)
        self.error = error

    def step(self, context: Any) -> Any:
        raise self.error


def raised_by_task(error: BaseException, task_id: str = "push") -> BaseException:
    with pytest.raises(Exception) as caught:  # noqa: PT011 - which one is what the callers check
        Raising(error=error, task_id=task_id).execute({})
    return caught.value


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[alerts.Email]:
    out: list[alerts.Email] = []
    monkeypatch.setattr(ops, "load_audiences", lambda: type("Loaded", (), {"audiences": {}})())
    monkeypatch.setattr(ops, "connection_info", lambda conn_id: conn_id)
    monkeypatch.setattr(alerts, "send", lambda conn, email: out.append(email))
    return out


@pytest.mark.parametrize(("error", "routing", "step"), CASES.values(), ids=CASES.keys())
def test_each_error_routes_by_its_type_and_its_email_says_what_to_do(error, routing, step, sent):
    raised = raised_by_task(error)
    if routing == RETRY:
        assert raised is error  # raised again: Airflow's retries run
    else:
        assert isinstance(raised, AirflowFailException) and isinstance(raised, ops.TaskFailed)
        assert raised.error is error and str(raised) == str(error)
    ops.notify_sync_failure({"ti": FakeTI("push"), "exception": raised})
    assert len(sent) == 1
    assert f"Next step: {step}" in sent[0].text
    assert f"Reason: {error}" in sent[0].text


@pytest.mark.parametrize("error", BUGS.values(), ids=BUGS.keys())
def test_a_bug_is_left_to_the_retry_policy_and_the_email_points_at_the_log(error, sent):
    raised = raised_by_task(error)
    assert raised is error and not isinstance(raised, AirflowFailException)
    ops.notify_sync_failure({"ti": FakeTI("push"), "exception": raised})
    assert f"Next step: {errors.GENERIC_NEXT_STEP}" in sent[0].text


def test_finish_sends_no_email_for_a_failure_its_own_task_already_reported(sent):
    raised = raised_by_task(RunFailed("audience a_v1 run 1 failed: meta: failed"), task_id="finish")
    ops.notify_sync_failure({"ti": FakeTI("finish"), "exception": raised})
    assert sent == []
    ops.notify_sync_failure({"ti": FakeTI("finish"), "exception": raised_by_task(LeaseHeld("lease"), "finish")})
    assert len(sent) == 1


def test_every_error_class_carries_its_own_next_step():
    """No typed error but the base falls back to the generic advice: each says what a person should do."""
    for error, _, step in CASES.values():
        assert isinstance(error, errors.DataOutError)
        assert errors.next_step_of(error) == step
