"""airflow-init refuses the env template's change-me placeholders: deploy/check-placeholders.sh, run for real
with the environment Compose would give airflow-init."""

from __future__ import annotations

import os
import secrets
import subprocess
from typing import Any

import pytest
import yaml

from tests.deploy.test_compose import COMPOSE_FILE, ENV_EXAMPLE, read_env_file, resolve

ROOT = COMPOSE_FILE.parent
SCRIPT = ROOT / "deploy" / "check-placeholders.sh"
#: reaches only the postgres service, never an Airflow container (see the env template)
NOT_SEEN_BY_INIT = {"POSTGRES_SUPERUSER_PASSWORD"}


def init_environment(env_file: dict[str, str]) -> dict[str, str]:
    compose = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    service: dict[str, Any] = resolve(compose, env_file)["services"]["airflow-init"]
    return {key: str(value) for key, value in service["environment"].items()}


def run_check(environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], **environment}
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30, check=False)


@pytest.fixture(scope="module")
def template() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)[0]


def test_the_env_template_as_shipped_is_refused_naming_variables_not_values(template: dict[str, str]) -> None:
    environment = init_environment(template)
    done = run_check(environment)
    assert done.returncode == 1
    named = {line.strip() for line in done.stderr.splitlines() if line.startswith("  ")}
    with_placeholder = {key for key, value in environment.items() if "change-me" in value.lower()}
    assert named == with_placeholder
    assert {"AIRFLOW__CORE__FERNET_KEY", "AIRFLOW_ADMIN_PASSWORD", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"} <= named
    assert {"AIRFLOW_CONN_DATA_OUT_META", "AIRFLOW_CONN_DATA_OUT_CUSTOMERIO_WEBHOOK"} <= named
    for value in environment.values():
        if "change-me" in value:
            assert value not in done.stdout + done.stderr, "a value was printed"


def test_every_placeholder_in_the_template_reaches_the_check(template: dict[str, str]) -> None:
    environment = init_environment(template)
    seen = "\n".join(environment.values())
    for key, value in template.items():
        if "change-me" in value and key not in NOT_SEEN_BY_INIT:
            # connections are JSON: the placeholder inside them is what must reach airflow-init
            marker = value if not value.startswith("{") else next(p for p in value.split('"') if "change-me" in p)
            assert marker in seen, f"{key}'s placeholder never reaches airflow-init's check"


def test_a_filled_in_env_file_passes(template: dict[str, str]) -> None:
    filled = {key: value.replace("change-me", secrets.token_hex(8)) for key, value in template.items()}
    done = run_check(init_environment(filled))
    assert done.returncode == 0, done.stderr
    assert "no placeholder values" in done.stdout


@pytest.mark.parametrize("value", ["CHANGE-ME", "changeme-later", "x change me", "change_me"])
def test_spellings_of_the_placeholder_are_refused(value: str) -> None:
    assert run_check({"SOME_SECRET": value}).returncode == 1
