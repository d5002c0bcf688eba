"""The Airflow Assets Data Out emits: one per audience, one per pipeline other DAGs wait for."""

from __future__ import annotations

from airflow.sdk import Asset, AssetAlias

from data_out.asset_names import PIPELINE_ASSETS, audience_uri, pipeline_asset_key
from data_out.config import AudienceConfig


def audience_asset(audience: str) -> Asset:
    """Updated by every successful sync of ``audience``, with the run's counts as the event's ``extra``.

    Schedule a DAG on it with ``schedule=[audience_asset("cio_cart_abandon_6h_v1")]``.
    """
    return Asset(audience_uri(audience), group="data-out")


def pipeline_asset(key: str) -> Asset:
    """The Asset a Data Out pipeline DAG emits when its run succeeds (``message_metrics``)."""
    return Asset(PIPELINE_ASSETS[key], group="data-out")


MESSAGE_METRICS = pipeline_asset("message_metrics")

#: the outlet of tasks that sync audiences chosen at run time (the operations DAG): each sync adds an event
#: for ``audience_asset(name)`` through it, so DAGs scheduled on that Asset run after those syncs too
AUDIENCE_SYNCS = AssetAlias("data_out_audience_syncs", group="data-out")


def audience_schedule(config: AudienceConfig) -> str | list[Asset] | None:
    """The DAG schedule an audience file asks for: its cron or preset, or the pipeline Asset it waits on.

    Paused audiences run only when triggered.
    """
    if config.status != "active":
        return None
    key = pipeline_asset_key(config.schedule)
    return [pipeline_asset(key)] if key else config.schedule
