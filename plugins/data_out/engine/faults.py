"""Crash-test hooks: kill this process (SIGKILL, no cleanup) at a named point, for reliability tests.

Inert unless ``DATA_OUT_KILL_AT=<point>:<n>`` is set, which kills the process the n-th time ``point``
is reached. The points sit where a real crash hurts most: between staging batches, inside the merge
and plan transactions, and around each destination call (before, after the destination accepted a
batch but before state was committed, after the commit).
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "DATA_OUT_KILL_AT"
_reached: Counter[str] = Counter()


def point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    _reached[name] += 1
    if _reached[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
