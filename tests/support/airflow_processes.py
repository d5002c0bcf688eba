"""Real Airflow components for tests: the launcher's process management (``sandbox.airflow_processes``).

``make airflow`` and the real-scheduler tests start and stop Airflow the same way, so there is one
implementation, in ``include/sandbox/``; tests import it from here.
"""

from __future__ import annotations

from sandbox.airflow_processes import (
    INHERITED_PREFIXES,
    AirflowProcesses,
    Component,
    ShutdownReport,
    clean_environ,
    free_port,
    http_json,
    session_pids,
    wait_for,
)

__all__ = [
    "INHERITED_PREFIXES",
    "AirflowProcesses",
    "Component",
    "ShutdownReport",
    "clean_environ",
    "free_port",
    "http_json",
    "session_pids",
    "wait_for",
]
