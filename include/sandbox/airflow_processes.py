"""Start Airflow components as child processes, wait on them, and shut them down within a bound.

``make airflow`` and the tests that run the actual scheduler must never leave processes behind, and
when something fails the output must say why. So every component runs in its own session
(``start_new_session``): Airflow's task supervisors move task processes into process groups of their
own, but they stay in the session, so "everything this component started" is "every process whose
session id is the component's pid". Output goes to one log file per component, and ``tails()`` shows
the end of each (and of the newest task logs) on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

T = TypeVar("T")

#: environment prefixes a test Airflow must not inherit from the shell or the Makefile
INHERITED_PREFIXES = ("AIRFLOW", "_AIRFLOW", "DATA_OUT_")


def free_port() -> int:
    """A loopback port nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_environ(overrides: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any Airflow or Data Out settings, plus ``overrides``.

    ``make test`` exports ``AIRFLOW_HOME``, ``AIRFLOW_CONN_DATA_OUT_STATE`` and friends for the
    project-local Airflow; a test cluster must see only what the test chose.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(INHERITED_PREFIXES)}
    env.update(overrides)
    return env


def session_pids(sid: int) -> set[int]:
    """Live processes in session ``sid`` (zombies excluded: they are dead, waiting to be reaped)."""
    pids = set()
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getsid(proc.pid) == sid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                pids.add(proc.pid)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return pids


def wait_for(
    what: str,
    probe: Callable[[], T],
    timeout: float,
    interval: float = 0.5,
    check: Callable[[], None] | None = None,
) -> T:
    """Poll ``probe`` until it returns something truthy, and return that; fail with ``what`` at the deadline.

    A probe that raises ``OSError`` (connection refused, HTTP errors) or ``ValueError`` (a body that is
    not JSON yet) means "not yet"; any other exception ends the wait at once, as does ``check``, which
    runs before every probe and should raise when waiting longer is pointless (a process died).
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        if check:
            check()
        try:
            result = probe()
            if result:
                return result
        except (OSError, ValueError) as exc:  # cannot answer yet (connection refused, 503, half a body)
            last_error = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"gave up after {timeout:.0f}s waiting for {what}; last probe error: {last_error!r}")
        time.sleep(interval)


def http_json(url: str, timeout: float = 5.0) -> Any:
    """GET ``url`` and decode the JSON body; raises on any non-2xx answer."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback test URL
        return json.loads(resp.read())


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return "(no file)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Component:
    """One Airflow command running in its own session, its output in ``log``."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def pids(self) -> set[int]:
        """Every live process this component started, however deep (its session)."""
        self.popen.poll()  # reap the leader if it exited, so it does not linger as a zombie
        return session_pids(self.pid)


@dataclass
class ShutdownReport:
    seconds: float
    killed: dict[str, set[int]] = field(default_factory=dict)  # component -> pids that needed SIGKILL
    left: dict[str, set[int]] = field(default_factory=dict)  # component -> pids alive even after SIGKILL


class AirflowProcesses:
    """The Airflow components of one test, started from one virtualenv with one environment."""

    def __init__(self, airflow_bin: Path, env: Mapping[str, str], log_dir: Path, task_log_dir: Path) -> None:
        self.airflow_bin = airflow_bin
        self.env = dict(env)
        self.log_dir = log_dir
        self.task_log_dir = task_log_dir
        self.components: dict[str, Component] = {}
        log_dir.mkdir(parents=True, exist_ok=True)

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """A one-shot ``airflow`` command (``db migrate``); its output is kept for the failure message."""
        done = subprocess.run(
            [str(self.airflow_bin), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        (self.log_dir / f"{'-'.join(args[:2])}.log").write_text(done.stdout + done.stderr, encoding="utf-8")
        if done.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
        return done

    def start(self, name: str, *args: str, env: Mapping[str, str] | None = None) -> Component:
        """Start ``airflow <args>`` in a new session, stdout and stderr to ``<log_dir>/<name>.log``;
        ``env`` adds to (or overrides) the shared environment for this component only."""
        log = self.log_dir / f"{name}.log"
        with log.open("wb") as out:  # the child keeps its own descriptor
            popen = subprocess.Popen(
                [str(self.airflow_bin), *args],
                env={**self.env, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        component = Component(name, popen, log)
        self.components[name] = component
        return component

    def check_running(self) -> None:
        """Raise as soon as any component has exited: nothing will come of waiting."""
        dead = {n: c.popen.returncode for n, c in self.components.items() if not c.running()}
        if dead:
            raise RuntimeError(f"Airflow component(s) exited early (exit codes {dead}); see their logs")

    def wait_for(self, what: str, probe: Callable[[], T], timeout: float, interval: float = 0.5) -> T:
        """``wait_for`` that also stops as soon as a component dies."""
        return wait_for(what, probe, timeout, interval, check=self.check_running)

    def stop(self, grace: float = 30.0, kill_wait: float = 10.0) -> ShutdownReport:
        """SIGTERM every component's process group, wait up to ``grace`` for each whole session to end,
        then SIGKILL whatever is left (task processes in groups of their own included)."""
        started = time.monotonic()
        for c in self.components.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(c.pid, signal.SIGTERM)
        report = ShutdownReport(seconds=0.0)
        with contextlib.suppress(TimeoutError):
            wait_for("sessions to end", lambda: not any(c.pids() for c in self.components.values()), grace, 0.2)
        for c in self.components.values():
            survivors = c.pids()
            if survivors:
                report.killed[c.name] = survivors
                for pid in survivors:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        if report.killed:
            with contextlib.suppress(TimeoutError):
                wait_for(
                    "killed sessions to end",
                    lambda: not any(c.pids() for c in self.components.values()),
                    kill_wait,
                    0.2,
                )
        for c in self.components.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                c.popen.wait(timeout=1)
            left = c.pids()
            if left:
                report.left[c.name] = left
        report.seconds = time.monotonic() - started
        return report

    def tails(self, lines: int = 60, task_logs: int = 4) -> str:
        """The end of each component's log and of the newest task logs, for a failure message."""
        parts = [f"===== {c.name} ({c.log}) =====\n{_tail(c.log, lines)}" for c in self.components.values()]
        newest = sorted(self.task_log_dir.glob("dag_id=*/**/*.log"), key=lambda p: p.stat().st_mtime)[-task_logs:]
        parts += [f"===== task log {p.relative_to(self.task_log_dir)} =====\n{_tail(p, lines)}" for p in newest]
        return "\n".join(parts)

    @contextlib.contextmanager
    def tails_on_failure(self) -> Iterator[None]:
        """Print the log tails to stderr when the body raises, so CI output explains the failure."""
        try:
            yield
        except BaseException:
            print(f"\n{self.tails()}", file=sys.stderr, flush=True)
            raise
