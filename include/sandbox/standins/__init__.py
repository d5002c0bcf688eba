"""Local stand-ins for the vendor APIs, served on loopback.

    python -m sandbox.standins --state-dir .demo/standins      # from include/, all on ports 18081..18086

Each prints its URL; point the matching connection's ``host`` at it. State survives restarts through
``--state-dir``. The stand-ins enforce each API's contract (see each module's docstring).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from sandbox.standins.base import Running, StandIn
from sandbox.standins.google_ads import GoogleAdsStandIn
from sandbox.standins.google_dm import GoogleDataManagerStandIn
from sandbox.standins.google_oauth import CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN
from sandbox.standins.meta import MetaStandIn
from sandbox.standins.segment import SegmentStandIn
from sandbox.standins.tiktok import TikTokStandIn
from sandbox.standins.webhook import WebhookStandIn

STANDINS: dict[str, type[StandIn]] = {
    "meta": MetaStandIn,
    "google_ads": GoogleAdsStandIn,
    "tiktok": TikTokStandIn,
    "segment": SegmentStandIn,
    "webhook": WebhookStandIn,
    "google": GoogleDataManagerStandIn,
}
#: an OAuth client and refresh token the Google stand-ins honour; access tokens come from their ``/token``
GOOGLE_OAUTH = {"login": CLIENT_ID, "password": CLIENT_SECRET}
GOOGLE_OAUTH_EXTRA = {"refresh_token": REFRESH_TOKEN, "token_uri": "/token"}
#: the credentials each stand-in accepts, as the matching Airflow connection carries them
CREDENTIALS: dict[str, dict[str, object]] = {
    "meta": {"password": "meta-test-token", "extra": {"app_secret": "meta-app-secret"}},
    "google_ads": {
        **GOOGLE_OAUTH,
        "extra": {**GOOGLE_OAUTH_EXTRA, "developer_token": "dev-token", "poll_interval": 0.05},
    },
    "google": {**GOOGLE_OAUTH, "extra": GOOGLE_OAUTH_EXTRA},
    "tiktok": {"password": "tiktok-test-token"},
    "segment": {"password": "segment-write-key"},
    "webhook": {"password": "webhook-secret"},
}


@contextlib.contextmanager
def serve(
    names: list[str], state_dir: Path | None = None, base_port: int = 0, host: str = "127.0.0.1"
) -> Iterator[dict[str, Running]]:
    """Serve the named stand-ins on ``host``; state is loaded from and saved to ``state_dir`` when given."""
    running: dict[str, Running] = {}
    with contextlib.ExitStack() as stack:
        for i, name in enumerate(names):
            standin = STANDINS[name]()
            if isinstance(standin, MetaStandIn):
                standin.require_app_secret = True  # as a production app should have it: proof on every call
            if state_dir:
                standin.load(str(state_dir / f"{name}.pickle"))
                stack.callback(standin.save, str(state_dir / f"{name}.pickle"))
            running[name] = stack.enter_context(Running(standin, base_port + i if base_port else 0, host))
        yield running


def connection_env(running: dict[str, Running]) -> dict[str, str]:
    """``AIRFLOW_CONN_DATA_OUT_<NAME>`` values pointing the product's connections at the stand-ins."""
    import json

    env = {}
    for name, r in running.items():
        conn = {"conn_type": f"data_out_{name}", "host": r.url, **CREDENTIALS[name]}
        env[f"AIRFLOW_CONN_DATA_OUT_{name.upper()}"] = json.dumps(conn)
    return env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port-base", type=int, default=18081)
    ap.add_argument("--state-dir", type=Path, default=None)
    ap.add_argument("names", nargs="*", default=list(STANDINS))
    args = ap.parse_args()
    # A stand-in process of a scale run holds millions of member rows, all long-lived. Python's full
    # collections would walk every one of them every few requests (3-4 of them in 18 requests of a 10M
    # churn run: 3 s instead of 0.9 s), on the cores the benchmark measures, though a real vendor's
    # servers are not ours. Young garbage is still collected; only automatic full collections stop.
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, 2**31 - 1)
    if args.state_dir:
        args.state_dir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with serve(args.names, args.state_dir, args.port_base) as running:
        for name, value in connection_env(running).items():
            print(f"export {name}='{value}'", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()


if __name__ == "__main__":
    main()
