"""What staging needs from a source: batches of rows with a member key and raw identifier columns."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

Row = Mapping[str, Any]


class SourceError(Exception):
    """The source could not be read. The message names the audience and source, never a row's values."""


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
