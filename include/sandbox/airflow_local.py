"""``make airflow``: the product under a real local Airflow, on the embedded default, in one command.

Starts the vendor stand-ins and an SMTP sink in this process, then Airflow's api-server, scheduler,
dag-processor and triggerer (LocalExecutor) as child processes with this repository's ``dags/`` and
``plugins/``, every connection as an ``AIRFLOW_CONN_*`` variable (the same ones ``make demo`` uses) and
Data Out's pools. Audience DAGs run on their schedules and when triggered; the platform DAGs are not
paused, so a triggered ``data_out_operations`` run starts at once. Alert emails land one ``.eml`` file
per message in ``<demo dir>/mail/``. Ctrl-C (or ``make airflow-stop``) stops every process it started,
by process group and session, LocalExecutor task processes included, within a bounded time.

    python include/sandbox/airflow_local.py [--port 8080] [--demo-dir .demo]
    python include/sandbox/airflow_local.py --stop [--demo-dir .demo]

See docs/running-airflow.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import secrets
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT / "include")]

from data_out.config import load_audiences  # noqa: E402
from data_out.connections import ConnectionInfo, engine_for  # noqa: E402
from sandbox import quiet, sample_warehouse  # noqa: E402
from sandbox.airflow_processes import AirflowProcesses, http_json  # noqa: E402
from sandbox.metrics_demo import SECRET as RECEIVER_SIGNING_KEY  # noqa: E402
from sandbox.smtp_sink import SmtpSink  # noqa: E402
from sandbox.standins import connection_env, serve  # noqa: E402

#: the stand-ins ``make demo`` serves; the shipped audiences' destinations need no others
STANDINS = ["meta", "google", "google_ads", "segment", "webhook"]
POOLS = ROOT / "deploy" / "pools.json"
AIRFLOW_BIN = Path(sys.executable).with_name("airflow")
COMPONENTS = ("scheduler", "dag-processor", "triggerer")
STARTUP_TIMEOUT = 180.0
SHUTDOWN_GRACE = 30.0  # SIGTERM, then SIGKILL what is left; the whole stop stays under a minute
PID_FILE = "airflow.pid"
STATUS_FILE = "airflow-status.json"


def _sqlite_conn(env_name: str, default: Path) -> str:
    """The connection from the environment (the Makefile sets it), else a SQLite file under the demo dir."""
    return os.environ.get(env_name) or json.dumps({"conn_type": "sqlite", "host": str(default)})


def airflow_env(home: Path, port: int, demo_dir: Path, connections: dict[str, str]) -> dict[str, str]:
    """One environment for every Airflow component and task: home, folders, ports, secrets, connections."""
    api = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "PYTHONPATH": f"{ROOT / 'plugins'}:{ROOT / 'include'}",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "8",
            # Locally everything may run: the audiences that should wait (status paused) say so themselves.
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            # Shared by the components of this launch: the scheduler signs task tokens the api-server checks.
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__API__BASE_URL": api,
            "AIRFLOW__API__PORT": str(port),
            # Tasks call the execution API on the api-server: derived from the port, never set by hand.
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
            # No listeners on fixed ports (8793 log server, 8974 health check): the api-server reads
            # task logs from the local files, and two launches (or a test) never collide.
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
            "DATA_OUT_DEMO_DIR": str(demo_dir),
            **connections,
        }
    )
    quiet.apply(env)
    return env


def _prepare_warehouse(warehouse_json: str, state_json: str, people: int) -> str:
    """What ``make demo`` prepares before its runs: the sample warehouse (generated once, then kept) and
    the messaging history (send log) that exposure audiences read, landed from the sample's exports."""
    import datetime as dt

    from data_out.metrics.pipeline import MetricsPipeline, load_routing
    from data_out.state import ensure_schema

    info = json.loads(warehouse_json)
    if info.get("conn_type") != "sqlite":
        return "the warehouse connection from the environment"
    wh = engine_for(ConnectionInfo("data_out_warehouse", "sqlite", host=info["host"]))
    if sample_warehouse.sample_as_of(wh) is None:
        sample_warehouse.generate(wh, people=people)
    as_of = sample_warehouse.sample_as_of(wh)
    assert as_of is not None
    state_info = json.loads(state_json)
    state_engine = engine_for(ConnectionInfo("data_out_state", state_info["conn_type"], **_conn_fields(state_info)))
    ensure_schema(state_engine)
    routing, path = load_routing()
    pipeline = MetricsPipeline(state_engine, routing, _no_connections, path)
    start = as_of - dt.timedelta(days=2)
    pipeline.load_exports(wh, start, as_of)
    pipeline.write_send_log(wh, start, as_of)
    return f"sample warehouse {info['host']} (as of {as_of:%Y-%m-%d %H:%M} UTC)"


def _conn_fields(info: dict) -> dict:
    return {k: info[k] for k in ("host", "port", "login", "password", "schema") if info.get(k) is not None}


def _no_connections(conn_id: str) -> ConnectionInfo:
    raise LookupError(f"preparing the sample needs no connection, yet {conn_id!r} was asked for")


def unpause_pattern(audiences: dict[str, str]) -> str:
    """The DAGs that should run locally, as a regex for ``airflow dags unpause --treat-dag-id-as-regex``:
    the platform DAGs and every active audience (``audiences``: name -> status). A home used before
    (``make demo``, or a launch with other settings) may hold them paused; an audience whose status is
    paused stays paused."""
    active = sorted(re.escape(name) for name, status in audiences.items() if status == "active")
    return f"^(data_out_[a-z_]+|audience__({'|'.join(active)}))$"


def admin_password(home: Path) -> str | None:
    """The simple auth manager's generated password of ``admin`` (written when the api-server starts)."""
    try:
        return json.loads((home / "simple_auth_manager_passwords.json.generated").read_text()).get("admin")
    except (OSError, ValueError):
        return None


def _all_healthy(api: str) -> bool:
    status = http_json(f"{api}/api/v2/monitor/health")
    return all(status[c]["status"] == "healthy" for c in ("metadatabase", "scheduler", "dag_processor", "triggerer"))


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """SIGINT (Ctrl-C) and SIGTERM (``make airflow-stop``) set an event instead of raising mid-call."""
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run(port: int, demo_dir: Path, home: Path, people: int) -> int:
    (demo_dir / "standins").mkdir(parents=True, exist_ok=True)  # the stand-ins keep their state there
    home.mkdir(parents=True, exist_ok=True)
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # the SMTP sink's per-connection chatter
    (demo_dir / PID_FILE).write_text(str(os.getpid()))
    state = _sqlite_conn("AIRFLOW_CONN_DATA_OUT_STATE", demo_dir / "state.db")
    warehouse = _sqlite_conn("AIRFLOW_CONN_DATA_OUT_WAREHOUSE", demo_dir / "warehouse.db")
    print(f"using {_prepare_warehouse(warehouse, state, people)}", flush=True)
    procs: AirflowProcesses | None = None
    with (
        _stop_on_signals() as stop,
        serve(STANDINS, demo_dir / "standins") as running,
        SmtpSink(demo_dir / "mail") as sink,
    ):
        connections = {
            **connection_env(running),
            "AIRFLOW_CONN_SMTP_DEFAULT": json.dumps(sink.connection_json()),
            "AIRFLOW_CONN_DATA_OUT_STATE": state,
            "AIRFLOW_CONN_DATA_OUT_WAREHOUSE": warehouse,
            "AIRFLOW_CONN_DATA_OUT_CUSTOMERIO_WEBHOOK": json.dumps(
                {"conn_type": "generic", "password": RECEIVER_SIGNING_KEY}
            ),
        }
        print("stand-ins: " + ", ".join(f"{n} at {r.url}" for n, r in running.items()), flush=True)
        print(f"alert emails: one file per message in {demo_dir / 'mail'}", flush=True)
        api = f"http://127.0.0.1:{port}"
        procs = AirflowProcesses(
            AIRFLOW_BIN, airflow_env(home, port, demo_dir, connections), demo_dir / "airflow-logs", home / "logs"
        )
        code = 0
        try:
            t0 = time.monotonic()
            procs.run("db", "migrate", timeout=600)
            procs.run("pools", "import", str(POOLS))
            statuses = {name: a.config.status for name, a in load_audiences().audiences.items()}
            procs.run("dags", "unpause", unpause_pattern(statuses), "--treat-dag-id-as-regex", "--yes")
            procs.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(port))
            procs.wait_for("the api-server", lambda: http_json(f"{api}/api/v2/monitor/health"), STARTUP_TIMEOUT)
            procs.start("scheduler", "scheduler", "--skip-serve-logs")
            procs.start("dag-processor", "dag-processor")
            procs.start("triggerer", "triggerer", "--skip-serve-logs")
            (demo_dir / STATUS_FILE).write_text(json.dumps({n: c.pid for n, c in procs.components.items()}))
            procs.wait_for("every component healthy", lambda: _all_healthy(api), STARTUP_TIMEOUT)
            print(
                f"\nAirflow is up in {time.monotonic() - t0:.0f}s: {api}\n"
                f"  sign in as admin, password {admin_password(home)!r} "
                f"(from {home / 'simple_auth_manager_passwords.json.generated'})\n"
                f"  component logs: {procs.log_dir}; task logs: {home / 'logs'}\n"
                "  audiences run on their schedules; trigger any DAG from the UI.\n"
                "  Ctrl-C or `make airflow-stop` stops it.",
                flush=True,
            )
            while not stop.wait(1.0):
                procs.check_running()
        except (RuntimeError, TimeoutError) as exc:
            print(f"\nFAILED: {exc}\n{procs.tails()}", file=sys.stderr, flush=True)
            code = 1
        finally:
            print("\nstopping Airflow ...", flush=True)
            report = procs.stop(grace=SHUTDOWN_GRACE)
            left = f"; STILL ALIVE: {report.left}" if report.left else ""
            killed = f" (SIGKILL needed for {report.killed})" if report.killed else ""
            print(f"stopped every Airflow process in {report.seconds:.1f}s{killed}{left}", flush=True)
            (demo_dir / STATUS_FILE).unlink(missing_ok=True)
            (demo_dir / PID_FILE).unlink(missing_ok=True)
            if report.left:
                code = 1
    return code


def stop_running(demo_dir: Path, timeout: float = 90.0) -> int:
    """``make airflow-stop``: SIGTERM the launcher named in the pid file and wait until it has exited."""
    try:
        pid = int((demo_dir / PID_FILE).read_text())
    except (OSError, ValueError):
        print(f"no running `make airflow` (no {demo_dir / PID_FILE})")
        return 0
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        (demo_dir / PID_FILE).unlink(missing_ok=True)
        print(f"`make airflow` (pid {pid}) was not running")
        return 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print(f"stopped `make airflow` (pid {pid})")
            return 0
        time.sleep(0.2)
    print(f"`make airflow` (pid {pid}) did not stop within {timeout:.0f}s", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=int(os.environ.get("AIRFLOW_PORT", "8080")))
    ap.add_argument("--demo-dir", type=Path, default=Path(os.environ.get("DATA_OUT_DEMO_DIR", ROOT / ".demo")))
    ap.add_argument("--home", type=Path, default=Path(os.environ.get("AIRFLOW_HOME", ROOT / ".airflow")))
    ap.add_argument("--people", type=int, default=50_000, help="size of the sample warehouse, if generated")
    ap.add_argument("--stop", action="store_true", help="stop the `make airflow` running from --demo-dir")
    args = ap.parse_args(argv)
    if args.stop:
        return stop_running(args.demo_dir.resolve())
    return run(args.port, args.demo_dir.resolve(), args.home.resolve(), args.people)


if __name__ == "__main__":
    sys.exit(main())
