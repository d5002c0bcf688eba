"""How Data Out's cost grows with the audience: the scale benchmark at several sizes, a table and a plot.

    python -m bench.growth --members 1000000 3000000 10000000     # what ``make bench-growth`` runs

Runs ``bench.scale`` at each size, one after the other (each in its own database, its phases each in
their own process), prints each size's table and ``bench:`` line as ``make bench`` does, then a growth
table (seconds of the first sync, the churn sync with the full comparison, the sync with no change, and
the quiet day's syncs with the change column) and writes the plot of those against N (log-log) to
``--plot`` (default ``docs/img/growth.png``).
"""

from __future__ import annotations

import argparse
import os
from itertools import pairwise
from pathlib import Path
from typing import Any

from bench.scale import DEFAULT_PG_URL, run_bench, table

SERIES = {
    "first": "first sync",
    "churn": "churn, full comparison",
    "nochange": "no change, full comparison",
    "quiet": "no change, change column",
    "quiet_churn": "churn, change column",
}
ROOT = Path(__file__).resolve().parents[2]


def growth_table(by_size: dict[int, dict[str, dict[str, Any]]]) -> str:
    sizes = sorted(by_size)
    rows = [
        (f"{n:,}", *(f"{by_size[n][p]['seconds']:.2f}" for p in SERIES), f"{by_size[n]['floor']['seconds']:.2f}")
        for n in sizes
    ]
    rows += [
        (
            f"x{n / prev:.3g} members",
            *(f"x{by_size[n][p]['seconds'] / by_size[prev][p]['seconds']:.2f}" for p in SERIES),
            f"x{by_size[n]['floor']['seconds'] / by_size[prev]['floor']['seconds']:.2f}",
        )
        for prev, n in pairwise(sizes)
    ]
    return table(rows, ("members", *(f"{label} s" for label in SERIES.values()), "COPY floor s"))


def plot(by_size: dict[int, dict[str, dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: a file
    import matplotlib.pyplot as plt

    sizes = sorted(by_size)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for phase, label in SERIES.items():
        ax.plot(sizes, [by_size[n][phase]["seconds"] for n in sizes], marker="o", label=label)
    ax.plot(sizes, [by_size[n]["floor"]["seconds"] for n in sizes], linestyle="--", color="grey", label="COPY floor")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("members")
    ax.set_ylabel("seconds (whole sync, two destinations)")
    ax.set_title("Data Out sync time against audience size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, nargs="+", default=[1_000_000, 3_000_000, 10_000_000])
    ap.add_argument("--churn", type=float, default=0.01)
    ap.add_argument("--pg-url", default=os.environ.get("DATA_OUT_BENCH_PG_URL", DEFAULT_PG_URL))
    ap.add_argument("--plot", type=Path, default=ROOT / "docs" / "img" / "growth.png")
    args = ap.parse_args(argv)
    by_size = {}
    for n in args.members:
        by_size[n] = run_bench(argparse.Namespace(members=n, churn=args.churn, pg_url=args.pg_url, keep=False))
        print(flush=True)
    print(growth_table(by_size))
    plot(by_size, args.plot)
    print(f"growth: plot written to {args.plot}")


if __name__ == "__main__":
    main()
