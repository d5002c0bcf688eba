"""A member key is stored and sent unhashed: contact data is refused as one, when the file loads and
again when the source is staged (for a column whose name does not tell)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from data_out import state
from data_out.config import load_audiences
from data_out.connections import ConnectionInfo, engine_for
from data_out.engine.runner import AudienceRunner, RunFailed
from data_out.sources.base import contact_key_sql, looks_like_contact
from data_out.state import ensure_schema
from tests.conftest import write_audience

AUD = "member_key_test_v1"


def _audience(directory: Path, member_key: str, identifiers: str = "{email: email}", query: str = "") -> Path:
    query = query or "SELECT customer_id, email, phone, email AS contact FROM people"
    return write_audience(
        directory,
        AUD,
        f"""
        name: {AUD}
        owner: tests
        purpose: member key rules
        source: {{conn_id: wh, query: "{query}"}}
        member_key: {member_key}
        identifiers: {identifiers}
        destinations: [{{type: memory}}]
        """,
    )


@pytest.mark.parametrize(
    ("member_key", "identifiers", "said"),
    [
        ("email", "{email: email}", "the column mapped as identifiers.email"),
        ("phone", "{email: email, phone: phone}", "the column mapped as identifiers.phone"),
        ("first", "{email: email, extra: {FN: first}}", "the column mapped as identifiers.extra.FN"),
        ("Email_Address", "{email: mail}", "a column of contact data by its name"),
        ("mobile", "{email: email}", "a column of contact data by its name"),
    ],
)
def test_contact_columns_are_refused_when_the_file_loads(tmp_path: Path, member_key: str, identifiers: str, said: str):
    path = _audience(tmp_path, member_key, identifiers)
    result = load_audiences(tmp_path)
    assert AUD not in result.audiences
    [error] = result.errors
    assert error.path == path and error.field == "member_key"
    assert said in error.message and "customer id" in error.message


def test_an_id_column_also_mapped_as_external_id_is_fine(tmp_path: Path):
    _audience(tmp_path, "customer_id", "{email: email, external_id: customer_id}")
    assert AUD in load_audiences(tmp_path).audiences


@pytest.mark.parametrize(
    "key",
    [
        "ann@example.com",
        "ann\uff20example.com",
        "+14155552671",
        "+1 415/555/2671",
        "415-555-2671",
        "(415) 555.2671",
        "+44 20 7946\u20130958",
    ],
)
def test_contact_shaped_keys(key: str):
    assert looks_like_contact(key)


@pytest.mark.parametrize(
    "key", ["c42", "4155552671", "123456", "0b7f1c2e-4f3a-4c8e-9d1a-2b6c7e8f9a0b", "CUST-2024-001"]
)
def test_ids_are_not_contact_shaped(key: str):
    assert not looks_like_contact(key)


def _run(tmp: Path, wh: ConnectionInfo, state_info: ConnectionInfo) -> dict:
    engine = engine_for(state_info)
    ensure_schema(engine)

    def resolve(conn_id: str) -> ConnectionInfo:
        return wh if conn_id == "wh" else ConnectionInfo(conn_id, "memory")

    runner = AudienceRunner(engine, load_audiences(tmp / "aud"), AUD, resolve)
    with pytest.raises(RunFailed):
        runner.run("t/1", dt.datetime(2026, 11, 1, tzinfo=dt.UTC))
    with engine.connect() as conn:
        run = dict(conn.execute(select(state.run)).mappings().one())
        stored = conn.scalar(select(func.count()).select_from(state.member))
        staged = conn.scalar(select(func.count()).select_from(state.stage))
    return {**run, "stored": stored, "staged": staged}


@pytest.mark.parametrize("path", ["python", "in_database"])
def test_staging_refuses_keys_that_are_emails_without_echoing_them(
    tmp_path: Path, path: str, request: pytest.FixtureRequest
):
    """``contact`` is an email column under an innocent name: only the values give it away."""
    if path == "python":
        wh = ConnectionInfo("wh", "sqlite", host=str(tmp_path / "wh.sqlite"))
        state_info = ConnectionInfo("db", "sqlite", host=str(tmp_path / "state.sqlite"))
    else:
        wh = state_info = request.getfixturevalue("pg_database")
    with engine_for(wh).begin() as conn:
        conn.execute(text("CREATE TABLE people (customer_id VARCHAR(64), email VARCHAR(400), phone VARCHAR(64))"))
        rows = [{"c": f"c{i}", "e": f"secret.person{i}@example.com", "p": None} for i in range(30)]
        rows += [{"c": f"c{i}", "e": None, "p": f"+1 415 555 {i:04d}"} for i in range(30, 40)]
        conn.execute(text("INSERT INTO people VALUES (:c, :e, :p)"), rows)
    _audience(
        tmp_path / "aud",
        "contact",
        query="SELECT customer_id, email, phone, coalesce(email, phone) AS contact FROM people",
    )
    run = _run(tmp_path, wh, state_info)
    assert run["status"] == "failed"
    error = run["error"]
    assert "40 member keys in column 'contact'" in error and "customer id" in error
    assert "secret.person" not in error and "555" not in error
    assert run["stored"] == 0 and run["staged"] == 0


def test_postgres_and_python_agree_on_contact_shaped_keys(pg_admin):  # type: ignore[no-untyped-def]
    keys = [
        "ann@example.com", "ann\uff20example.com", "+14155552671", "+1 415/555/2671", "415-555-2671",
        "(415) 555.2671", "+44 20 7946\u20130958", "c42", "4155552671", "123456", "CUST-2024-001", "+", "(1)",
        "0b7f1c2e-4f3a-4c8e-9d1a-2b6c7e8f9a0b", "12 34 567", "1-2-3",
    ]  # fmt: skip
    with pg_admin.connect() as conn:
        for key in keys:
            in_sql = conn.scalar(text(f"SELECT {contact_key_sql('CAST(:k AS text)')}"), {"k": key})
            assert in_sql is looks_like_contact(key), key
