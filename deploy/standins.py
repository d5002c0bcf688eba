"""Serve the vendor stand-ins to the other containers of a staging stack (compose profile ``standins``).

``python -m sandbox.standins`` binds 127.0.0.1: right on a laptop, unreachable from another container.
This entry point serves the same stand-ins on every interface of its container,
and prints the ``AIRFLOW_CONN_DATA_OUT_*`` lines that point the product's connections at them by the
compose service name (the lines deploy/airflow.env.example shows, commented, for a staging run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from sandbox.standins import CREDENTIALS, STANDINS, serve

ALL_INTERFACES = "0.0.0.0"
DEFAULT_PORT_BASE = 18081


def connection_exports(ports: Mapping[str, int], host: str) -> dict[str, str]:
    """``AIRFLOW_CONN_DATA_OUT_<NAME>`` values that reach each stand-in at ``http://<host>:<port>``."""
    return {
        f"AIRFLOW_CONN_DATA_OUT_{name.upper()}": json.dumps(
            {"conn_type": f"data_out_{name}", "host": f"http://{host}:{port}", **CREDENTIALS[name]}
        )
        for name, port in ports.items()
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port-base", type=int, default=DEFAULT_PORT_BASE)
    parser.add_argument("--state-dir", type=Path, default=None, help="keeps each stand-in's members across restarts")
    parser.add_argument("--advertise-host", default="standins", help="the name other containers reach this one by")
    parser.add_argument("names", nargs="*", default=list(STANDINS), help=f"any of {', '.join(STANDINS)}")
    args = parser.parse_args(argv)
    if unknown := sorted(set(args.names) - set(STANDINS)):
        parser.error(f"unknown stand-in(s) {', '.join(unknown)}; choose from {', '.join(STANDINS)}")
    if args.state_dir:
        args.state_dir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    # docker stop sends SIGTERM: leave the block normally so each stand-in saves its state
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with serve(args.names, args.state_dir, args.port_base, host=ALL_INTERFACES) as running:
        ports = {name: r.server.server_address[1] for name, r in running.items()}
        for name, value in connection_exports(ports, args.advertise_host).items():
            print(f"{name}='{value}'", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()


if __name__ == "__main__":
    main()
