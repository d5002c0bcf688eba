"""``make demo``: run every audience DAG with the real Airflow runtime and print what each sync did.

Uses the embedded default: SQLite state and warehouse files under ``.demo/`` (see the Makefile for the
connections). The sample warehouse is generated once and kept, and every run evaluates the audiences
at the sample's ``as_of``, so a second ``make demo`` shows the true incremental diff: zero when nothing
changed. The Meta, Google (Data Manager and Google Ads APIs), Segment and webhook destinations are
local stand-ins served by this process (their state is kept in ``.demo/standins/``). ``make demo-churn``
adds two hours of carts and orders to the sample to see real adds and removes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: Airflow loads only once the demo's environment is set
    from airflow.dag_processing.dagbag import DagBag
    from sqlalchemy import Engine

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT / "include")]

from sqlalchemy import func, select  # noqa: E402

from data_out import state  # noqa: E402
from data_out.config import load_audiences  # noqa: E402
from data_out.connections import engine_for  # noqa: E402
from data_out.hooks.state import connection_info  # noqa: E402
from data_out.report import recon_report, run_report, sync_rows  # noqa: E402
from data_out.state import ensure_schema  # noqa: E402
from sandbox import metrics_demo, sample_warehouse  # noqa: E402
from sandbox.smtp_sink import SmtpSink, bodies  # noqa: E402
from sandbox.standins import connection_env, serve  # noqa: E402

DEMO_STANDINS = ["meta", "google", "google_ads", "segment", "webhook"]
PLANTED_AUDIENCE = "cio_cart_abandon_6h_v1"
PLANTED_LOSS = 200


def _quiet() -> None:
    """Task logs go to Airflow's log files; the terminal gets the summary."""
    for name in ("airflow", "airflow.task", "sqlalchemy", "data_out", ""):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--people", type=int, default=50_000)
    ap.add_argument("--churn", action="store_true", help="add two hours of carts and orders before running")
    args = ap.parse_args(argv)

    warehouse = engine_for(connection_info("data_out_warehouse"))
    as_of = sample_warehouse.sample_as_of(warehouse)
    if as_of is None:
        t = time.monotonic()
        counts = sample_warehouse.generate(warehouse, people=args.people)
        as_of = sample_warehouse.sample_as_of(warehouse)
        print(
            f"generated the sample warehouse in {time.monotonic() - t:.1f}s: "
            + ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items()))
        )
    if args.churn:
        as_of = sample_warehouse.churn(warehouse, as_of)
        print(f"added activity up to {as_of:%Y-%m-%d %H:%M} UTC")
    print(f"evaluating audiences as of {as_of:%Y-%m-%d %H:%M} UTC")

    state_dir = Path(os.environ.get("DATA_OUT_DEMO_DIR", ROOT / ".demo")) / "standins"
    state_dir.mkdir(parents=True, exist_ok=True)
    with serve(DEMO_STANDINS, state_dir) as running:
        os.environ.update(connection_env(running))  # the audiences' Meta and Google connections
        print("stand-ins: " + ", ".join(f"{name} at {r.url}" for name, r in running.items()))
        return _run_dags(as_of, running)


def _run_dags(as_of: dt.datetime, running: dict) -> int:
    from airflow.dag_processing.dagbag import DagBag

    _quiet()
    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    for path, err in bag.import_errors.items():
        print(f"IMPORT ERROR in {path}:\n{err}")
    dags = {dag_id: dag for dag_id, dag in bag.dags.items() if dag_id.startswith("audience__")}
    state_engine = engine_for(connection_info("data_out_state"))
    ensure_schema(state_engine)
    metrics_demo.run(bag, state_engine, engine_for(connection_info("data_out_warehouse")), as_of)
    print()
    failed = []
    started = state.utcnow()
    for dag_id, dag in sorted(dags.items()):
        t = time.monotonic()
        dr = dag.test(run_conf={"as_of": as_of.isoformat()})
        outcome = getattr(dr, "state", None)
        print(f"  {dag_id:<40} {outcome!s:<8} {time.monotonic() - t:5.1f}s")
        if str(outcome) != "success":
            failed.append(dag_id)

    with state_engine.connect() as conn:
        run_ids = [r for (r,) in conn.execute(select(state.run.c.id).where(state.run.c.started_at >= started))]
    print()
    print(run_report(sync_rows(state_engine, run_ids)))
    if not failed:
        _reconcile_with_planted_drift(bag, as_of, running, state_engine)
    if bag.import_errors or failed:
        print(f"\nFAILED: {', '.join(failed) or 'import errors'}", file=sys.stderr)
        return 1
    _where_to_look()
    return 0


def _where_to_look() -> None:
    """The pages that show what just ran (served by the plugin once Airflow's api-server runs)."""
    print(
        "\nSee it in Airflow: start the api-server with this project's environment (`make airflow-ui`, or "
        "`airflow standalone`), sign in, then open\n"
        '  http://localhost:8080/data-out-ui/             every audience (also "Data Out" in the navigation)\n'
        '  http://localhost:8080/dags/audience__<name>    the "Health" tab of each audience DAG\n'
        "  http://localhost:8080/data-out-ui/lookup       where a person is, and why (docs/ui.md)"
    )


def _reconcile_with_planted_drift(bag: DagBag, as_of: dt.datetime, running: dict, state_engine: Engine) -> None:
    """Lose members at the Meta stand-in behind Data Out's back, then run the reconciliation DAG."""
    cart = load_audiences().audiences[PLANTED_AUDIENCE].config.destination("meta")
    members = running["meta"].standin.audiences[cart.audience_id]
    with running["meta"].standin.lock:
        for row in sorted(members)[:PLANTED_LOSS]:
            members.discard(row)
    print(
        f"\nplanted drift: removed {PLANTED_LOSS} members of {PLANTED_AUDIENCE} from the Meta stand-in "
        "behind Data Out's back; running the reconciliation DAG"
    )
    with SmtpSink() as sink:
        os.environ["AIRFLOW_CONN_SMTP_DEFAULT"] = json.dumps(sink.connection_json())
        dr = bag.get_dag("data_out_reconciliation").test(run_conf={"as_of": as_of.isoformat()})
    print(f"  data_out_reconciliation                  {getattr(dr, 'state', None)!s}\n")
    with state_engine.connect() as conn:
        recon_id = conn.scalar(select(func.max(state.recon_run.c.id)))
    print(recon_report(state_engine, recon_id))
    for msg in sink.messages:
        text, _ = bodies(msg)
        print(f"\n--- email captured by the local SMTP sink ---\nTo: {msg['To']}\nSubject: {msg['Subject']}\n\n{text}")


if __name__ == "__main__":
    sys.exit(main())
