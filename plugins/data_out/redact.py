"""Redaction of anything that looks like an email address or a phone number from third-party text.

Vendor error messages and database driver messages are the one place text we did not write reaches our
logs and run records; they pass through ``scrub`` first.
"""

from __future__ import annotations

import re

_EMAIL = re.compile(r"[^\s@\"'<>()]+@[^\s@\"'<>()]+\.[A-Za-z]{2,}")
_PHONE = re.compile(r"\+?\d[\d\s().-]{6,}\d")


def scrub(text: str, limit: int = 500) -> str:
    """Replace email-like and phone-like substrings, and cut to ``limit`` characters."""
    return _PHONE.sub("<number>", _EMAIL.sub("<email>", text))[:limit]
