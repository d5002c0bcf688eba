"""Audience sync DAGs (Airflow), one per audience file in ``include/audiences/``.

Each run stages the audience's source snapshot, then for every destination plans the diff against what
that destination acknowledged (guarded against mass removals) and pushes it in idempotent batches, and
finally records the run. Trigger with conf ``{"guard_override_reason": "..."}`` to let a deliberate
shrink through once, or ``{"as_of": "2026-11-01T00:00:00Z"}`` to evaluate the source at another time.
"""

from __future__ import annotations

from data_out.dag_factory import build_audience_dags

globals().update(build_audience_dags(module_doc=__doc__))
