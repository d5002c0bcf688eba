"""Shared HMAC signing secrets: what counts as no secret at all.

An empty key signs nothing: anyone can compute ``HMAC("", body)``, so a receiver verifying with it accepts
forgeries, and a sender using it is refused by every receiver that checks properly. The env template's
``change-me-...`` values are public, which makes them as good as empty.
"""

from __future__ import annotations

import re

#: values that mean "nobody set the secret": the env template's ``change-me-...`` and common stand-ins
_PLACEHOLDER = re.compile(r"change[-_ ]?me|^(secret|password|signing[-_ ]?key|todo|xxx+)$", re.IGNORECASE)


def unusable_secret(value: str | None) -> str | None:
    """Why ``value`` cannot serve as a signing secret (empty or a template placeholder), or None when it can."""
    if not value or not value.strip():
        return "it is empty"
    if _PLACEHOLDER.search(value.strip()):
        return "it is still a placeholder value"
    return None
