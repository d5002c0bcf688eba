"""Warning filters for what a person runs locally (``make demo``, ``make airflow``): no library noise.

Two deprecation warnings come from Airflow's own dependencies, not from Data Out, and nothing here can
fix them: Airflow's ``.airflowignore`` matcher builds ``pathspec.GitWildMatchPattern`` (deprecated in
pathspec 1.0) and Airflow's execution API imports ``svcs``, which imports ``starlette.testclient`` with
plain ``httpx``. Each filter names the message and the module the warning is attributed to, so any other
warning still shows.

They travel as ``PYTHONWARNINGS`` because the processes that emit them are Airflow's (scheduler,
dag-processor, api-server, task processes), which inherit the environment; and because Airflow adds its
own "show Airflow's deprecation warnings" filters only when ``PYTHONWARNINGS`` is empty, these stay in
force after Airflow is imported.

    PYTHONWARNINGS="$(python include/sandbox/quiet.py)" python include/sandbox/demo.py
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

#: (message prefix, category, module the warning is attributed to); PYTHONWARNINGS matches each
#: message as a literal, case-insensitive prefix and each module exactly
FILTERS: tuple[tuple[str, str, str], ...] = (
    (
        "GitWildMatchPattern ('gitwildmatch') is deprecated",
        "DeprecationWarning",
        "airflow._shared.module_loading.file_discovery",
    ),
    (
        "GitWildMatchPattern ('gitwildmatch') is deprecated",
        "DeprecationWarning",
        "airflow.sdk._shared.module_loading.file_discovery",
    ),
    # StarletteDeprecationWarning subclasses UserWarning; Warning is the builtin that names it here
    ("Using `httpx` with `starlette.testclient` is deprecated", "Warning", "fastapi.testclient"),
    ("Using `httpx` with `starlette.testclient` is deprecated", "Warning", "svcs.starlette"),
)


def pythonwarnings(existing: str | None = None) -> str:
    """The ``PYTHONWARNINGS`` value: ``existing`` entries (a person's own) followed by these filters."""
    ours = [f"ignore:{message}:{category}:{module}" for message, category, module in FILTERS]
    for message, *_ in FILTERS:
        assert "," not in message and ":" not in message, f"cannot be a PYTHONWARNINGS message: {message!r}"
    return ",".join([*(e for e in (existing or "").split(",") if e and e not in ours), *ours])


def apply(environ: MutableMapping[str, str]) -> None:
    """Add the filters to ``environ`` (a child process's environment)."""
    environ["PYTHONWARNINGS"] = pythonwarnings(environ.get("PYTHONWARNINGS"))


if __name__ == "__main__":
    print(pythonwarnings(os.environ.get("PYTHONWARNINGS")))
