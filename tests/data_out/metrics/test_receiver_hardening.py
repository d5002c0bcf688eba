"""The receiver at the internet's edge: no key means no webhook, a locked table blocks nobody, a rotated key
takes effect at once, and malformed but signed events are refused for good (400), never retried (5xx)."""

from __future__ import annotations

import importlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from sqlalchemy import Engine, func, select, text

from data_out import state
from data_out.connections import ConnectionInfo, engine_for
from data_out.metrics.receiver import ReceiverLimits, SigningKey, create_app, signature
from data_out.state import ensure_schema
from tests.data_out.metrics.conftest import SECRET, Receiver, event, serving
from tests.deploy.test_compose import ENV_EXAMPLE, read_env_file

RECEIVER_LOG = "data_out.metrics.receiver"
KEY_CONN = "AIRFLOW_CONN_DATA_OUT_CUSTOMERIO_WEBHOOK"


def stored(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(state.metric_event))


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Engine:
    engine = engine_for(ConnectionInfo("s", "sqlite", host=str(tmp_path / "state.db")))
    ensure_schema(engine)
    return engine


@pytest.fixture
def pg_engine(pg_database: ConnectionInfo) -> Engine:
    engine = engine_for(pg_database)
    ensure_schema(engine)
    return engine


def template_placeholder() -> str:
    """The signing key as deploy/airflow.env.example ships it."""
    values, _ = read_env_file(ENV_EXAMPLE)
    return json.loads(values[KEY_CONN])["password"]


# --------------------------------------------------------------------------------------------------
# no usable key: every webhook refused, said once
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, "", "   ", "template"], ids=["none", "empty", "blank", "template"])
def test_without_a_usable_key_every_webhook_is_refused_and_logged_once(
    key: str | None, sqlite_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    key = template_placeholder() if key == "template" else key
    caplog.set_level(logging.INFO, logger=RECEIVER_LOG)
    with serving(create_app(lambda: key, lambda: sqlite_engine)) as url:
        forger = Receiver(url, sqlite_engine)
        answers = [forger.post(event(i, metric="unsubscribed"), secret=key or "") for i in range(3)]
    assert [a.status_code for a in answers] == [503, 503, 503]  # 5xx: Customer.io keeps it until the key is set
    assert stored(sqlite_engine) == 0, "a request signed with the empty or template key was stored"
    errors = [r for r in caplog.records if r.name == RECEIVER_LOG and r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "refused" in errors[0].getMessage() and "signing key" in errors[0].getMessage()
    if key and key.strip():
        assert key not in caplog.text  # the placeholder is never echoed (a real key never would be either)


def test_the_plugin_refuses_webhooks_while_the_connection_has_no_password_and_accepts_them_once_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The app the api-server actually mounts, configured the way the compose stack configures it."""
    db = tmp_path / "state.db"
    monkeypatch.setenv("AIRFLOW_CONN_DATA_OUT_STATE", json.dumps({"conn_type": "sqlite", "host": str(db)}))
    monkeypatch.setenv(KEY_CONN, json.dumps({"conn_type": "generic"}))
    import data_out_plugin

    plugin = importlib.reload(data_out_plugin)  # a fresh key cache and engine, as a new api-server has
    app = plugin.DataOutPlugin.fastapi_apps[0]["app"]
    try:
        with serving(app) as url:
            sender = Receiver(url, None)
            assert sender.post(event(1), secret="").status_code == 503
            assert not db.exists(), "the state database was opened for an unauthenticated request"
            monkeypatch.setenv(KEY_CONN, json.dumps({"conn_type": "generic", "password": "k-9f2c7a81e4"}))
            wait_for(lambda: sender.post(event(2), secret="k-9f2c7a81e4").status_code == 200, "the new key")
    finally:
        plugin._state_engine.cache_clear()
    assert stored(engine_for(ConnectionInfo("s", "sqlite", host=str(db)))) == 1


# --------------------------------------------------------------------------------------------------
# key rotation without a restart
# --------------------------------------------------------------------------------------------------


def test_a_rotated_key_takes_effect_without_a_restart(monkeypatch: pytest.MonkeyPatch, sqlite_engine: Engine) -> None:
    import data_out_plugin

    monkeypatch.setenv(KEY_CONN, json.dumps({"conn_type": "generic", "password": "old-key-5d1e"}))
    # a TTL far longer than the test: only the refresh on a failed signature can pick up the new key
    key = SigningKey(data_out_plugin._signing_key, ttl_s=3600)
    with serving(create_app(key, lambda: sqlite_engine)) as url:
        sender = Receiver(url, sqlite_engine)
        assert sender.post(event(1), secret="old-key-5d1e").status_code == 200
        monkeypatch.setenv(KEY_CONN, json.dumps({"conn_type": "generic", "password": "new-key-a83b"}))
        assert sender.post(event(2), secret="new-key-a83b").status_code == 200
        assert sender.post(event(3), secret="old-key-5d1e").status_code == 401  # the old key is dead at once
    assert stored(sqlite_engine) == 2


def test_the_key_is_reread_after_its_ttl_and_a_failed_signature_rereads_it_at_most_once_a_second() -> None:
    now = [0.0]
    reads: list[str] = []
    current = ["key-one"]

    def load() -> str:
        reads.append(current[0])
        return current[0]

    key = SigningKey(load, ttl_s=30, min_refresh_s=1, clock=lambda: now[0])
    assert key.get() == "key-one" and len(reads) == 1
    current[0] = "key-two"
    now[0] = 29.9
    assert key.get() == "key-one" and len(reads) == 1  # within the TTL: no read
    now[0] = 30.0
    assert key.get() == "key-two" and len(reads) == 2  # TTL over: read again
    assert key.refresh() is False and len(reads) == 3  # a failed signature reads once...
    for _ in range(50):
        key.refresh()  # ... and a flood of forged requests reads no more within the second
    assert len(reads) == 3
    now[0] = 31.0
    key.refresh()
    assert len(reads) == 4


# --------------------------------------------------------------------------------------------------
# the event loop stays free; storage is bounded in time (real Postgres)
# --------------------------------------------------------------------------------------------------


def _lock_waiters(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            )
        )


@pytest.fixture
def locked_events(pg_engine: Engine) -> Iterator[Callable[[], None]]:
    """Another transaction holds the events table; call the yielded function to release it."""
    conn = pg_engine.connect()
    tx = conn.begin()
    conn.execute(text(f"LOCK TABLE {state.metric_event.name} IN ACCESS EXCLUSIVE MODE"))

    def release() -> None:
        if tx.is_active:
            tx.rollback()

    yield release
    release()
    conn.close()


@pytest.mark.postgres
def test_a_signed_post_waiting_on_a_locked_table_does_not_block_other_requests(
    pg_engine: Engine, locked_events: Callable[[], None]
) -> None:
    app = create_app(lambda: SECRET, lambda: pg_engine, ReceiverLimits(statement_timeout_s=60))
    with serving(app) as url, ThreadPoolExecutor(1) as pool:
        sender = Receiver(url, pg_engine)
        pending = pool.submit(sender.post, event(1))
        wait_for(lambda: _lock_waiters(pg_engine) == 1, "the receiver's insert to wait on the lock")
        health = requests.get(f"{url}/health", timeout=5)  # on a blocked event loop this times out
        assert health.status_code == 200
        assert not pending.done(), "the signed POST should still be waiting on the lock"
        locked_events()
        answer = pending.result(timeout=30)
    assert (answer.status_code, answer.json()["status"]) == (200, "stored")
    assert stored(pg_engine) == 1


@pytest.mark.postgres
def test_a_burst_against_a_locked_table_holds_at_most_its_thread_budget(
    pg_engine: Engine, locked_events: Callable[[], None]
) -> None:
    """Airflow's own sync endpoints share the api-server's threadpool: the receiver never takes more than
    its budget of it; further webhooks wait on the event loop, which stays free."""
    app = create_app(lambda: SECRET, lambda: pg_engine, ReceiverLimits(statement_timeout_s=60, threads=2))
    budget = app.state.thread_budget
    with serving(app) as url, ThreadPoolExecutor(5) as pool:
        sender = Receiver(url, pg_engine)
        pending = [pool.submit(sender.post, event(i)) for i in range(5)]
        wait_for(lambda: budget.in_use() == (2, 3), "two webhooks in threads, three queued")
        wait_for(lambda: _lock_waiters(pg_engine) == 2, "both threads waiting on the lock")
        assert requests.get(f"{url}/health", timeout=5).status_code == 200
        assert budget.in_use() == (2, 3) and not any(p.done() for p in pending)
        locked_events()
        assert [p.result(timeout=30).status_code for p in pending] == [200] * 5
    assert stored(pg_engine) == 5


@pytest.mark.postgres
def test_a_locked_table_answers_a_quick_retryable_503_and_the_retry_is_stored(
    pg_engine: Engine, locked_events: Callable[[], None]
) -> None:
    app = create_app(lambda: SECRET, lambda: pg_engine, ReceiverLimits(statement_timeout_s=0.5))
    with serving(app) as url:
        sender = Receiver(url, pg_engine)
        started = time.monotonic()
        busy = sender.post(event(1), timeout=15)
        elapsed = time.monotonic() - started
        assert busy.status_code == 503 and busy.headers["Retry-After"].isdigit()
        assert elapsed < 5, f"a locked table held the sender {elapsed:.1f}s"
        locked_events()
        assert sender.post(event(1)).status_code == 200  # Customer.io's retry lands
    assert stored(pg_engine) == 1


@pytest.mark.postgres
def test_a_forged_request_never_opens_a_database_connection(pg_engine: Engine) -> None:
    opened: list[int] = []

    def engine() -> Engine:
        opened.append(1)
        return pg_engine

    with serving(create_app(lambda: SECRET, engine)) as url:
        sender = Receiver(url, pg_engine)
        assert sender.post(event(1), secret="forged").status_code == 401
        assert sender.post(event(2), ts=int(time.time()) - 3600).status_code == 401
        assert opened == []
        assert sender.post(event(3)).status_code == 200
        assert opened == [1]


# --------------------------------------------------------------------------------------------------
# malformed but signed: 400 naming the field, never 5xx
# --------------------------------------------------------------------------------------------------


def _with(path: str, value: object) -> bytes:
    body = event(1)
    target = body
    *parents, leaf = path.split(".")
    for p in parents:
        target = target[p]
    target[leaf] = value
    return json.dumps(body).encode()


def _raw_number(path: str, digits: int) -> bytes:
    """A JSON number too long for ``int()`` to convert (Python refuses over 4,300 digits)."""
    return _with(path, "@@N@@").replace(b'"@@N@@"', b"9" * digits)


MALFORMED = {
    "5000-digit timestamp": (_raw_number("timestamp", 5000), "timestamp"),
    "timestamp past year 9999": (_with("timestamp", 10**15), "timestamp"),
    "campaign_id of 2**63": (_with("data.campaign_id", 2**63), "data.campaign_id"),
    "broadcast_id of 2**64": (_with("data.broadcast_id", 2**64), "data.broadcast_id"),
    "action_id of 5000 digits": (_raw_number("data.action_id", 5000), "data.action_id"),
    "link_id negative": (_with("data.link_id", -1), "data.link_id"),
    "numeric customer_id of 2**63": (_with("data.customer_id", 2**63), "data.customer_id"),
    "delivery_id over 128 characters": (_with("data.delivery_id", "d" * 129), "data.delivery_id"),
    "JSON nested 100k deep": (
        _with("data.extra", "@@N@@").replace(b'"@@N@@"', b"[" * 100_000 + b"]" * 100_000),
        "body",
    ),
}


@pytest.mark.postgres
def test_malformed_but_signed_fields_get_a_400_naming_the_field(pg_engine: Engine) -> None:
    with serving(create_app(lambda: SECRET, lambda: pg_engine)) as url:
        sender = Receiver(url, pg_engine)
        answers = {case: sender.post(body) for case, (body, _) in MALFORMED.items()}
        for case, (_, field) in MALFORMED.items():
            answer = answers[case]
            assert answer.status_code == 400, (case, answer.status_code, answer.text[:200])
            assert answer.json()["fields"] == [field], (case, answer.json())
        assert sender.post(event(2)).status_code == 200  # and the receiver is fine afterwards
    assert stored(pg_engine) == 1


def test_odd_timestamp_and_signature_headers_are_a_401_not_a_crash(receiver: Receiver) -> None:
    body = json.dumps(event(1)).encode()
    for stamp in ("9" * 5000, "²", "-1", "1.5e9"):
        headers = {"X-CIO-Timestamp": stamp, "X-CIO-Signature": signature(SECRET, stamp, body)}
        answer = requests.post(f"{receiver.url}/customerio", data=body, headers=headers, timeout=10)
        assert answer.status_code == 401, (stamp[:10], answer.status_code)
    stamp = str(int(time.time()))
    for given in ("é" * 64, "", "0" * 5000):
        headers = {"X-CIO-Timestamp": stamp, "X-CIO-Signature": given}
        answer = requests.post(f"{receiver.url}/customerio", data=body, headers=headers, timeout=10)
        assert answer.status_code == 401, (given[:10], answer.status_code)
    assert receiver.post(event(2)).status_code == 200
