"""Redaction of identifiers from third-party text: vendor error messages and database driver messages.

They are the one place text we did not write reaches our logs, run records and alert emails, so they
pass through ``scrub`` (anything that looks like an email address or a phone number) first. A database
driver's message gets more: only its first line is kept (Postgres' ``DETAIL`` line quotes the failing
row or key) and the values it quotes are masked (``driver_line``).
"""

from __future__ import annotations

import re
import sqlite3

from sqlalchemy.exc import DBAPIError

_EMAIL = re.compile(r"[^\s@\"'<>()]+@[^\s@\"'<>()]+\.[A-Za-z]{2,}")
_PHONE = re.compile(r"\+?\d[\d\s().-]{6,}\d")
# Postgres quotes a value after a colon ('invalid input syntax for type integer: "c_17"') or after
# "value" ('value "99999999999" is out of range'); identifiers it quotes elsewhere (relation, column,
# constraint) stay readable. MySQL and SQLite quote values in single quotes.
_PG_VALUE = re.compile(r'(:\s*|\bvalue\s+)"[^"]*"')
_SINGLE_QUOTED = re.compile(r"'[^']*'")


def scrub(text: str, limit: int = 500) -> str:
    """Replace email-like and phone-like substrings, and cut to ``limit`` characters."""
    return _PHONE.sub("<number>", _EMAIL.sub("<email>", text))[:limit]


def _driver_error_types() -> tuple[type[BaseException], ...]:
    kinds: list[type[BaseException]] = [sqlite3.Error]
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a pinned dependency
        return tuple(kinds)
    return (*kinds, psycopg.Error)


#: PEP 249 errors raised by the drivers themselves, when code talks to a raw cursor (``COPY``)
DRIVER_ERRORS = _driver_error_types()


def is_driver_error(exc: BaseException) -> bool:
    """A database driver's error, raw or wrapped by SQLAlchemy: its text can quote rows."""
    return isinstance(exc, (DBAPIError, *DRIVER_ERRORS))


def driver_line(exc: BaseException, limit: int = 300) -> str:
    """What the driver said, safe to log: its first line, quoted values masked, then ``scrub``-bed.

    ``str()`` of a SQLAlchemy error adds the statement and the driver's ``DETAIL`` (``Key
    (member_key)=(alice@example.com) already exists``, ``Failing row contains (...)``); none of that is kept.
    """
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    first = lines[0].strip() if lines else ""
    first = _SINGLE_QUOTED.sub("'<value>'", _PG_VALUE.sub(r'\1"<value>"', first))
    return scrub(first, limit) or "no message"
