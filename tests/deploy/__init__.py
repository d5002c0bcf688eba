"""Tests of the docker-compose deployment (docker-compose.yaml, deploy/)."""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


@cache
def standins_entry() -> ModuleType:
    """deploy/standins.py, the stand-ins container's entry point (a script, not a package module)."""
    spec = importlib.util.spec_from_file_location("deploy_standins", ROOT / "deploy" / "standins.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
