"""What ``make demo`` and ``make airflow`` run prints no library deprecation warnings."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from sandbox import quiet

ROOT = Path(__file__).resolve().parents[2]

#: the demo's import path (Airflow, the DAG files, the execution API of dag.test()) plus Airflow's
#: .airflowignore matcher, which a DAG folder with an .airflowignore reaches
PROBE = textwrap.dedent(
    """
    from pathlib import Path
    from airflow.dag_processing.dagbag import DagBag
    bag = DagBag(dag_folder=r"{dags}")
    assert bag.dags and not bag.import_errors, bag.import_errors
    import airflow.api_fastapi.execution_api.app  # what dag.test() serves tasks from
    from airflow._shared.module_loading.file_discovery import _GlobIgnoreRule
    _GlobIgnoreRule.compile("*.tmp", Path("."), Path(".airflowignore"))
    import warnings
    warnings.warn("an unrelated deprecation", DeprecationWarning, stacklevel=1)
    """
)


def run_probe(pythonwarnings: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env.update(
        PYTHONPATH=f"{ROOT / 'plugins'}:{ROOT / 'include'}",
        AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(ROOT / "plugins"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
    )
    if pythonwarnings is not None:
        env["PYTHONWARNINGS"] = pythonwarnings
    # -W default::DeprecationWarning:__main__ is Python's own default; the probe's own warning comes from __main__
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(dags=ROOT / "dags")],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    return done.stdout + done.stderr


def test_the_filters_silence_exactly_the_library_warnings() -> None:
    noisy = run_probe(None)
    assert "GitWildMatchPattern" in noisy and "starlette.testclient" in noisy  # they exist without the filters
    quiet_out = run_probe(quiet.pythonwarnings())
    assert "GitWildMatchPattern" not in quiet_out
    assert "starlette.testclient" not in quiet_out
    assert "an unrelated deprecation" in quiet_out  # other warnings still show


def test_a_persons_own_filters_are_kept() -> None:
    value = quiet.pythonwarnings("error::ResourceWarning")
    assert value.startswith("error::ResourceWarning,")
    assert quiet.pythonwarnings(value) == value  # applying twice adds nothing
