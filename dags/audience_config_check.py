"""Surfaces broken audience files as an Airflow import error naming the file, the field and the fix.

The audiences that do load are built by ``audience_sync.py`` regardless, so one broken file never stops
the others. This file defines no DAG when every audience file is valid.
"""

from __future__ import annotations

from data_out.config import load_audiences

_errors = load_audiences().errors
if _errors:
    raise ImportError(
        f"{len(_errors)} problem(s) in audience files; the other audiences still run:\n"
        + "\n".join(f"- {e}" for e in _errors)
    )
