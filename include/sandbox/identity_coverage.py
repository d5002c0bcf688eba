"""Identifier quality and match-key coverage of the demo, as tables (the figures in docs/identity.md).

    python include/sandbox/identity_coverage.py --state .demo/state.db --warehouse .demo/warehouse.db

``--state``: per audience and destination of each audience's latest run, the members a destination can
match (it has at least one of the destination's keys) and the share per key. ``--warehouse``: every
customer of the sample warehouse through the normalisation rules, per match key: usable, missing,
invalid, and the reason counts. ``--identity FILE`` normalises with another ``identity.py`` (an older
version, to compare). Counts only: no value is printed.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

from sqlalchemy import create_engine, func, select, text
from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT / "include")]

from data_out import state  # noqa: E402
from data_out.config import load_audiences  # noqa: E402
from data_out.destinations import destination_class  # noqa: E402


def coverage(state_db: str) -> str:
    """Per (audience, destination): members, matchable members and each key's share of the members."""
    engine = create_engine(f"sqlite:///{state_db}")
    m = state.member
    rows = []
    with engine.connect() as conn:
        for loaded in load_audiences(ROOT / "include" / "audiences").audiences.values():
            cfg = loaded.config
            members = conn.scalar(select(func.count()).where(m.c.audience == cfg.name)) or 0
            if not members:
                continue
            for d in cfg.destinations:
                cols = destination_class(d.type).columns_for(d)
                if not cols:
                    continue
                present = [m.c[c].is_not(None) for c in cols.values()]
                counts = conn.execute(
                    select(
                        func.count().filter(text(" OR ".join(f"{c} IS NOT NULL" for c in cols.values()))),
                        *[func.count().filter(p) for p in present],
                    ).where(m.c.audience == cfg.name)
                ).one()
                shares = ", ".join(f"{k} {n / members:.1%}" for k, n in zip(cols, counts[1:], strict=True))
                rows.append([cfg.name, d.label, members, counts[0], f"{counts[0] / members:.1%}", shares])
    headers = ["audience", "destination", "members", "matchable", "coverage", "per key"]
    return tabulate(rows, headers=headers, tablefmt="github", intfmt=",")


def _identity_module(path: str | None) -> ModuleType:
    if path is None:
        from data_out import identity

        return identity
    spec = importlib.util.spec_from_file_location("identity_under_test", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def _field(ident: ModuleType, key: str, value: object) -> tuple[str, str | None]:
    """(outcome, reason) of one value under a module's rules, for the old and the new interface alike."""
    if key == "EMAIL":
        n = ident.normalize_email(value)
    elif key == "PHONE":
        n = ident.normalize_phone(value, "US")
    else:
        n = ident.normalize_meta_field(key, value)
        if n is None or isinstance(n, str):  # the older interface returned the value or None
            return ("usable" if n else ("missing" if not value else "invalid")), None
    outcome = "usable" if n.value else (n.issue or "invalid")
    return outcome, getattr(n, "reason", None)


def quality(warehouse_db: str, identity_path: str | None) -> str:
    """Every customer of the sample warehouse through the rules: per key usable/missing/invalid and reasons."""
    ident = _identity_module(identity_path)
    engine = create_engine(f"sqlite:///{warehouse_db}")
    keys = {"EMAIL": "email", "PHONE": "phone", "FN": "first_name", "COUNTRY": "country"}
    outcomes: dict[str, Counter[str]] = {k: Counter() for k in keys}
    reasons: Counter[str] = Counter()
    with engine.connect() as conn:
        for row in conn.execute(text(f"SELECT {', '.join(keys.values())} FROM customers")):
            for key, value in zip(keys, row, strict=True):
                outcome, reason = _field(ident, key, value)
                outcomes[key][outcome] += 1
                if reason:
                    reasons[reason] += 1
    table = [[k, c["usable"], c["missing"], c["invalid"]] for k, c in outcomes.items()]
    out = tabulate(table, headers=["key", "usable", "missing", "invalid"], tablefmt="github", intfmt=",")
    if reasons:
        rows = [[code, n] for code, n in reasons.most_common()]
        out += "\n\n" + tabulate(rows, headers=["reason", "customers"], tablefmt="github", intfmt=",")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--state", help="the demo's state database (SQLite file)")
    ap.add_argument("--warehouse", help="the demo's sample warehouse (SQLite file)")
    ap.add_argument("--identity", help="normalise with this identity.py instead of the installed one")
    args = ap.parse_args(argv)
    if args.state:
        print(coverage(args.state))
    if args.warehouse:
        print(("\n" if args.state else "") + quality(args.warehouse, args.identity))
    return 0


if __name__ == "__main__":
    sys.exit(main())
