"""One audience run in its own process, so a test can SIGKILL it (``DATA_OUT_KILL_AT``) and run it again.

python crash_child.py <state.db> <audiences dir> <meta url> <holder>
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT / "include")]

from data_out.config import load_audiences  # noqa: E402
from data_out.connections import ConnectionInfo, engine_for  # noqa: E402
from data_out.runner import AudienceRunner  # noqa: E402
from data_out.state import ensure_schema  # noqa: E402


def main(db: str, audiences: str, meta_url: str, holder: str) -> int:
    def resolve(conn_id: str) -> ConnectionInfo:
        if conn_id == "data_out_meta":
            return ConnectionInfo(
                conn_id,
                "data_out_meta",
                host=meta_url,
                password="meta-test-token",
                extra={"backoff_initial": 0.01, "max_attempts": 3},
            )
        return ConnectionInfo(conn_id, "sqlite", host=db)

    engine = engine_for(resolve("db"))
    ensure_schema(engine)
    runner = AudienceRunner(engine, load_audiences(Path(audiences)), "crash_test_v1", resolve, stage_batch_size=7)
    runner.run(holder, dt.datetime(2026, 11, 1, tzinfo=dt.UTC))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
