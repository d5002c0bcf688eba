"""Provider metadata: registers Data Out's connection types with Airflow (entry point in pyproject.toml)."""

from __future__ import annotations

from typing import Any

_HOOKS = "data_out.hooks.destinations"


def get_provider_info() -> dict[str, Any]:
    types = {
        "data_out_meta": "MetaHook",
        "data_out_google": "GoogleHook",
        "data_out_google_ads": "GoogleAdsHook",
        "data_out_tiktok": "TikTokHook",
        "data_out_segment": "SegmentHook",
        "data_out_webhook": "WebhookHook",
        "data_out_customerio": "CustomerIOHook",
    }
    return {
        "package-name": "data-out-airflow",
        "name": "Data Out for Airflow",
        "description": "Audience sync from the warehouse and Customer.io to ad platforms, the CDP and webhooks.",
        "connection-types": [{"connection-type": t, "hook-class-name": f"{_HOOKS}.{cls}"} for t, cls in types.items()],
    }
