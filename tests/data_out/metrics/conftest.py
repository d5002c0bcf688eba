"""A metrics receiver served by uvicorn on loopback, and helpers to sign and post events."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import uvicorn

from data_out.connections import ConnectionInfo, engine_for
from data_out.metrics.receiver import ReceiverSettings, create_app, signature
from data_out.state import ensure_schema
from sandbox.smtp_sink import free_port

SECRET = "cio-signing-key"


class Receiver:
    def __init__(self, url: str, engine) -> None:  # type: ignore[no-untyped-def]
        self.url = url
        self.engine = engine

    def post(self, body: bytes | dict, *, secret: str = SECRET, ts: int | None = None, **kw) -> requests.Response:  # type: ignore[no-untyped-def]
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        stamp = str(ts if ts is not None else int(time.time()))
        headers = {
            "X-CIO-Timestamp": stamp,
            "X-CIO-Signature": signature(secret, stamp, raw),
            "Content-Type": "application/json",
        }
        return requests.post(f"{self.url}/customerio", data=raw, headers=headers, timeout=30, **kw)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    engine = engine_for(ConnectionInfo("s", "sqlite", host=str(tmp_path / "state.db")))
    ensure_schema(engine)
    app = create_app(lambda: ReceiverSettings(engine=engine, secret=SECRET))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:  # wait for the condition, not a fixed sleep
        assert time.monotonic() < deadline, "receiver did not start"
        time.sleep(0.01)
    yield Receiver(f"http://127.0.0.1:{port}", engine)
    server.should_exit = True
    thread.join(5)


def event(i: int, metric: str = "delivered", ts: int = 1_793_000_000, **data: object) -> dict:
    return {
        "event_id": f"ev{i:05d}",
        "object_type": "email",
        "metric": metric,
        "timestamp": ts,
        "data": {
            "customer_id": f"c{i % 50:03d}",
            "delivery_id": f"d{i:05d}",
            "campaign_id": 101,
            "identifiers": {"id": f"c{i % 50:03d}", "email": f"Person.{i}@Example.com", "cio_id": f"x{i}"},
            "recipient": f"Person.{i}@Example.com",
            **data,
        },
    }
