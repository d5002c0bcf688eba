"""Example: sync an audience inside your own DAG, and run a second DAG after every sync of it.

``example_data_out_after_models`` builds the warehouse models the audience reads (a stand-in task
here; ``dbt build`` or a cosmos ``DbtTaskGroup`` in a real project), then syncs
``recent_purchasers_7d_v1`` with ``AudienceSyncTaskGroup``: the same stage -> plan -> push -> finish
tasks as the audience's own DAG. ``example_data_out_on_audience_synced`` is scheduled on the audience's
Asset: Airflow runs it after each successful sync, whichever DAG ran it, and the triggering event's
``extra`` carries the run's counts. Both are paused when first parsed; see
``docs/using-from-your-dags.md``.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from airflow.sdk import DAG, task

from data_out.api import AudienceSyncTaskGroup, audience_asset
from data_out.config import load_audiences

AUDIENCE = "recent_purchasers_7d_v1"
DEFAULTS = {"owner": "analytics-engineering", "retries": 1, "retry_delay": dt.timedelta(minutes=1)}
START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
log = logging.getLogger(__name__)

# Examples sync a shipped audience; where DATA_OUT_AUDIENCES_DIR points elsewhere and it is absent, they define
# nothing rather than break parsing. Your own DAGs should not guard: a missing audience must fail the parse.
if AUDIENCE in load_audiences().audiences:
    with DAG(
        "example_data_out_after_models",
        schedule=None,
        start_date=START,
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULTS,
        tags=["data-out", "example"],
        doc_md=__doc__,
        is_paused_upon_creation=True,
    ):

        @task
        def build_models() -> None:
            """Stands in for ``dbt build``: the audience's source tables are current once this succeeds."""
            log.info("warehouse models built")

        build_models() >> AudienceSyncTaskGroup(AUDIENCE)

    with DAG(
        "example_data_out_on_audience_synced",
        schedule=[audience_asset(AUDIENCE)],
        start_date=START,
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULTS,
        tags=["data-out", "example"],
        doc_md=__doc__,
        is_paused_upon_creation=True,
    ):

        @task
        def report_sync(triggering_asset_events: Any = None) -> list[dict[str, Any]]:
            """Read the counts of the sync(s) that triggered this run from the Asset events' ``extra``."""
            counts = [dict(e.extra) for e in triggering_asset_events[audience_asset(AUDIENCE)]]
            for c in counts:
                log.info(
                    "%s run %s: +%s -%s (%s rejected)", AUDIENCE, c["run_id"], c["added"], c["removed"], c["rejected"]
                )
            return counts

        report_sync()
