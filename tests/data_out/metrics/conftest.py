"""A metrics receiver served by uvicorn on loopback, and helpers to sign and post events."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
import uvicorn
from fastapi import FastAPI

from data_out.connections import ConnectionInfo, engine_for
from data_out.metrics.receiver import create_app, signature
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
        kw.setdefault("timeout", 30)
        return requests.post(f"{self.url}/customerio", data=raw, headers=headers, **kw)


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:  # wait for the condition, not a fixed sleep
        assert time.monotonic() < deadline, "receiver did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(5)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    engine = engine_for(ConnectionInfo("s", "sqlite", host=str(tmp_path / "state.db")))
    ensure_schema(engine)
    with serving(create_app(lambda: SECRET, lambda: engine)) as url:
        yield Receiver(url, engine)


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
