"""The docker-compose deployment, read with PyYAML and checked against the image, the env template and the code.

No Docker engine is needed: these tests catch a compose file that drifted from deploy/Dockerfile, from the
Airflow pin, from the env template or from the connections the product uses, before anyone runs it.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator, Mapping
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from data_out.hooks.state import DataOutStateHook
from data_out.provider import get_provider_info
from tests.deploy import standins_entry

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / "deploy" / "Dockerfile.dockerignore"
ENV_EXAMPLE = ROOT / "deploy" / "airflow.env.example"

AIRFLOW_SERVICES = {
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
}
INFRASTRUCTURE = {"postgres", "redis"}
ONE_SHOT = {"airflow-init"}
LONG_RUNNING_AIRFLOW = AIRFLOW_SERVICES - ONE_SHOT
#: exact release tags: Postgres major.minor is one release, Redis needs major.minor.patch
EXACT_TAG = {"postgres": r"\d+\.\d+", "redis": r"\d+\.\d+\.\d+"}

# Compose interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, ${VAR:+alt},
# and $VAR; "$$" is a literal dollar (a shell variable inside the container), never a reference.
_REF = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def strings(node: Any) -> Iterator[str]:
    """Every string value of the parsed file: what Compose interpolates (comments are not)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)


def referenced_variables(compose: Any) -> set[str]:
    return {m["braced"] or m["bare"] for text in strings(compose) for m in _REF.finditer(text.replace("$$", ""))}


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's substitution rules, enough to resolve the file with the env template's values."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m["braced"] or m["bare"], m["op"], m["arg"] or ""
        current = env.get(name)
        if op == ":-":
            return current or arg
        if op == "-":
            return arg if current is None else current
        if op in {":?", "?"}:
            if current is None or (op == ":?" and current == ""):
                raise KeyError(f"{name} is required: {arg}")
            return current
        if op == ":+":
            return arg if current else ""
        if op == "+":
            return "" if current is None else arg
        return current or ""

    return "$".join(_REF.sub(one, part) for part in value.split("$$"))


def resolve(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [resolve(item, env) for item in node]
    if isinstance(node, dict):
        return {key: resolve(value, env) for key, value in node.items()}
    return node


def read_env_file(path: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Values of a Compose env file, and the comment block directly above each assignment."""
    values: dict[str, str] = {}
    comments: dict[str, list[str]] = {}
    block: list[str] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line:
            block = []
        elif line.startswith("#"):
            block.append(line.lstrip("#").strip())
        else:
            key, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), f"not an assignment: {raw!r}"
            assert key not in values, f"{key} is assigned twice in {path.name}"
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            values[key] = value
            comments[key] = [c for c in block if c]
            block = []
    return values, comments


def commented_alternatives(path: Path) -> dict[str, str]:
    """``# AIRFLOW_CONN_X='...'`` lines: the template's commented stand-in alternatives."""
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if m := re.fullmatch(r"#\s*(AIRFLOW_CONN_[A-Z0-9_]+)='(.*)'", line.strip()):
            found[m[1]] = m[2]
    return found


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text(encoding="utf-8"))
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, args = line.partition(" ")
            out.append((instruction.upper(), args.strip()))
    return out


def dockerignore_allows(path: str) -> bool:
    """Whether Dockerfile.dockerignore lets ``path`` into the build context (last matching pattern wins)."""
    allowed = True
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!")
        if pattern == "**":
            hit = True
        elif pattern.startswith("**/"):
            hit = any(fnmatch(part, pattern[3:]) for part in path.split("/"))
        else:
            hit = path == pattern or path.startswith(pattern + "/") or fnmatch(path, pattern)
        if hit:
            allowed = negate
    return allowed


def requirement_pin(name: str) -> str:
    for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines():
        if m := re.fullmatch(rf"{re.escape(name)}==(\S+)", line.strip()):
            return m[1]
    raise AssertionError(f"{name} is not pinned in requirements.txt")


def healthcheck_text(service: Mapping[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return " ".join(test) if isinstance(test, list) else test


def depends_on(service: Mapping[str, Any]) -> dict[str, str]:
    return {name: spec["condition"] for name, spec in (service.get("depends_on") or {}).items()}


def init_script(compose: Mapping[str, Any]) -> str:
    """The bash script airflow-init runs (its command is ``-c <script>``)."""
    return "\n".join(compose["services"]["airflow-init"]["command"][1:])


def _iter_lines(script: str) -> Iterator[str]:
    for line in script.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            yield line


# --------------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw_text() -> str:
    return COMPOSE_FILE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def compose(raw_text: str) -> dict[str, Any]:
    return yaml.safe_load(raw_text)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def example_env() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)[0]


@pytest.fixture(scope="module")
def resolved(compose: dict[str, Any], example_env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The services as Compose would run them with deploy/airflow.env.example as the env file."""
    return resolve(compose, example_env)["services"]


def connection(env: Mapping[str, str], conn_id: str) -> dict[str, Any]:
    return json.loads(env[f"AIRFLOW_CONN_{conn_id.upper()}"])


# --------------------------------------------------------------------------------------------------
# services and image
# --------------------------------------------------------------------------------------------------


def test_the_expected_services_exist(services: dict[str, Any]) -> None:
    assert AIRFLOW_SERVICES | INFRASTRUCTURE | {"standins"} <= set(services)


def test_every_airflow_service_runs_the_image_built_from_deploy_dockerfile(services: dict[str, Any]) -> None:
    images = set()
    for name in AIRFLOW_SERVICES | {"standins"}:
        service = services[name]
        assert service.get("build") == {"context": ".", "dockerfile": "deploy/Dockerfile"}, name
        images.add(service["image"])
    assert len(images) == 1, f"the Airflow services run different images: {images}"
    assert (ROOT / services["airflow-worker"]["build"]["dockerfile"]).is_file()
    (image,) = images
    assert not image.endswith(":latest") and ":" in image


def test_the_dockerfile_builds_on_the_pinned_airflow_and_python() -> None:
    requires_python = re.search(
        r'requires-python\s*=\s*">=(\d+\.\d+)', (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    )
    assert requires_python, "pyproject.toml states no minimum Python"
    froms = [args for instruction, args in dockerfile_instructions() if instruction == "FROM"]
    assert froms == [f"apache/airflow:{requirement_pin('apache-airflow')}-python{requires_python[1]}"]
    assert requires_python[1] == "3.11"


def test_the_image_installs_the_pinned_requirements_and_the_package() -> None:
    instructions = dockerfile_instructions()
    runs = [args for instruction, args in instructions if instruction == "RUN"]
    assert any(re.search(r"pip install .*-r \S*requirements\.txt", run) for run in runs)
    assert any(re.search(r"pip install .*--no-deps /opt/data-out\b", run) for run in runs)
    env = " ".join(args for instruction, args in instructions if instruction == "ENV")
    assert re.search(r"PYTHONPATH=/opt/airflow/plugins:/opt/airflow/include\b", env)
    for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][0-9A-Za-z.\-+]*", line), f"not an exact pin: {line}"


def test_everything_the_dockerfile_copies_exists_and_is_in_the_build_context() -> None:
    sources = []
    for instruction, args in dockerfile_instructions():
        if instruction == "COPY":
            parts = [p for p in args.split() if not p.startswith("--")]
            sources += parts[:-1]
    assert "deploy/pools.json" in sources and "requirements.txt" in sources
    for source in sources:
        assert (ROOT / source).exists(), f"deploy/Dockerfile copies {source}, which does not exist"
        assert dockerignore_allows(source), f"Dockerfile.dockerignore keeps {source} out of the build context"


def test_infrastructure_images_are_pinned_to_exact_versions(services: dict[str, Any]) -> None:
    for name, pattern in EXACT_TAG.items():
        image = services[name]["image"]
        repository, _, tag = image.partition(":")
        assert repository == name and re.fullmatch(pattern, tag), f"{name}: {image} is not an exact release"
    for name, service in services.items():
        if "build" not in service:
            assert ":" in service["image"] and not service["image"].endswith(":latest"), name


# --------------------------------------------------------------------------------------------------
# the env template
# --------------------------------------------------------------------------------------------------


def test_every_variable_the_compose_file_reads_is_documented(compose: dict[str, Any]) -> None:
    values, comments = read_env_file(ENV_EXAMPLE)
    referenced = referenced_variables(compose)
    assert referenced, "no ${VAR} found: the reference scan is broken"
    assert referenced - set(values) == set(), "referenced in docker-compose.yaml, missing in the env template"
    undocumented = sorted(name for name in referenced if not comments.get(name))
    assert undocumented == [], f"no comment above these in {ENV_EXAMPLE.name}"
    assert set(values) - referenced == set(), "in the env template but read by nothing"


def test_the_env_template_holds_placeholders_not_secrets(example_env: dict[str, str]) -> None:
    secret_name = re.compile(r"(PASSWORD|SECRET|FERNET_KEY|TOKEN)")
    for key, value in example_env.items():
        if secret_name.search(key):
            assert "change-me" in value, f"{key} looks like a real secret"
        if key.startswith("AIRFLOW_CONN_"):
            conn = json.loads(value)
            assert "change-me" in conn.get("password", "change-me"), f"{key}: password is not a placeholder"
            for extra_key, extra_value in (conn.get("extra") or {}).items():
                if re.search(r"token|secret|key", extra_key):
                    assert "change-me" in str(extra_value), f"{key}: extra {extra_key} is not a placeholder"


def product_connections() -> dict[str, str]:
    """Every connection the product uses: conn_id -> conn_type."""
    expected = {c["connection-type"]: c["connection-type"] for c in get_provider_info()["connection-types"]}
    return expected | {
        DataOutStateHook.default_conn_name: "postgres",
        "data_out_warehouse": "postgres",
        "data_out_customerio_webhook": "generic",
        "smtp_default": "smtp",
    }


#: the connections each Airflow service needs. Tasks (and their failure callbacks) run on the workers; the
#: api-server serves the Customer.io receiver; airflow-init migrates the state database and, as the gate
#: of the stack, sees every connection once to refuse placeholders.
RECEIVER_CONNECTIONS = {"data_out_state", "data_out_customerio_webhook"}
SERVICE_CONNECTIONS = {
    "airflow-init": set(product_connections()),
    "airflow-apiserver": RECEIVER_CONNECTIONS,
    "airflow-worker": set(product_connections()) - {"data_out_customerio_webhook"},
    "airflow-scheduler": set(),
    "airflow-dag-processor": set(),
    "airflow-triggerer": set(),
}


def connections_of(service: Mapping[str, Any]) -> set[str]:
    env = service.get("environment") or {}
    return {key.removeprefix("AIRFLOW_CONN_").lower() for key in env if key.startswith("AIRFLOW_CONN_")}


def test_the_env_template_sets_every_connection_the_product_uses(
    example_env: dict[str, str], resolved: dict[str, dict[str, Any]]
) -> None:
    for conn_id, conn_type in product_connections().items():
        key = f"AIRFLOW_CONN_{conn_id.upper()}"
        assert connection(example_env, conn_id)["conn_type"] == conn_type, conn_id
        receivers = [name for name in AIRFLOW_SERVICES if conn_id in SERVICE_CONNECTIONS[name]]
        assert receivers, f"no service receives {conn_id}"
        for name in receivers:
            assert json.loads(resolved[name]["environment"][key])["conn_type"] == conn_type, (name, key)


def test_each_service_receives_only_the_connections_it_needs(resolved: dict[str, dict[str, Any]]) -> None:
    assert set(SERVICE_CONNECTIONS) == AIRFLOW_SERVICES
    for name in AIRFLOW_SERVICES:
        assert connections_of(resolved[name]) == SERVICE_CONNECTIONS[name], name
    # vendor tokens never reach the internet-facing api-server; the signing key never reaches a task
    assert "data_out_meta" not in connections_of(resolved["airflow-apiserver"])
    assert "data_out_customerio_webhook" not in connections_of(resolved["airflow-worker"])
    for name in ("standins", "postgres", "redis"):
        assert connections_of(resolved[name]) == set(), name


def test_the_receiver_needs_only_what_the_api_server_gets() -> None:
    """The plugin the api-server loads reads exactly the connections the api-server receives."""
    import data_out_plugin

    assert {data_out_plugin.SIGNING_KEY_CONN_ID, data_out_plugin.STATE_CONN_ID} == RECEIVER_CONNECTIONS


def test_the_env_template_shows_the_standin_connections(services: dict[str, Any]) -> None:
    from sandbox.standins import STANDINS

    command = services["standins"]["command"]
    port_base = int(command[command.index("--port-base") + 1])
    host = command[command.index("--advertise-host") + 1]
    assert host == "standins", "other containers reach the stand-ins by their service name"
    ports = {name: port_base + i for i, name in enumerate(STANDINS)}
    expected = standins_entry().connection_exports(ports, host)
    shown = commented_alternatives(ENV_EXAMPLE)
    assert {key: json.loads(shown.get(key, "null")) for key in expected} == {
        key: json.loads(value) for key, value in expected.items()
    }
    health = healthcheck_text(services["standins"])
    assert f"range({port_base}, {port_base + len(STANDINS)})" in health


# --------------------------------------------------------------------------------------------------
# health and start-up order
# --------------------------------------------------------------------------------------------------


def test_every_long_running_service_has_a_healthcheck(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service.get("restart", "no") == "no", f"{name} runs once and must not restart"
            continue
        assert service.get("restart") in {"always", "unless-stopped"}, f"{name} is not restarted"
        check = service.get("healthcheck")
        assert check and not check.get("disable"), f"{name} has no healthcheck"
        assert check["test"][0] in {"CMD", "CMD-SHELL"}, name


def test_the_healthchecks_are_the_kinds_airflow_uses(
    services: dict[str, Any], resolved: dict[str, dict[str, Any]]
) -> None:
    assert "pg_isready" in healthcheck_text(services["postgres"])
    assert "redis-cli" in healthcheck_text(services["redis"]) and "PONG" in healthcheck_text(services["redis"])
    api = healthcheck_text(services["airflow-apiserver"])
    assert "curl --fail http://localhost:8080/api/v2/monitor/health" in api
    assert any(p.endswith(":8080") for p in resolved["airflow-apiserver"]["ports"])
    # published on loopback unless the operator says otherwise: only the proxied receiver faces the internet
    assert resolved["airflow-apiserver"]["ports"] == ["127.0.0.1:8080:8080"]
    assert "http://localhost:8974/health" in healthcheck_text(services["airflow-scheduler"])
    assert resolved["airflow-scheduler"]["environment"]["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "true"
    for name, job in {"airflow-dag-processor": "DagProcessorJob", "airflow-triggerer": "TriggererJob"}.items():
        assert f"airflow jobs check --job-type {job}" in healthcheck_text(services[name])
    worker = healthcheck_text(services["airflow-worker"])
    assert "celery_executor.app inspect ping" in worker and "celery@$${HOSTNAME}" in worker


def test_services_start_in_order(services: dict[str, Any]) -> None:
    healthy_infra = {"postgres": "service_healthy", "redis": "service_healthy"}
    assert depends_on(services["airflow-init"]) == healthy_infra
    for name in LONG_RUNNING_AIRFLOW:
        conditions = depends_on(services[name])
        assert conditions.items() >= {**healthy_infra, "airflow-init": "service_completed_successfully"}.items()
    # tasks on a worker talk to the api-server's Execution API
    assert depends_on(services["airflow-worker"])["airflow-apiserver"] == "service_healthy"
    for name, service in services.items():
        for target in depends_on(service):
            assert target in services, f"{name} depends on unknown {target}"


# --------------------------------------------------------------------------------------------------
# executor, databases, init
# --------------------------------------------------------------------------------------------------


def test_celery_executor_with_the_redis_broker(resolved: dict[str, dict[str, Any]]) -> None:
    shared = {"AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API__SECRET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET"}
    first = resolved["airflow-apiserver"]["environment"]
    for name in AIRFLOW_SERVICES:
        env = resolved[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        broker = make_url(env["AIRFLOW__CELERY__BROKER_URL"])
        assert (broker.drivername, broker.host, broker.port) == ("redis", "redis", 6379), name
        assert broker.password == resolved["redis"]["environment"]["REDIS_PASSWORD"]
        assert make_url(env["AIRFLOW__CELERY__RESULT_BACKEND"]).host == "postgres"
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
        assert all(env[key] == first[key] and env[key] for key in shared), f"{name}: secrets differ"


def test_metadata_and_state_are_two_databases_on_the_postgres_service(
    resolved: dict[str, dict[str, Any]], example_env: dict[str, str]
) -> None:
    postgres = resolved["postgres"]["environment"]
    for name in AIRFLOW_SERVICES:
        env = resolved[name]["environment"]
        metadata = make_url(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
        assert (metadata.host, metadata.database) == ("postgres", postgres["AIRFLOW_DB_NAME"])
        assert (metadata.username, metadata.password) == (postgres["AIRFLOW_DB_USER"], postgres["AIRFLOW_DB_PASSWORD"])
        assert metadata.username != postgres["POSTGRES_USER"], "Airflow must not connect as the postgres superuser"
        assert postgres["POSTGRES_PASSWORD"] not in json.dumps(env), f"{name} received the superuser password"
        if "data_out_state" not in SERVICE_CONNECTIONS[name]:
            continue
        state = json.loads(env["AIRFLOW_CONN_DATA_OUT_STATE"])
        assert state["conn_type"] == "postgres" and state["host"] == "postgres"
        assert (state["schema"], state["login"], state["password"]) == (
            postgres["DATA_OUT_STATE_DB_NAME"],
            postgres["DATA_OUT_STATE_DB_USER"],
            postgres["DATA_OUT_STATE_DB_PASSWORD"],
        ), "AIRFLOW_CONN_DATA_OUT_STATE does not match the database the init script creates"
        assert state["schema"] != metadata.database
        assert state["login"] != metadata.username, "the state role must not be the metadata superuser"

    mounts = {m.split(":")[1]: m.split(":")[0] for m in resolved["postgres"]["volumes"]}
    initdb = ROOT / mounts["/docker-entrypoint-initdb.d"]
    scripts = sorted(initdb.glob("*.sh"))
    assert scripts and "CREATE DATABASE" in scripts[0].read_text(encoding="utf-8")
    for variable in ("AIRFLOW_DB_NAME", "AIRFLOW_DB_USER", "AIRFLOW_DB_PASSWORD", "DATA_OUT_STATE_DB_NAME"):
        assert variable in scripts[0].read_text(encoding="utf-8"), variable
        assert variable in postgres, f"the postgres service does not pass {variable} to its init script"


def test_the_init_service_runs_both_migrations_imports_pools_and_creates_the_admin(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    init = services["airflow-init"]
    assert init["entrypoint"] == "/bin/bash" and init["command"][0] == "-c"
    lines = list(_iter_lines(init_script(compose)))
    assert lines[0] == "set -euo pipefail", "a failed step must fail airflow-init (and so block the stack)"
    assert lines[1] == "bash /opt/airflow/deploy/check-placeholders.sh", "placeholders are refused before anything"
    order = [
        lines.index("airflow db migrate"),
        lines.index("python -m data_out.state.migrate"),
        lines.index("airflow pools import /opt/airflow/deploy/pools.json"),
    ]
    assert order == sorted(order)
    copies = [args for instruction, args in dockerfile_instructions() if instruction == "COPY"]
    assert any("deploy/pools.json" in c and c.endswith("/opt/airflow/deploy/") for c in copies)
    # the admin user only where the auth manager keeps users in the metadata database
    script = init_script(compose)
    start = script.index("*FabAuthManager)")
    fab_branch = script[start : script.index(";;", start)]
    assert "airflow users create --role Admin" in fab_branch
    assert script.count("airflow users create") == 1
    assert {"AIRFLOW_ADMIN_USERNAME", "AIRFLOW_ADMIN_PASSWORD", "AIRFLOW_ADMIN_EMAIL"} <= set(init["environment"])


def test_the_migrate_entry_point_exists() -> None:
    from data_out.state import migrate

    assert callable(migrate.main)


# --------------------------------------------------------------------------------------------------
# code, scaling, stand-ins, secrets hygiene
# --------------------------------------------------------------------------------------------------


def test_dags_plugins_and_include_are_mounted_and_importable(resolved: dict[str, dict[str, Any]]) -> None:
    for name in AIRFLOW_SERVICES:
        mounts = {m.split(":")[1]: m.split(":")[0] for m in resolved[name]["volumes"]}
        for part in ("dags", "plugins", "include"):
            assert mounts.get(f"/opt/airflow/{part}") == f"./{part}", (name, part)
        path = resolved[name]["environment"]["PYTHONPATH"].split(":")
        assert {"/opt/airflow/plugins", "/opt/airflow/include"} <= set(path), name


def test_workers_scale_and_take_their_concurrency_from_the_env(services: dict[str, Any]) -> None:
    worker = services["airflow-worker"]
    assert "container_name" not in worker and "ports" not in worker, "a fixed name or host port blocks --scale"
    concurrency = worker["environment"]["AIRFLOW__CELERY__WORKER_CONCURRENCY"]
    assert re.fullmatch(r"\$\{AIRFLOW_WORKER_CONCURRENCY(:-\d+)?\}", concurrency)
    assert not any("container_name" in s for s in services.values())


def test_the_standins_profile_is_optional_and_persistent(compose: dict[str, Any], services: dict[str, Any]) -> None:
    standins = services["standins"]
    assert standins["profiles"] == ["standins"]
    assert all("profiles" not in services[name] for name in AIRFLOW_SERVICES | INFRASTRUCTURE)
    assert standins["entrypoint"] == ["python", "/opt/airflow/deploy/standins.py"]
    command = standins["command"]
    state_dir = command[command.index("--state-dir") + 1]
    volumes = {m.split(":")[1]: m.split(":")[0] for m in standins["volumes"]}
    assert volumes[state_dir] in compose["volumes"], "stand-in state must survive a restart"
    copies = [args for instruction, args in dockerfile_instructions() if instruction == "COPY"]
    assert any("deploy/standins.py" in c for c in copies)


def test_the_real_env_file_stays_out_of_git_and_the_image() -> None:
    ignored = subprocess.run(["git", "check-ignore", "-q", "deploy/airflow.env"], cwd=ROOT, check=False)
    assert ignored.returncode == 0, ".gitignore does not ignore deploy/airflow.env"
    template = subprocess.run(["git", "check-ignore", "-q", "deploy/airflow.env.example"], cwd=ROOT, check=False)
    assert template.returncode == 1, "the template itself must be committed"
    assert not dockerignore_allows("deploy/airflow.env")
    assert not dockerignore_allows(".venv/bin/python") and not dockerignore_allows(".demo/state.db")
