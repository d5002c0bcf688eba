"""deploy/standins.py: the staging stack's stand-ins, reachable from other containers, state kept on stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from sandbox.standins import CREDENTIALS, STANDINS, serve
from tests.deploy import ROOT, standins_entry


def test_serves_on_every_interface_and_the_default_stays_loopback() -> None:
    entry = standins_entry()
    with serve(["meta"], host=entry.ALL_INTERFACES) as running:
        host, port = running["meta"].server.server_address[:2]
        assert host == entry.ALL_INTERFACES
        socket.create_connection(("127.0.0.1", port), 2).close()
    with serve(["meta"]) as running:  # the laptop default
        assert running["meta"].server.server_address[0] == "127.0.0.1"


def test_exports_point_each_connection_at_the_service_name() -> None:
    exports = standins_entry().connection_exports({"meta": 18081, "google_ads": 18082}, "standins")
    assert set(exports) == {"AIRFLOW_CONN_DATA_OUT_META", "AIRFLOW_CONN_DATA_OUT_GOOGLE_ADS"}
    google = json.loads(exports["AIRFLOW_CONN_DATA_OUT_GOOGLE_ADS"])
    assert google == {"conn_type": "data_out_google_ads", "host": "http://standins:18082", **CREDENTIALS["google_ads"]}


def test_unknown_names_are_refused() -> None:
    with pytest.raises(SystemExit) as exc:
        standins_entry().main(["--port-base", "0", "facebook"])
    assert exc.value.code == 2


def test_the_container_command_serves_prints_and_saves_state_on_sigterm(tmp_path: Path) -> None:
    """What ``docker compose --profile standins up`` / ``stop`` do to the process, on ephemeral ports."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "include")}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "deploy" / "standins.py"), "--state-dir", str(tmp_path / "state")]
        + ["--port-base", "0", "--advertise-host", "standins-test"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().strip() for _ in STANDINS]
        conns = {}
        for line in lines:
            key, _, value = line.partition("=")
            conns[key] = json.loads(value.strip("'"))
        assert set(conns) == {f"AIRFLOW_CONN_DATA_OUT_{n.upper()}" for n in STANDINS}
        meta = conns["AIRFLOW_CONN_DATA_OUT_META"]
        assert meta["host"].startswith("http://standins-test:")
        port = int(meta["host"].rsplit(":", 1)[1])
        # reachable, and enforcing the vendor contract (no token, no entry)
        assert requests.get(f"http://127.0.0.1:{port}/v21.0/123/users", timeout=5).status_code in {400, 401, 404}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert {p.name for p in (tmp_path / "state").iterdir()} == {f"{n}.pickle" for n in STANDINS}
