"""The pure package imports nothing from Airflow: config, identity, the engine, state, the destinations'
contracts and transport load (and test) without it. Only the Airflow face may import it: hooks (each
destination's ``hook`` module, the HTTP hook base, the Customer.io and state hooks), operators, the DAG
factory and the task group it shares, the public API and its Assets, the UI and the CLI that migrates
through Airflow's connections."""

from __future__ import annotations

import subprocess
import sys

#: module prefixes that are Airflow's face of the package
AIRFLOW_FACE = (
    "data_out.hooks",
    "data_out.operators",
    "data_out.ui",
    "data_out.airflow",
    "data_out.dag_factory",
    "data_out.task_group",
    "data_out.api",
    "data_out.assets",
    "data_out.state.migrate",
)

_PROBE = """
import importlib, pkgutil, sys
import data_out
face = tuple(sys.argv[1:])
pure = [m.name for m in pkgutil.walk_packages(data_out.__path__, "data_out.")
        if not m.name.startswith(face) and not m.name.rpartition(".")[2].endswith("hook")]
for name in sorted(pure):
    importlib.import_module(name)
    if any(m == "airflow" or m.startswith("airflow.") for m in sys.modules):
        print("airflow imported by", name)
        break
else:
    print("clean", len(pure))
"""


def test_the_pure_modules_import_nothing_from_airflow() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE, *AIRFLOW_FACE], capture_output=True, text=True, check=True)
    verdict = out.stdout.strip()
    assert verdict.startswith("clean"), verdict
    assert int(verdict.split()[1]) > 30  # the walk found the package's modules (identity, diff, config, ...)
