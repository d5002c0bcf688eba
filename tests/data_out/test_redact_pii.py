"""Identifier-shaped values never survive an error path, in whatever form a vendor or database echoes them;
the text around them that a person needs (timestamps, UUIDs, status codes, counts) survives unchanged.

Values are generated (hypothesis) in the forms seen in the wild: Unicode local parts, internationalised
and punycode domains, full-width ``＠``, percent-encoding, JSON and HTML escapes, phones written with
spaces, dots, hyphens, en and em dashes, slashes, parentheses and full-width digits. Each is pushed
through ``scrub``, ``driver_line``, a real database error through ``translated`` and ``error_text``, and
a vendor's 4xx body through the HTTP client; a fixed set goes through a whole run into the run records,
the log and the failure email.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, create_engine, select, text

from data_out import alerts, state
from data_out.connections import ConnectionInfo, engine_for
from data_out.destinations.base import DestinationError
from data_out.destinations.http import HttpClient
from data_out.destinations.http_hook import http_hook
from data_out.engine.runner import RunFailed
from data_out.redact import driver_line, scrub
from data_out.state import ensure_schema
from data_out.state.errors import DatabaseError, error_text, translated
from tests.conftest import People
from tests.support.recorder import Answer, Seen, recording

# --- what identifiers look like ---------------------------------------------------------------------

LATIN = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
CYRILLIC = "абвгдеёжзийклмнопрстуфхцчшщыэюяАБВГД"
GREEK = "αβγδεζηθικλμνξοπρστυφχψω"
CJK = "例子测试中文日本語"
ACCENTED = "éèêëüöäñçåøß"
LETTERS = LATIN + CYRILLIC + GREEK + CJK + ACCENTED

local_part = st.text(st.sampled_from(LETTERS + "0123456789._+-"), min_size=1, max_size=20).filter(
    lambda s: s[0] not in ".+-" and s[-1] != "."
)
label = st.text(st.sampled_from(LETTERS + "0123456789"), min_size=1, max_size=12)
tld = st.one_of(
    st.text(st.sampled_from(LATIN), min_size=2, max_size=6),
    st.sampled_from(["рф", "中国", "ελ", "xn--p1ai", "xn--fiqs8s", "co.uk", "com"]),
)


@st.composite
def emails(draw: st.DrawFn) -> str:
    labels = draw(st.lists(label, min_size=1, max_size=3))
    return f"{draw(local_part)}@{'.'.join(labels)}.{draw(tld)}"


def _punycode(email: str) -> str | None:
    local, domain = email.split("@")
    try:
        return f"{local}@{domain.encode('idna').decode('ascii')}"
    except UnicodeError:
        return None


#: how an address reaches an error message: as given, or as an API, a URL or a web page re-encodes it
EMAIL_FORMS = {
    "raw": lambda e: e,
    "full-width at": lambda e: e.replace("@", "＠"),
    "small at": lambda e: e.replace("@", "﹫"),
    "full-width dot": lambda e: e.replace(".", "．"),
    "ideographic dot": lambda e: e.replace(".", "。"),
    "percent": lambda e: quote(e, safe=""),
    "percent at only": lambda e: e.replace("@", "%40"),
    "double percent": lambda e: quote(quote(e, safe=""), safe=""),
    "json": lambda e: json.dumps(e)[1:-1],
    "html entity": lambda e: e.replace("@", "&#64;"),
    "punycode": _punycode,
    "upper": lambda e: e.upper(),
}

PHONE_FORMATS = [[3, 3, 4], [1, 3, 3, 4], [4, 6], [5, 6], [2, 2, 2, 2, 2], [3, 8], [2, 4, 4], [3, 4, 4]]
SEPARATORS = [" ", ".", "-", "‐", "‑", "–", "—", "−", "/", "\u00a0", "%20", " - ", ". "]
FULL_WIDTH = str.maketrans("0123456789+", "０１２３４５６７８９＋")


@st.composite
def phones(draw: st.DrawFn) -> str:
    groups = [
        draw(st.text(st.sampled_from("0123456789"), min_size=n, max_size=n))
        for n in draw(st.sampled_from(PHONE_FORMATS))
    ]
    seps = [s for s in SEPARATORS if len(groups) > 2 or "." not in s]  # one dot alone is a decimal number
    sep = draw(st.sampled_from(seps))
    if draw(st.booleans()):
        groups[0] = f"({groups[0]})"
    number = (sep if not groups[0].startswith("(") else " ").join(groups[:2]) + "".join(sep + g for g in groups[2:])
    prefix = draw(st.sampled_from(["", "+", "00", "%2B"]))
    if prefix:
        number = f"{prefix}{draw(st.integers(1, 998))}{draw(st.sampled_from([' ', sep]))}{number}"
    return number.translate(FULL_WIDTH) if draw(st.booleans()) else number


@st.composite
def email_forms(draw: st.DrawFn) -> tuple[str, str]:
    """(the address, the form it appears in), for forms that exist for it."""
    email = draw(emails())
    form = EMAIL_FORMS[draw(st.sampled_from(sorted(EMAIL_FORMS)))](email)
    return email, form if form is not None else email


def _parts(email: str) -> list[str]:
    """Pieces of an address whose presence after scrubbing would be a leak (long enough to be telling)."""
    local, domain = email.split("@")
    return [p for p in (email, local, domain.split(".")[0]) if len(p) >= 4]


def _leaked_email(email: str, out: str, after: str) -> list[str]:
    """Pieces of ``email`` in ``out`` past ``after`` (the text before it is ours and may share letters)."""
    out = re.sub("<(email|number|secret)>", " ", out.split(after, 1)[1])
    found = [p for p in _parts(email) if p.casefold() in out.casefold()]
    encoded = [quote(p, safe="") for p in _parts(email)] + [json.dumps(p)[1:-1] for p in _parts(email)]
    return found + [p for p in encoded if len(p) >= 4 and p in out]


def _leaked_digits(out: str) -> list[str]:
    """The phone's digits, in any script, left in text whose context has none."""
    return re.findall(r"\d", out)


CONTEXT = "member {} is not valid for this list"

# --- scrub, driver_line, error_text -----------------------------------------------------------------


@given(email_forms())
def test_scrub_masks_every_form_of_an_email(pair: tuple[str, str]):
    email, form = pair
    out = scrub(CONTEXT.format(form))
    assert out == CONTEXT.format("<email>"), (form, out)


@given(phones())
def test_scrub_masks_every_form_of_a_phone(phone: str):
    out = scrub(CONTEXT.format(phone))
    assert out == CONTEXT.format("<number>"), (phone, out)


@given(email_forms(), phones())
def test_driver_line_and_error_text_mask_unquoted_values(pair: tuple[str, str], phone: str):
    """A database or library message that quotes values without quotes (a trigger's RAISE, a check's message)."""
    email, form = pair
    message = f"bad row: {form} / {phone}"
    for out in (driver_line(RuntimeError(message + "\nDETAIL: more")), error_text(ValueError(message))):
        assert not _leaked_email(email, out, "bad row: ") and not _leaked_digits(out), out


@pytest.fixture(scope="module")
def sqlite() -> Iterator[Engine]:
    engine = create_engine("sqlite://")
    yield engine
    engine.dispose()


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=60)
@given(email_forms(), phones())
def test_a_database_error_quoting_a_value_is_masked(sqlite: Engine, pair: tuple[str, str], phone: str):
    """SQLite names a missing table in its message, unquoted: a real driver error carrying the value."""
    email, form = pair
    name = f"{form} {phone}".replace('"', "")
    with pytest.raises(DatabaseError) as failed, translated("reading members"), sqlite.connect() as conn:
        conn.execute(text(f'SELECT * FROM "{name}"'))
    assert "no such table" in str(failed.value)
    out = str(failed.value)
    assert not _leaked_email(email, out, "no such table: ") and not _leaked_digits(out), out


@pytest.mark.postgres
@pytest.mark.parametrize("value", ["иван@пример.рф", "ivan%40example.com", "+1 415/555/2671", "415–555–2671"])
def test_a_postgres_error_quoting_a_relation_is_masked(pg_database: ConnectionInfo, value: str):
    """Postgres quotes a missing relation's name in double quotes, where ``driver_line`` keeps identifiers."""
    engine = engine_for(pg_database)
    with pytest.raises(DatabaseError) as failed, translated("reading members"), engine.connect() as conn:
        conn.execute(text(f'SELECT * FROM "{value}"'))
    assert "does not exist" in str(failed.value)
    assert value not in str(failed.value) and value not in error_text(failed.value)
    assert not re.search(r"\d{3}", str(failed.value)) and "иван" not in str(failed.value)


# --- the HTTP client: a vendor's 4xx body echoing the value ---------------------------------------


@pytest.fixture(scope="module")
def echoing() -> Iterator[str]:
    """A vendor that refuses every request, quoting the member it was sent in its JSON error."""

    def answer(seen: Seen) -> Answer:
        return Answer(400, {"error": {"message": f"member {seen.body.decode()} is not valid"}})

    with recording(answer) as vendor:
        yield vendor.url


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=60, deadline=None)
@given(email_forms(), phones())
def test_a_vendor_error_echoing_a_value_is_masked(echoing: str, pair: tuple[str, str], phone: str):
    email, form = pair
    conn = ConnectionInfo("v", "v", host=echoing)
    client = HttpClient("vendor", conn, hook=http_hook(conn, echoing))
    try:
        with pytest.raises(DestinationError) as failed:
            client.request("POST", "/members", data=f"{form} {phone}".encode())
    finally:
        client.close()
    out = str(failed.value)
    assert "HTTP 400" in out
    assert not _leaked_email(email, out, "member ") and not _leaked_digits(out.split("HTTP 400", 1)[1]), out


# --- crafted values, including the reported misses -------------------------------------------------

CRAFTED = [
    "иван@пример.рф",
    "ivan%40example.com",
    "ivan＠example.com",
    "ivan﹫example.com",
    "ivan@example．com",
    "ivan@xn--e1afmkfd.xn--p1ai",
    "%D0%B8%D0%B2%D0%B0%D0%BD%40%D0%BF%D1%80%D0%B8%D0%BC%D0%B5%D1%80.%D1%80%D1%84",
    "ivan%2540example.com",
    "ivan&#64;example.com",
    "\\u0438\\u0432\\u0430\\u043d@\\u043f\\u0440\\u0438\\u043c\\u0435\\u0440.\\u0440\\u0444",
    "jöhn.dœ+tag@exämple.de",
    "ivan\u200b@example.com",
    "+1 415/555/2671",
    "415–555–2671",
    "415—555—2671",
    "(415) 555-2671",
    "415.555.2671",
    "+44 7700 900123",
    "0044 7700 900123",
    "+49 (0)30 12345678",
    "030/12345678",
    "06 12 34 56 78",
    "４１５−５５５−２６７１",
    "%2B1%20415%20555%202671",
    "+14155552671",
    "4155552671",
]

SURVIVORS = [
    "2026-11-01T10:00:00Z",
    "2026-11-01T10:00:00.123456+00:00",
    "2026-11-01 10:00:00",
    "Sun, 01 Nov 2026 10:00:00 GMT",
    "01/11/2026",
    "01.11.2026",
    "123e4567-e89b-12d3-a456-426614174000",
    "12345678-1234-1234-1234-123456789012",
    "HTTP 429 Too Many Requests",
    "HTTP 503: Service Unavailable",
    "batch 17 of 3200",
    "batch 123456 failed",
    "sequence 987654321",
    "key dest_test_v1-meta-42-17",
    "4,389 rows acknowledged, 0 at the destination",
    "state database data_out_state (postgresql://10.0.0.12:5432/state) unavailable",
    "took 5.3 s; match rate 0.8731",
    "Retry-After: 120",
    "code 100, subcode 1713230",
    "api v1.3, version v21.0",
    "sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "customers/1234567890/userLists/555",  # a Google Ads customer id is ten digits: masked, see the test
]


def test_crafted_values_are_masked():
    for value in CRAFTED:
        out = scrub(f"vendor said: {value}; retry later")
        assert out.startswith("vendor said: <") and out.endswith("; retry later"), (value, out)
        assert not re.search(r"\d|ivan|иван|jöhn|example|пример", out.removeprefix("vendor said: ")), (value, out)


@pytest.mark.parametrize("keep", SURVIVORS[:-1])
def test_text_a_person_needs_survives(keep: str):
    assert scrub(keep) == keep
    assert error_text(RuntimeError(keep)) == f"RuntimeError: {keep}"


def test_ten_bare_digits_are_masked_as_a_phone_number():
    """The one compromise: a ten-digit id cannot be told from a phone number written without separators."""
    assert scrub(SURVIVORS[-1]) == "customers/<number>/userLists/555"


# --- a whole run: the run records, the log and the failure email ------------------------------------


def test_a_vendor_echoing_crafted_values_leaks_none_into_records_log_or_email(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    from tests.data_out.destinations.cases import CASES
    from tests.data_out.destinations.test_contract import Env

    caplog.set_level(logging.DEBUG)
    body = {"error": "members refused: " + ", ".join(CRAFTED)}
    db = ConnectionInfo("db", "sqlite", host=str(tmp_path / "db.sqlite"))
    engine = engine_for(db)
    ensure_schema(engine)
    with recording(lambda seen: Answer(422, body)) as receiver:
        env = Env(CASES["webhook"], None, receiver.url, tmp_path, People(engine), engine)  # type: ignore[arg-type]
        env.write()
        env.people.set([{"customer_id": f"c{i}", "email": f"p{i}@example.com"} for i in range(5)])
        with pytest.raises(RunFailed) as failed:
            env.run("t/1")
    assert receiver.seen, "the vendor was called"
    with engine.connect() as conn:
        records = [
            *conn.execute(select(state.sync.c.error).where(state.sync.c.error.is_not(None))).scalars(),
            *conn.execute(select(state.run.c.error).where(state.run.c.error.is_not(None))).scalars(),
        ]
    reason = scrub(str(failed.value), limit=1500)
    email = alerts.failure_email("dest_test_v1", "push", reason, "clear the task", ["team@example.com"])
    assert records and all("HTTP 422" in r for r in records)
    for where, hay in {
        "records": "\n".join(records),
        "exception": str(failed.value),
        "log": caplog.text,
        "email": email.text + email.html,
    }.items():
        leaked = [v for v in CRAFTED if v in hay or v.casefold() in hay.casefold()]
        assert leaked == [], where
        assert not re.search(r"ivan|иван|2671|900123|12345678", hay), where


# --- member keys a vendor quotes back ---------------------------------------------------------------


@pytest.mark.parametrize("vendor", ["segment", "webhook"])
def test_a_vendor_error_quoting_the_batch_masks_its_member_keys(vendor: str):
    """Destinations that send member keys (Segment's userId, the webhook's member_key) mask the batch's keys
    in the vendor's error, whatever they look like; the rest of the message stays readable."""
    from data_out.destinations import REGISTRY
    from data_out.destinations.base import MemberRow, Op
    from tests.data_out.destinations.cases import AUDIENCE, CASES

    keys = ["cust-000123", "7f3c9a1e", "Ольга-17"]
    rows = [MemberRow(k, "a" * 64, None, None, None, False) for k in keys]
    case, cls = CASES[vendor], REGISTRY[vendor]
    with recording(lambda seen: Answer(400, {"error": "refused: " + seen.body.decode()[:3000]})) as host:
        dest = cls(AUDIENCE, cls.settings_model(type=vendor, **case.settings), case.connection(host.url))
        with pytest.raises(DestinationError) as failed:
            dest.push(Op.ADD, rows, "key-1")
        dest.close()
    assert any(k in s.body.decode() for s in host.seen for k in keys), "positive control: the keys were sent"
    out = str(failed.value)
    assert "HTTP 400" in out and "<member>" in out
    assert [k for k in keys if k in out] == []


# --- long texts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["ivan.petrov@example.com", "+1 415 555 2671", "иван@пример.рф", "06 12 34 56 78"])
def test_a_long_text_cut_inside_a_value_leaks_no_part_of_it(value: str):
    """Only the head of a long text is scrubbed (a vendor echoing a 10 MB batch); the value the cut splits
    is dropped, not left half-visible. Long addresses before it shrink to ``<email>`` so the cut shows."""
    filler = "f" * 90 + "@example.com "
    for pad in range(80):
        out = scrub(filler * 29 + "y" * pad + " " + value + " tail" * 2000)
        assert not re.search(r"ivan|petrov|иван|\d", out), (pad, out[-60:])


def test_a_long_text_is_scrubbed_quickly():
    body = json.dumps(
        [{"member": f"user{i}@example.com", "phone": f"+1 415 555 {i % 10000:04d}"} for i in range(50_000)]
    )
    started = time.monotonic()
    out = scrub(body)
    assert time.monotonic() - started < 0.5 and "<email>" in out and "<number>" in out
