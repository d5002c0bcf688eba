"""No raw email or phone of the fixture reaches logs, XCom, state tables, errors or outgoing payloads.

An audience DAG runs under the Airflow runtime against Postgres state and four stand-ins, one of them
failing fatally, then everything the run left behind is scanned for every raw and normalised form of
the fixture's identifiers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag
from sqlalchemy import inspect, select, text

from data_out.config import AUDIENCES_DIR_ENV
from data_out.connections import engine_for
from data_out.identity import normalize_email, normalize_phone
from sandbox.standins import CREDENTIALS, serve
from tests.conftest import People, airflow_conn, write_audience

DAGS = Path(__file__).resolve().parents[2] / "dags"
pytestmark = [pytest.mark.airflow, pytest.mark.postgres]


def fixture_rows() -> list[dict]:
    rows = [
        {"customer_id": f"c{i:03d}", "email": f"  Leak.Probe{i}@Example.com ", "phone": f"(202) 555-{1000 + i}"}
        for i in range(30)
    ]
    rows.append({"customer_id": "c900", "email": "broken-address@", "phone": "+44 7700 900123"})
    return rows


def needles(rows: list[dict]) -> set[str]:
    out = set()
    for r in rows:
        for raw in (r["email"], r["phone"]):
            out |= {raw.strip(), raw.strip().lower()}
        if e := normalize_email(r["email"]).value:
            out.add(e)
        if p := normalize_phone(r["phone"], "US").value:
            out |= {p, p[1:]}
    return {n for n in out if n}


def test_a_full_run_with_a_failure_leaks_no_raw_identifier(monkeypatch, tmp_path, pg_database, capfd, caplog):
    caplog.set_level("DEBUG")
    engine = engine_for(pg_database)
    rows = fixture_rows()
    People(engine).set(rows)
    write_audience(
        tmp_path,
        "leak_probe_v1",
        """
        name: leak_probe_v1
        owner: tests
        purpose: leak scan
        source:
          conn_id: leak_db
          query: SELECT customer_id, email, phone FROM people
        identifiers: {email: email, phone: phone}
        holdout: {percent: 10, salt: leak-salt}
        destinations:
          - {type: meta, audience_id: "123", batch_size: 7}
          - type: google_ads
            customer_id: "1234567890"
            user_list_id: "9"
            batch_size: 7
            consent: {ad_user_data: GRANTED, ad_personalization: DENIED}
          - type: google
            customer_id: "1234567890"
            user_list_id: "9"
            batch_size: 7
            consent: {ad_user_data: GRANTED, ad_personalization: DENIED}
            customer_match_terms_accepted: true
          - {type: webhook, path: /hooks/crm, fields: [email_sha256, phone_sha256]}
          - {type: tiktok, advertiser_id: "7000000001", segment_id: "s1"}
    """,
    )
    monkeypatch.setenv(AUDIENCES_DIR_ENV, str(tmp_path))
    db = airflow_conn(pg_database)
    monkeypatch.setenv("AIRFLOW_CONN_DATA_OUT_STATE", db)
    monkeypatch.setenv("AIRFLOW_CONN_LEAK_DB", db)
    with serve(["meta", "google_ads", "google", "webhook", "tiktok"]) as running:
        for name, r in running.items():
            creds = dict(CREDENTIALS[name])
            if name == "tiktok":
                creds["password"] = "expired-token"  # this destination fails fatally
            extra = {**creds.pop("extra", {}), "backoff_initial": 0.01, "max_attempts": 2}
            conn = {"conn_type": f"data_out_{name}", "host": r.url, "extra": extra, **creds}
            monkeypatch.setenv(f"AIRFLOW_CONN_DATA_OUT_{name.upper()}", json.dumps(conn))
        dag = DagBag(dag_folder=str(DAGS)).get_dag("audience__leak_probe_v1")
        dr = dag.test(run_conf={"as_of": "2026-11-01T00:00:00+00:00"})
        payloads = [b.decode("utf-8", "replace") for r in running.values() for b in r.standin.payloads]

    assert str(dr.state) == "failed"  # tiktok failed; the others synced
    assert len(running["meta"].standin.audiences["123"]) > 0
    assert len(running["google"].standin.lists[("1234567890", "9")]) > 0

    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        xcoms = [
            str(x.value)
            for x in session.scalars(
                select(XComModel).where(XComModel.dag_id == "audience__leak_probe_v1", XComModel.run_id == dr.run_id)
            )
        ]
    assert xcoms, "expected XCom values to scan"

    state_text = []
    with engine.connect() as conn:
        for table in inspect(engine).get_table_names():
            if table.startswith("do_") or table.startswith("audience_"):
                state_text += [str(tuple(row)) for row in conn.execute(text(f'SELECT * FROM "{table}"'))]
    out, err = capfd.readouterr()
    haystacks = {
        "logs": caplog.text + out + err,
        "xcom": "\n".join(xcoms),
        "state": "\n".join(state_text),
        "payloads": "\n".join(payloads),
    }
    with engine.connect() as conn:  # positive control: the scan does find the values where they are
        source = "\n".join(str(tuple(r)) for r in conn.execute(text("SELECT * FROM people")))
    assert {n for n in needles(rows) if n.lower() in source.lower()}
    found = {where: sorted(n for n in needles(rows) if n.lower() in hay.lower()) for where, hay in haystacks.items()}
    assert found == {"logs": [], "xcom": [], "state": [], "payloads": []}
    assert "expired-token" not in haystacks["logs"] + haystacks["state"]
    assert "tiktok" in haystacks["state"] and "refused" in haystacks["state"]  # the failure was recorded
