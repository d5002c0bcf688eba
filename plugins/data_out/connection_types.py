"""Data Out's connection types, pools and hooks, named in one place.

Each vendor Data Out talks to has one entry: the Airflow connection type of its credentials (also the
default connection id), the hook class behind that type (Airflow's "Test" button, the session the
destination sends through), and, for destinations, the pool its push tasks run in. The provider
metadata (``provider.py``), the hooks, the destinations and ``deploy/pools.json`` all read their names
from here (a test holds the pools file to it), so a new vendor is one entry, not four spellings.

Pure: no Airflow import; hooks are named by dotted path and imported only when asked for.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ConnectionKind:
    """One vendor: ``name`` is the destination ``type`` in audience files (or the source's name)."""

    name: str
    #: dotted path of the hook class; None where the connection is any SQL connection (the warehouse)
    hook: str | None
    #: whether push tasks of this destination run in a pool of their own (sources have none)
    pooled: bool = True

    @property
    def conn_type(self) -> str:
        """The Airflow connection type, and the default connection id."""
        return f"data_out_{self.name}"

    @property
    def pool(self) -> str:
        """The Airflow pool capping concurrent calls to this vendor across all workers (when ``pooled``)."""
        return f"data_out_{self.name}"

    def hook_class(self) -> type[Any]:
        if self.hook is None:
            raise LookupError(f"{self.conn_type} is not an HTTP connection type")
        module, _, name = self.hook.rpartition(".")
        return getattr(importlib.import_module(module), name)


_D = "data_out.destinations"
KINDS: dict[str, ConnectionKind] = {
    k.name: k
    for k in (
        ConnectionKind("google", f"{_D}.google.hook.GoogleHook"),
        ConnectionKind("google_ads", f"{_D}.google_ads.hook.GoogleAdsHook"),
        ConnectionKind("meta", f"{_D}.meta.hook.MetaHook"),
        ConnectionKind("segment", f"{_D}.segment.hook.SegmentHook"),
        ConnectionKind("tiktok", f"{_D}.tiktok.hook.TikTokHook"),
        ConnectionKind("warehouse", None),  # any SQL connection Airflow can open (docs/warehouses.md)
        ConnectionKind("webhook", f"{_D}.webhook.hook.WebhookHook"),
        ConnectionKind("customerio", "data_out.sources.customerio_hook.CustomerIOHook", pooled=False),
    )
}


def kind(name: str) -> ConnectionKind:
    """The entry for a destination type or source name."""
    try:
        return KINDS[name]
    except KeyError:
        raise KeyError(f"no Data Out connection kind {name!r}; known: {', '.join(sorted(KINDS))}") from None


def http_kinds() -> list[ConnectionKind]:
    """The kinds with a hook of their own: Data Out's Airflow connection types."""
    return [k for k in KINDS.values() if k.hook]


def pools() -> set[str]:
    """Every pool the destinations' push tasks name (``deploy/pools.json`` defines exactly these)."""
    return {k.pool for k in KINDS.values() if k.pooled}


def hook_for_conn_type(conn_type: str | None) -> ConnectionKind | None:
    """The kind whose connection type is ``conn_type`` (None for any other type)."""
    wanted = (conn_type or "").lower()
    return next((k for k in http_kinds() if k.conn_type == wanted), None)
