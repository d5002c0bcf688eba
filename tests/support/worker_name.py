"""``[core] hostname_callable`` for a test's Celery workers: both run on this machine, so each names itself."""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    return os.environ.get("DATA_OUT_TEST_WORKER") or socket.getfqdn()
