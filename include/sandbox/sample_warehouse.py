"""A realistic, deterministic sample warehouse for the demo and the tests.

People with carts, orders and message sends spread over ``days`` days before ``as_of``, with the mess
real sources have: emails in mixed case and padded with spaces, missing and invalid emails, phones in
local and international formats, some missing. The same seed and ``as_of`` always give the same rows.

    python include/sandbox/sample_warehouse.py --url sqlite:///.demo/warehouse.db --people 50000
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import sys
from collections.abc import Iterator

from sqlalchemy import Column, DateTime, Engine, Float, Integer, MetaData, String, Table, create_engine, insert, select

md = MetaData()
customers = Table(
    "customers",
    md,
    Column("customer_id", String(32), primary_key=True),
    Column("email", String(320)),
    Column("phone", String(64)),
    Column("first_name", String(64)),
    Column("country", String(2)),
    Column("created_at", DateTime, nullable=False),
)
carts = Table(
    "carts",
    md,
    Column("cart_id", String(32), primary_key=True),
    Column("customer_id", String(32), nullable=False, index=True),
    Column("created_at", DateTime, nullable=False, index=True),
    Column("value", Float, nullable=False),
)
orders = Table(
    "orders",
    md,
    Column("order_id", String(32), primary_key=True),
    Column("customer_id", String(32), nullable=False, index=True),
    Column("created_at", DateTime, nullable=False, index=True),
    Column("total", Float, nullable=False),
)
message_sends = Table(
    "message_sends",
    md,
    Column("delivery_id", String(40), primary_key=True),
    Column("customer_id", String(32), nullable=False, index=True),
    Column("campaign_id", Integer, nullable=False),
    Column("channel", String(8), nullable=False),
    Column("sent_at", DateTime, nullable=False, index=True),
)
sample_meta = Table(
    "sample_meta",
    md,
    Column("key", String(32), primary_key=True),
    Column("value", String(64), nullable=False),
)

_DOMAINS = ["gmail.com", "yahoo.com", "outlook.com", "icloud.com", "example.org", "proton.me"]
_NAMES = ["ana", "ben", "chloe", "dev", "emma", "farid", "grace", "hugo", "ines", "jon", "kai", "lena"]
_COUNTRIES = [("US", 0.7), ("GB", 0.15), ("DE", 0.1), ("FR", 0.05)]


def _email(rng: random.Random, i: int) -> str | None:
    roll = rng.random()
    if roll < 0.04:
        return None  # never captured
    if roll < 0.06:
        return rng.choice(["n/a", "unknown", f"{_NAMES[i % 12]}.{i}@", "test@localhost"])  # invalid
    local = f"{rng.choice(_NAMES)}.{i}"
    email = f"{local}@{rng.choice(_DOMAINS)}"
    if roll < 0.20:
        email = email.title()  # mixed case from a signup form
    if roll < 0.25:
        email = f"  {email} "  # padded by a CSV import
    return email


def _phone(rng: random.Random, country: str) -> str | None:
    if rng.random() < 0.45:
        return None
    if country == "US":
        area, line = rng.choice([212, 415, 617, 312, 206]), rng.randrange(2000000, 9999999)
        fmt = rng.choice(["({a}) {p}-{l}", "{a}.{p}.{l}", "+1 {a} {p} {l}", "1{a}{p}{l}"])
        return fmt.format(a=area, p=str(line)[:3], l=str(line)[3:])
    if country == "GB":
        return rng.choice(["07{n}", "+44 7{n}"]).format(n=rng.randrange(100000000, 999999999))
    if country == "DE":
        return f"+49 151 {rng.randrange(10000000, 99999999)}"
    return f"+33 6 {rng.randrange(10000000, 99999999)}"


def _rows(people: int, days: int, as_of: dt.datetime, seed: int) -> Iterator[tuple[str, dict]]:
    rng = random.Random(seed)
    span = days * 86400
    for i in range(people):
        cid = f"c{i:07d}"
        country = rng.choices([c for c, _ in _COUNTRIES], [w for _, w in _COUNTRIES])[0]
        created = as_of - dt.timedelta(seconds=rng.randrange(span, span * 3))
        yield (
            "customers",
            {
                "customer_id": cid,
                "email": _email(rng, i),
                "phone": _phone(rng, country),
                "first_name": rng.choice(_NAMES).title(),
                "country": country,
                "created_at": created,
            },
        )
        # Activity: a few carts, some converting to orders; recent activity weighted higher so the
        # short windows (6 h carts, 7 d purchases) have realistic sizes.
        for j in range(rng.choice([0, 1, 1, 2, 3, 4])):
            ago = rng.random() ** 1.6 * span
            cart_at = as_of - dt.timedelta(seconds=int(ago))
            yield (
                "carts",
                {
                    "cart_id": f"{cid}-k{j}",
                    "customer_id": cid,
                    "created_at": cart_at,
                    "value": round(rng.uniform(15, 240), 2),
                },
            )
            if rng.random() < 0.45:
                order_at = cart_at + dt.timedelta(minutes=rng.randrange(5, 600))
                if order_at <= as_of:
                    yield (
                        "orders",
                        {
                            "order_id": f"{cid}-o{j}",
                            "customer_id": cid,
                            "created_at": order_at,
                            "total": round(rng.uniform(15, 240), 2),
                        },
                    )
        for j in range(rng.choice([0, 2, 4, 6])):
            yield (
                "message_sends",
                {
                    "delivery_id": f"{cid}-d{j}",
                    "customer_id": cid,
                    "campaign_id": rng.choice([101, 102, 103, 201, 202]),
                    "channel": rng.choice(["email", "email", "sms"]),
                    "sent_at": as_of - dt.timedelta(seconds=rng.randrange(0, span)),
                },
            )


def generate(
    engine: Engine, people: int = 50_000, days: int = 120, as_of: dt.datetime | None = None, seed: int = 7
) -> dict[str, int]:
    """Drop and recreate the sample tables; returns row counts per table."""
    as_of = (as_of or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).replace(tzinfo=None, microsecond=0)
    md.drop_all(engine)
    md.create_all(engine)
    counts: dict[str, int] = {}
    buffers: dict[str, list[dict]] = {}
    tables = {t.name: t for t in md.sorted_tables}
    with engine.begin() as conn:
        for name, row in _rows(people, days, as_of, seed):
            buf = buffers.setdefault(name, [])
            buf.append(row)
            if len(buf) >= 10_000:
                conn.execute(insert(tables[name]), buf)
                counts[name] = counts.get(name, 0) + len(buf)
                buf.clear()
        for name, buf in buffers.items():
            if buf:
                conn.execute(insert(tables[name]), buf)
                counts[name] = counts.get(name, 0) + len(buf)
        conn.execute(
            insert(sample_meta),
            [{"key": "as_of", "value": as_of.isoformat() + "+00:00"}, {"key": "people", "value": str(people)}],
        )
    return counts


def churn(engine: Engine, as_of: dt.datetime, hours: int = 2, share: float = 0.01) -> dt.datetime:
    """Add ``hours`` of new carts and orders after ``as_of`` for a ``share`` of people; returns the new as_of."""
    start = as_of.astimezone(dt.UTC).replace(tzinfo=None)
    end = start + dt.timedelta(hours=hours)
    rng = random.Random(int(start.timestamp()))
    with engine.begin() as conn:
        ids = [r for (r,) in conn.execute(select(customers.c.customer_id).order_by(customers.c.customer_id))]
        new_carts, new_orders = [], []
        for cid in rng.sample(ids, int(len(ids) * share)):
            at = start + dt.timedelta(seconds=rng.randrange(1, hours * 3600))
            tag = f"{cid}-{int(at.timestamp())}"
            new_carts.append({"cart_id": f"{tag}-k", "customer_id": cid, "created_at": at, "value": 50.0})
            if rng.random() < 0.5:
                new_orders.append(
                    {
                        "order_id": f"{tag}-o",
                        "customer_id": cid,
                        "total": 50.0,
                        "created_at": min(at + dt.timedelta(minutes=30), end),
                    }
                )
        conn.execute(insert(carts), new_carts)
        if new_orders:
            conn.execute(insert(orders), new_orders)
        conn.execute(sample_meta.update().where(sample_meta.c.key == "as_of").values(value=end.isoformat() + "+00:00"))
    return end.replace(tzinfo=dt.UTC)


def sample_as_of(engine: Engine) -> dt.datetime | None:
    """The ``as_of`` the sample was generated for, or None if there is no sample."""
    try:
        with engine.connect() as conn:
            value = conn.scalar(select(sample_meta.c.value).where(sample_meta.c.key == "as_of"))
    except Exception:
        return None
    return dt.datetime.fromisoformat(value) if value else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, help="SQLAlchemy URL of the warehouse to (re)create")
    ap.add_argument("--people", type=int, default=50_000)
    ap.add_argument("--days", type=int, default=120)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--if-missing", action="store_true", help="keep an existing sample untouched")
    args = ap.parse_args(argv)
    engine = create_engine(args.url)
    if args.if_missing and sample_as_of(engine):
        print(f"sample warehouse already present (as_of {sample_as_of(engine)}); keeping it")
        return 0
    counts = generate(engine, args.people, args.days, seed=args.seed)
    print("sample warehouse: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
