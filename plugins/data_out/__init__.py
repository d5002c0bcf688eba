"""Data Out for Airflow: keep destinations in step with the audiences a retention team defines.

The modules at this level (config, identity, holdout, state, staging, diff, sync, runner) import nothing
from Airflow; ``hooks``, ``operators`` and ``dag_factory`` are the Airflow face. For your own DAGs import
from ``data_out.api`` only (see docs/using-from-your-dags.md): the other modules are internal.
"""
