"""What staging needs from a source: batches of rows with a member key and raw identifier columns."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from data_out.errors import CUSTOMERIO_NEXT_STEP, QUERY_FAILED_NEXT_STEP, QUERY_SHAPE_NEXT_STEP, DataOutError

Row = Mapping[str, Any]


class SourceError(DataOutError):
    """The source could not be read. The message names the audience and source, never a row's values.

    ``retryable`` is False when running the task again cannot help (a refused credential, a query that
    tries to write): the task then fails at once instead of spending its retries.
    """

    retryable = True
    next_step = QUERY_FAILED_NEXT_STEP


class QueryShapeError(SourceError):
    """The query ran but its rows do not fit the audience's column mapping (missing columns, email keys).

    Not retryable: the same query returns the same columns until a person changes it.
    """

    retryable = False
    next_step = QUERY_SHAPE_NEXT_STEP


class CustomerIOError(SourceError):
    """Customer.io refused the request or answered something the source cannot read."""

    next_step = CUSTOMERIO_NEXT_STEP


class Source(Protocol):
    def iter_batches(self, batch_size: int) -> Iterator[list[Row]]:
        """Yield the current membership in batches; memory is bounded by ``batch_size``."""
        ...


#: the longest member key the state schema holds; longer keys are counted as missing, never truncated
MAX_MEMBER_KEY_LENGTH = 256
#: what is trimmed around a member key: ASCII whitespace only, so SQL's ``btrim`` gives the same key
#: (``str.strip()`` would also drop Unicode spaces, which Postgres cannot mirror exactly)
KEY_WHITESPACE = " \t\n\r\f\v"


def member_key(raw: Any) -> str | None:
    """The member key of a source row, or ``None`` (counted as missing) when there is no usable one."""
    if raw is None:
        return None
    if isinstance(raw, bytes | bytearray | memoryview):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            return None
    key = str(raw).strip(KEY_WHITESPACE)
    if not key or len(key) > MAX_MEMBER_KEY_LENGTH:
        return None
    return key


#: a key with an at sign (ASCII or full-width) is an email address, or close enough to one
_EMAIL_MARKS = ("@", "\uff20")
#: phone-shaped keys: a leading ``+`` and digits, or digit groups split by phone separators. Plain
#: digit strings are accepted: numeric customer ids look exactly like them. The same pattern is used
#: by Python's ``re`` and Postgres' regular expressions (``contact_key_sql``).
_SEP = "[ .\\-\u2013/]"
PHONE_PATTERN = f"^(\\+[0-9][0-9 ().\\-\u2013/]{{5,}}[0-9]|\\(?[0-9]{{2,4}}\\)?{_SEP}[0-9]{{2,4}}{_SEP}[0-9]{{3,5}})$"
_PHONE = re.compile(PHONE_PATTERN)


#: what a phone-shaped key starts with: the regular expression runs only on those (a third of the cost)
_PHONE_FIRST = "+(0123456789"


def contact_key_sql(key: str) -> str:
    """``looks_like_contact`` as a Postgres condition on the text expression ``key``."""
    marks = " OR ".join(f"{key} LIKE '%{m}%'" for m in _EMAIL_MARKS)
    first = ", ".join(f"'{c}'" for c in _PHONE_FIRST)
    return f"({marks} OR (left({key}, 1) IN ({first}) AND {key} ~ '{PHONE_PATTERN}'))"


def looks_like_contact(key: str) -> bool:
    """Whether a member key looks like an email address or a phone number (never stored or sent raw)."""
    return any(m in key for m in _EMAIL_MARKS) or bool(_PHONE.match(key))


def contact_keys_error(label: str, member_key_column: str, found: int, scanned: str) -> SourceError:
    """Staging refuses such keys: the count only, never a value."""
    return QueryShapeError(
        f"{label}: {found} member keys in column {member_key_column!r} ({scanned}) look like email addresses or "
        "phone numbers; member keys are stored and sent unhashed, so nothing was staged. Point member_key "
        "at a customer id (an opaque id) in the audience file, then clear the stage task",
        retryable=False,
    )
