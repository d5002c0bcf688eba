"""One corpus of bad input, each case checked for the same three promises.

Two audiences share a state database: ``bad_input_v1``, which each case breaks after a first good
sync, and ``bystander_v1``, whose membership changes at the same time. Every audience that
loads is then run, as its own DAG would run it, with connections resolved through Airflow. Whatever
the case, three things must hold:

* the problem is a clear, named error: the message names the file, field, page or connection, and says
  what to do (for a failed run, the failure email's next step is a specific one), with no raw
  identifier in it; or, for bad rows, the run succeeds and the rows are counted in ``do_run``;
* nothing already synced is lost: the broken audience's destination and acknowledged state are as the
  first sync left them;
* one broken audience never stops the others: ``bystander_v1`` syncs its new members in the same pass.

The Customer.io webhook cases hold the receiver to the same promises: a clear status, nothing stored
from the bad request, and the next sender still served.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import datetime as dt
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import func, select, text

from data_out import state
from data_out.config import ConfigError, load_audiences
from data_out.connections import ConnectionInfo, engine_for
from data_out.engine.holdout import is_held_out
from data_out.engine.runner import AudienceRunner
from data_out.errors import GENERIC_NEXT_STEP, next_step_of
from data_out.hooks.state import connection_info
from data_out.identity import sha256_hex
from data_out.metrics.receiver import MAX_BODY_BYTES, create_app, signature
from data_out.state import ensure_schema
from sandbox.standins.base import Request, Response, Running
from sandbox.standins.customerio import CustomerIOStandIn
from tests.conftest import People
from tests.data_out.metrics.conftest import SECRET, event
from tests.support.memory_destination import MemoryStore

AS_OF = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
BAD, BYSTANDER = "bad_input_v1", "bystander_v1"
SALT = "bad-salt"


def good_rows() -> list[dict]:
    return [{"customer_id": f"m-{i:03d}", "email": f"member.{i}@example.com"} for i in range(40)]


def bystander_rows(n: int) -> list[dict]:
    return [{"customer_id": f"b-{i:03d}", "email": f"bystander.{i}@example.com"} for i in range(n)]


RAW = {r["email"] for r in good_rows()} | {r["customer_id"] for r in good_rows()}

BASE_AUDIENCE: dict[str, Any] = {
    "name": BAD,
    "owner": "tests",
    "purpose": "the audience each case breaks",
    "source": {"conn_id": "wh", "sql_file": "sql/bad_input.sql"},
    "identifiers": {"email": "email", "phone": "phone", "default_region": "US"},
    "holdout": {"percent": 10, "salt": SALT},
    "destinations": [{"type": "memory", "audience_id": "aud-bad"}],
}
GOOD_SQL = "SELECT customer_id, email, phone FROM people"


class CustomerIO(CustomerIOStandIn):
    """The stand-in, plus one page answered with an empty 200 (a proxy in the way)."""

    empty_page: int | None = None

    def membership(self, req: Request, m: Any) -> Response:
        resp = super().membership(req, m)
        return Response(200, None) if self.pages_served == self.empty_page else resp


class World:
    """The two audiences, their databases and connections (as ``AIRFLOW_CONN_*``), and how to break one."""

    def __init__(
        self,
        tmp: Path,
        monkeypatch: pytest.MonkeyPatch,
        store: MemoryStore,
        stack: contextlib.ExitStack,
        pg: Callable[[], ConnectionInfo],
    ) -> None:
        self.monkeypatch, self.store, self.stack, self.pg = monkeypatch, store, stack, pg
        self.aud = tmp / "aud"
        (self.aud / "sql").mkdir(parents=True)
        self.engine = engine_for(ConnectionInfo("s", "sqlite", host=str(tmp / "state.sqlite")))
        ensure_schema(self.engine)
        self.connection("wh", {"conn_type": "sqlite", "host": str(tmp / "warehouse.sqlite")})
        self.connection("memory_default", {"conn_type": "memory"})
        self.warehouse = engine_for(connection_info("wh"))
        self.people = People(self.warehouse)  # what bad_input_v1 reads (its warehouse may change)
        self.others = People(engine_for(ConnectionInfo("o", "sqlite", host=str(tmp / "others.sqlite"))))
        self.connection("others", {"conn_type": "sqlite", "host": str(tmp / "others.sqlite")})
        self.rows = good_rows()
        self.cio: CustomerIO | None = None
        self.write_yaml(BASE_AUDIENCE)
        self.write_sql(GOOD_SQL)
        self.write(
            BYSTANDER,
            {
                "name": BYSTANDER,
                "owner": "tests",
                "purpose": "must keep syncing whatever happens to the other audience",
                "source": {"conn_id": "others", "query": GOOD_SQL},
                "destinations": [{"type": "memory", "audience_id": "aud-ok"}],
            },
        )

    # -- editing the broken audience -------------------------------------------------------------
    def connection(self, conn_id: str, conn: dict[str, Any]) -> None:
        self.monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))

    def write(self, name: str, body: dict[str, Any] | str | bytes, suffix: str = ".yaml") -> None:
        path = self.aud / f"{name}{suffix}"
        if isinstance(body, bytes):
            path.write_bytes(body)
        else:
            path.write_text(body if isinstance(body, str) else yaml.safe_dump(body, sort_keys=False), encoding="utf-8")

    def write_yaml(self, body: dict[str, Any] | str | bytes) -> None:
        self.write(BAD, body)

    def edit(self, change: Callable[[dict[str, Any]], None]) -> None:
        body = yaml.safe_load((self.aud / f"{BAD}.yaml").read_text(encoding="utf-8"))
        change(body)
        self.write_yaml(body)

    def write_sql(self, sql: str | bytes) -> None:
        path = self.aud / "sql" / "bad_input.sql"
        if isinstance(sql, bytes):
            path.write_bytes(sql)
        else:
            path.write_text(sql, encoding="utf-8")

    def add_rows(self, rows: list[dict]) -> None:
        self.rows = self.rows + rows
        self.people.set(self.rows)

    def use_customerio(self) -> None:
        self.cio = CustomerIO()
        url = self.stack.enter_context(Running(self.cio)).url
        self.cio.segments["1234"] = [
            {"id": r["customer_id"], "email": r["email"], "cio_id": f"cio-{r['customer_id']}"} for r in self.rows
        ]
        extra = {"backoff_initial": 0.01, "max_attempts": 2}  # paced by the source, under the API limit
        self.connection(
            "data_out_customerio",
            {"conn_type": "data_out_customerio", "host": url, "password": "cio-app-key", "extra": extra},
        )
        self.edit(
            lambda a: a.update(
                source={"type": "customerio", "segment_id": 1234, "page_size": 20}, identifiers={"email": "email"}
            )
        )

    def use_postgres_warehouse(self, pg: ConnectionInfo) -> None:
        self.connection(
            "pgwh", {"conn_type": "postgres", "host": pg.host, "port": pg.port, "login": pg.login, "schema": pg.schema}
        )
        self.people = People(engine_for(connection_info("pgwh")))
        self.people.set(self.rows)
        self.edit(lambda a: a["source"].update(conn_id="pgwh"))

    # -- running and reading ---------------------------------------------------------------------
    def sync_all(self, phase: str) -> tuple[list[ConfigError], dict[str, str]]:
        """Load every audience and run each one that loads, as its own DAG run; collect what failed."""
        loaded = load_audiences(self.aud)
        failures: dict[str, str] = {}
        self.next_steps: dict[str, str] = {}
        for name in sorted(loaded.audiences):
            try:
                AudienceRunner(self.engine, loaded, name, connection_info).run(f"audience__{name}/{phase}", AS_OF)
            except Exception as exc:  # noqa: BLE001 - one DAG failing must not stop the next
                failures[name] = str(exc)
                self.next_steps[name] = next_step_of(exc)
        return loaded.errors, failures

    def synced(self, audience: str, aud_id: str) -> tuple[dict[str, str | None], dict[str, str | None]]:
        """(what the destination holds, what state says it acknowledged): member key -> email hash."""
        a = state.ack
        with self.engine.connect() as conn:
            acked = dict(
                conn.execute(
                    select(a.c.member_key, a.c.email_sha256).where(a.c.audience == audience, a.c.rejected.is_(False))
                ).all()
            )
        return {k: r.email_sha256 for k, r in self.store.audience(aud_id).items()}, acked

    def last_run(self) -> dict[str, Any]:
        r = state.run
        with self.engine.connect() as conn:
            return dict(
                conn.execute(select(r).where(r.c.audience == BAD).order_by(r.c.id.desc()).limit(1)).mappings().one()
            )


def targeted(rows: list[dict]) -> dict[str, str]:
    return {r["customer_id"]: sha256_hex(r["email"]) for r in rows if not is_held_out(SALT, r["customer_id"], 10)}


# -- the receiver, driven at the ASGI level so the test can count the bytes it reads -----------------
async def _post(app: Any, headers: dict[str, str], chunks: Iterator[bytes]) -> tuple[int, dict[str, Any], int]:
    consumed = 0
    pending = next(chunks, None)

    async def receive() -> dict[str, Any]:
        nonlocal consumed, pending
        if pending is None:
            return {"type": "http.disconnect"}
        chunk, pending = pending, next(chunks, None)  # one chunk of lookahead: is more coming?
        consumed += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": pending is not None}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/customerio",
        "raw_path": b"/customerio",
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "server": ("receiver", 80),
        "client": ("customerio", 1),
    }
    await app(scope, receive, send)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body), consumed


def webhook(
    w: World, body: bytes | Iterator[bytes], *, declared: int | None = None, secret: str = SECRET
) -> tuple[int, dict[str, Any], int]:
    """POST to the receiver: (status, reply, bytes it read). ``body`` may be a lazy stream of chunks, sent
    without a Content-Length; ``secret`` signs it (the receiver always checks with the real one)."""
    app = create_app(lambda: SECRET, lambda: w.engine)
    stamp = str(int(time.time()))
    headers = {"x-cio-timestamp": stamp, "content-type": "application/json"}
    if isinstance(body, bytes):
        headers["content-length"] = str(len(body))
        headers["x-cio-signature"] = signature(secret, stamp, body)
        chunks: Iterator[bytes] = iter([body])
    else:
        chunks = body
    if declared is not None:
        headers["content-length"] = str(declared)
    return asyncio.run(_post(app, headers, chunks))


def signed(ev: dict[str, Any]) -> bytes:
    return json.dumps(ev).encode()


def fifty_mb() -> Iterator[bytes]:
    """50 MB in 64 KB chunks, produced lazily: the test itself never holds it."""
    return (b"x" * 65_536 for _ in range(800))


def stored_events(w: World) -> int:
    with w.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(state.metric_event)) or 0)


# -- the corpus ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Case:
    kind: str  # config: the file does not load | run: the run fails | counted: bad rows counted | http
    breaks: Callable[[World], Any]
    expect: tuple[str, ...] = ()  # what the message must say (config, run)
    counts: dict[str, int] = dataclasses.field(default_factory=dict)  # do_run figures (counted)
    setup: Callable[[World], None] | None = None  # before the first, good sync
    still_loads: bool = False  # the broken file is a second copy; the audience itself still loads
    status: int = 0  # http
    check: Callable[[World], None] | None = None  # anything else the case must leave true
    sends_new: bool = False  # counted: a new, valid member reaches the destination (``check`` says which)


def _issues(**kw: int) -> dict[str, int]:
    return {f"identifier_issues.{k}": v for k, v in kw.items()}


def _warehouse_intact(w: World) -> None:
    with w.warehouse.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM people")) == len(good_rows()), "the query changed the warehouse"


def _state_tables_intact(w: World) -> None:
    with w.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(state.ack)) > 0  # do_ack still exists and holds rows


def _dedupe(w: World) -> None:
    new = next(f"dup-{i}" for i in range(100) if not is_held_out(SALT, f"dup-{i}", 10))
    w.add_rows(
        [dict(r) for r in good_rows()[:5]]
        + [{"customer_id": new, "email": "dup.one@example.com"}, {"customer_id": new, "email": "dup.two@example.com"}]
    )


def _dedupe_check(w: World) -> None:
    held, _ = w.synced(BAD, "aud-bad")
    new = [k for k in held if k.startswith("dup-")]
    assert len(new) == 1 and held[new[0]] in {sha256_hex("dup.one@example.com"), sha256_hex("dup.two@example.com")}


SQL_KEY = "m-'); DROP TABLE do_ack; --"


def _sql_key_check(w: World) -> None:
    held, acked = w.synced(BAD, "aud-bad")
    want = not is_held_out(SALT, SQL_KEY, 10)
    assert (SQL_KEY in held) == want and (SQL_KEY in acked) == want  # a member like any other, bound not spliced
    _state_tables_intact(w)


def _cio_page(w: World, **change: Any) -> None:
    assert w.cio is not None
    w.cio.pages_served = 0
    for k, v in change.items():
        setattr(w.cio, k, v)


def _cio_without_ids(w: World) -> None:
    assert w.cio is not None
    w.cio.segments["1234"] += [{"email": f"noid.{i}@example.com", "cio_id": f"cio-noid-{i}"} for i in range(3)]


def _pg_warehouse(w: World) -> None:
    w.use_postgres_warehouse(w.pg())


CORPUS: dict[str, Case] = {
    # audience files: the file does not load, the import error names file, field and fix
    "yaml_malformed": Case(
        "config",
        lambda w: w.write_yaml(f"name: {BAD}\nowner: [unclosed\n"),
        ("bad_input_v1.yaml", "invalid YAML at line 3", "Fix: fix the YAML syntax there"),
    ),
    "yaml_not_utf8": Case(
        "config",
        lambda w: w.write_yaml(b"name: caf\xe9_v1\n"),
        ("bad_input_v1.yaml", "not UTF-8 text", "Fix: save it as UTF-8"),
    ),
    "yaml_empty": Case("config", lambda w: w.write_yaml(""), ("bad_input_v1.yaml", "not a mapping", "Fix:")),
    "unknown_field": Case(
        "config",
        lambda w: w.edit(lambda a: a.update(holdot={"percent": 5, "salt": "abcd"})),
        ("bad_input_v1.yaml: holdot", "remove `holdot` or correct its spelling"),
    ),
    "unknown_destination_type": Case(
        "config",
        lambda w: w.edit(lambda a: a["destinations"][0].update(type="myspace")),
        ("bad_input_v1.yaml: destinations.0", "'myspace'", "'memory'", "Fix: use one of the values listed"),
    ),
    "missing_required_field": Case(
        "config",
        lambda w: w.edit(lambda a: a.pop("owner")),
        ("bad_input_v1.yaml: owner", "Fix: add `owner` to the file"),
    ),
    "holdout_out_of_range": Case(
        "config",
        lambda w: w.edit(lambda a: a["holdout"].update(percent=90)),
        ("bad_input_v1.yaml: holdout.percent", "less than or equal to 50", "(got 90)"),
    ),
    "holdout_sent_to_an_ad_platform": Case(
        "config",
        lambda w: w.edit(lambda a: a["destinations"][0].update(include="all")),
        ("bad_input_v1.yaml: destination 'memory' is an activation channel", "retarget the holdout). Fix:"),
    ),
    "name_sql_injection": Case(
        "config",
        lambda w: w.edit(lambda a: a.update(name="bad_input_v1'; DROP TABLE do_ack; --")),
        ("bad_input_v1.yaml: name", "must be lowercase, stable and versioned"),
        check=_state_tables_intact,
    ),
    "destination_label_sql_injection": Case(
        "config",
        lambda w: w.edit(lambda a: a["destinations"][0].update(name="x; DROP TABLE do_ack")),
        ("bad_input_v1.yaml: destinations.0.memory.name", "lowercase letters, digits and underscores"),
    ),
    "warehouse_table_sql_injection": Case(
        "config",
        lambda w: w.edit(
            lambda a: a.update(destinations=[{"type": "warehouse", "conn_id": "wh", "table": "t; DROP TABLE do_ack"}])
        ),
        ("bad_input_v1.yaml: destinations.0.warehouse.table", "lowercase SQL identifier"),
    ),
    "exclusion_of_a_missing_audience": Case(
        "config",
        lambda w: w.edit(lambda a: a.update(exclusions=["nobody_v1"])),
        ("bad_input_v1.yaml: exclusions", "nobody_v1 do not exist or do not load"),
    ),
    "duplicate_audience_name": Case(
        "config",
        lambda w: w.write(BAD, copy.deepcopy(BASE_AUDIENCE), suffix=".yml"),
        ("bad_input_v1.yml: name", "also used by", "give each audience a unique name"),
        still_loads=True,
    ),
    "sql_file_missing": Case(
        "config",
        lambda w: w.edit(lambda a: a["source"].update(sql_file="sql/gone.sql")),
        ("bad_input_v1.yaml: source.sql_file", "'sql/gone.sql' does not exist"),
    ),
    "sql_file_not_utf8": Case(
        "config",
        lambda w: w.write_sql(b"SELECT customer_id, email, phone FROM people -- \xff\n"),
        ("bad_input_v1.yaml: source.sql_file", "is not UTF-8 text", "save it as UTF-8"),
    ),
    "sql_unbound_parameter": Case(
        "config",
        lambda w: w.write_sql(GOOD_SQL + " WHERE customer_id > :since"),
        ("bad_input_v1.yaml: source.sql_file", "uses :since", "add `since: <duration>` to source.windows"),
    ),
    # connections and queries: the run fails, the message and the email's next step say what to do
    "missing_source_connection": Case(
        "run",
        lambda w: w.edit(lambda a: a["source"].update(conn_id="no_such_wh")),
        ("connection 'no_such_wh' is not defined in Airflow", "AIRFLOW_CONN_NO_SUCH_WH"),
    ),
    "missing_destination_connection": Case(
        "run",
        lambda w: w.edit(lambda a: a["destinations"][0].update(conn_id="no_such_dest")),
        ("memory: failed", "connection 'no_such_dest' is not defined in Airflow"),
    ),
    "sql_fails_missing_table": Case(
        "run",
        lambda w: w.write_sql("SELECT customer_id, email, phone FROM nope"),
        ("audience bad_input_v1 (sql/bad_input.sql): the query failed", "no such table"),
    ),
    "sql_syntax_error": Case(
        "run",
        lambda w: w.write_sql("SELEC customer_id, email FROM people"),
        ("(sql/bad_input.sql): the query failed", "syntax error"),
    ),
    "sql_missing_member_key_column": Case(
        "run",
        lambda w: w.write_sql("SELECT customer_id AS id, email, phone FROM people"),
        ("(sql/bad_input.sql): the query returns columns", "but not ['customer_id']", "alias them"),
    ),
    "sql_that_writes": Case(
        "run",
        lambda w: w.write_sql("DELETE FROM people"),
        ("(sql/bad_input.sql): the query tried to change the database and was refused", "must be a SELECT"),
        check=_warehouse_intact,
    ),
    "sql_fails_quoting_a_value_postgres": Case(
        "run",
        lambda w: w.write_sql(GOOD_SQL + " WHERE CAST(email AS integer) > 0"),
        ("(sql/bad_input.sql): the query failed", 'invalid input syntax for type integer: "<value>"'),
        setup=_pg_warehouse,
    ),
    "sql_fails_quoting_a_member_key_postgres": Case(  # not an email or a phone: only masking the value hides it
        "run",
        lambda w: w.write_sql(GOOD_SQL + " WHERE CAST(customer_id AS integer) > 0"),
        ("(sql/bad_input.sql): the query failed", 'invalid input syntax for type integer: "<value>"'),
        setup=_pg_warehouse,
    ),
    "empty_source": Case(
        "run", lambda w: w.write_sql(GOOD_SQL + " WHERE 1 = 0"), ("mass-removal guard", "guard_override_reason")
    ),
    # bad rows: counted in the run record, never sent, never a crash
    "duplicate_keys": Case("counted", _dedupe, counts={"duplicate_keys": 6}, check=_dedupe_check, sends_new=True),
    "null_keys_and_identifiers": Case(
        "counted",
        lambda w: w.add_rows(
            [{"customer_id": None, "email": f"nokey.{i}@example.com"} for i in range(3)]
            + [{"customer_id": f"noemail-{i}", "email": None} for i in range(2)]
        ),
        counts={"missing_keys": 3, **_issues(email_missing=2, phone_missing=42)},
    ),
    "garbage_identifiers": Case(
        "counted",
        lambda w: w.add_rows(
            [
                {"customer_id": f"junk-{i}", "email": e, "phone": p}
                for i, (e, p) in enumerate(
                    [("n/a", "12"), ("@@", "abc"), ("not an email", "+"), ("a@b", "0000"), ("\x00\x01", "☎")]
                )
            ]
        ),
        counts=_issues(email_invalid=5, phone_invalid=5),
    ),
    "non_utf8_identifiers": Case(
        "counted",
        lambda w: w.add_rows(
            [
                {"customer_id": b"\xff\xfe-key", "email": "valid.but.keyless@example.com"},
                {"customer_id": "latin-1", "email": b"caf\xe9@example.com", "phone": b"\xff555"},
            ]
        ),
        counts={"missing_keys": 1, **_issues(email_invalid=1, phone_invalid=1)},
    ),
    "ten_kb_strings": Case(
        "counted",
        lambda w: w.add_rows(
            [
                {"customer_id": "k" * 10_240, "email": "huge.key@example.com"},
                {"customer_id": "huge-values", "email": "e" * 10_240 + "@example.com", "phone": "5" * 10_240},
            ]
        ),
        counts={"missing_keys": 1, **_issues(email_invalid=1, phone_invalid=1)},
    ),
    "member_key_that_is_sql": Case(
        "counted",
        lambda w: w.add_rows([{"customer_id": SQL_KEY, "email": "bobby.tables@example.com"}]),
        counts={"missing_keys": 0},
        check=_sql_key_check,
        sends_new=True,
    ),
    # Customer.io segments as sources
    "customerio_page_with_unexpected_shape": Case(
        "run",
        lambda w: _cio_page(w, malformed_page=2),
        (
            "(Customer.io segment 1234): page 2 of Customer.io segment 1234 has an unexpected shape",
            "nothing was staged",
        ),
        setup=World.use_customerio,
    ),
    "customerio_page_not_json": Case(
        "run",
        lambda w: _cio_page(w, empty_page=2),
        (
            "(Customer.io segment 1234): GET /v1/segments/1234/membership answered 200",
            "not JSON",
            "Check the connection's host",
        ),
        setup=World.use_customerio,
    ),
    "customerio_members_without_an_id": Case(
        "counted", _cio_without_ids, counts={"missing_keys": 3}, setup=World.use_customerio
    ),
    # Customer.io reporting webhooks into the metrics receiver
    "webhook_50_mb_declared": Case("http", lambda w: webhook(w, b"", declared=50 * 1024 * 1024), status=413),
    "webhook_50_mb_streamed_without_length": Case("http", lambda w: webhook(w, fifty_mb()), status=413),
    "webhook_not_json": Case("http", lambda w: webhook(w, b"{not json"), ("body is not JSON",), status=400),
    "webhook_unexpected_shape": Case(
        "http",
        lambda w: webhook(
            w, signed({**{k: v for k, v in event(3).items() if k != "event_id"}, "metric": "teleported"})
        ),
        ("metric", "event_id"),
        status=400,
    ),
    "webhook_forged_signature": Case("http", lambda w: webhook(w, signed(event(4)), secret="forged"), status=401),
}


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: MemoryStore, request: pytest.FixtureRequest):
    with contextlib.ExitStack() as stack:
        yield World(tmp_path, monkeypatch, store, stack, lambda: request.getfixturevalue("pg_database"))


def test_the_corpus_has_every_kind_of_bad_input():
    """The count docs/reliability.md quotes; a case added or dropped updates both."""
    kinds = {k: sum(c.kind == k for c in CORPUS.values()) for k in ("config", "run", "counted", "http")}
    assert kinds == {"config": 16, "run": 11, "counted": 7, "http": 5} and len(CORPUS) == 39


@pytest.mark.parametrize("case", CORPUS.values(), ids=CORPUS.keys())
def test_bad_input(world: World, case: Case):
    w = world
    if case.setup:
        case.setup(w)
    w.people.set(w.rows)
    w.others.set(bystander_rows(10))
    errors, failures = w.sync_all("first")
    assert (errors, failures) == ([], {})
    before = w.synced(BAD, "aud-bad")
    assert before == (targeted(good_rows()),) * 2

    if case.kind == "http":
        return check_http(w, case)

    w.others.set(bystander_rows(15))  # the bystander has new members to sync in the same pass
    case.breaks(w)
    errors, failures = w.sync_all("second")

    if case.kind == "config":
        messages = [str(e) for e in errors]
        assert [m for m in messages if all(s in m for s in case.expect)], messages
        assert (BAD in {n for n in load_audiences(w.aud).audiences}) == case.still_loads
        assert BAD not in failures, failures.get(BAD)
    elif case.kind == "run":
        assert errors == [], errors
        message = failures.get(BAD, "")
        assert message.startswith(f"audience {BAD} run "), message
        assert all(s in message for s in case.expect), message
        assert w.next_steps[BAD] != GENERIC_NEXT_STEP, f"the failure email has no specific next step: {message}"
    else:
        assert (errors, failures) == ([], {}), (errors, failures)
        run = w.last_run()
        assert run["status"] == "success"
        for key, want in case.counts.items():
            section, _, name = key.partition(".")
            got = (run[section] or {}).get(name, 0) if name else run[key]
            assert got == want, f"{key}: {got} != {want}"
    if case.kind in ("config", "run"):
        assert not [v for v in RAW if any(v in m for m in [*map(str, errors), *failures.values()])]

    held, acked = w.synced(BAD, "aud-bad")
    if case.kind == "counted":  # the members synced before are still there, with the same identity
        assert {k: held.get(k) for k in before[0]} == before[0] and {k: acked.get(k) for k in before[1]} == before[1]
        assert case.sends_new or set(held) == set(before[0]), "a row without a usable identifier was sent"
    else:
        assert (held, acked) == before, "the broken audience's synced state changed"
    assert (
        w.synced(BYSTANDER, "aud-ok") == ({r["customer_id"]: sha256_hex(r["email"]) for r in bystander_rows(15)},) * 2
    )
    assert BYSTANDER not in failures
    if case.check:
        case.check(w)


def check_http(w: World, case: Case) -> None:
    assert webhook(w, signed(event(1)))[:2] == (200, {"status": "stored", "event_id": "ev00001"})
    status, reply, consumed = case.breaks(w)
    assert status == case.status, reply
    if case.status == 413:
        assert reply["limit"] == MAX_BODY_BYTES
        assert consumed <= MAX_BODY_BYTES + 65_536, f"read {consumed} bytes of a body it was refusing"
    for field in case.expect:  # a 400 names what is wrong with the event
        assert field in reply["fields"], reply
    assert stored_events(w) == 1, "the bad request stored something"
    assert webhook(w, signed(event(2)))[0] == 200 and stored_events(w) == 2  # the next sender is still served
