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
