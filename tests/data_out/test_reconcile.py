"""Reconciliation end to end: drift behind the product's back is detected, alerted and repaired.

Real HTTP to the Meta stand-in, real SMTP to an aiosmtpd server on loopback, SQLite state.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from data_out import alerts, state
from data_out.config import load_audiences
from data_out.connections import ConnectionInfo, engine_for
from data_out.engine.runner import AudienceRunner
from data_out.reconcile import ALL, Reconciler
from data_out.state import ensure_schema
from sandbox.smtp_sink import SmtpSink, bodies
from sandbox.standins.base import Running
from sandbox.standins.meta import MetaStandIn
from tests.conftest import People, write_audience

NOW = dt.datetime(2026, 11, 2, 6, tzinfo=dt.UTC)
AUD = "recon_test_v1"


class World:
    def __init__(self, tmp: Path, meta_url: str, standin: MetaStandIn, repair: bool) -> None:
        self.tmp = tmp
        self.standin = standin
        self.db = ConnectionInfo("db", "sqlite", host=str(tmp / "db.sqlite"))
        self.meta = ConnectionInfo(
            "data_out_meta",
            "data_out_meta",
            host=meta_url,
            password="meta-test-token",
            extra={"backoff_initial": 0.01, "max_attempts": 3},
        )
        self.engine = engine_for(self.db)
        ensure_schema(self.engine)
        self.people = People(self.engine)
        self.people.set([{"customer_id": f"c{i:03d}", "email": f"p{i}@example.com"} for i in range(60)])
        write_audience(
            tmp / "aud",
            AUD,
            f"""
            name: {AUD}
            owner: tests
            purpose: reconciliation under test
            source: {{conn_id: db, query: "SELECT customer_id, email, phone FROM people WHERE in_audience = 1"}}
            holdout: {{percent: 10, salt: recon-salt}}
            destinations:
              - type: meta
                audience_id: "777"
                drift: {{repair: {str(repair).lower()}}}
            drift: {{max_gap_pct: 5}}
            alerts: {{recipients: [owner@example.com]}}
        """,
        )

    def resolve(self, conn_id: str) -> ConnectionInfo:
        return {"db": self.db, "data_out_meta": self.meta}[conn_id]

    def audiences(self):  # type: ignore[no-untyped-def]
        return load_audiences(self.tmp / "aud")

    def sync(self, holder: str, mode: str = "incremental") -> None:
        AudienceRunner(self.engine, self.audiences(), AUD, self.resolve).run(holder, NOW, mode=mode)

    def reconcile(self, at: dt.datetime = NOW):  # type: ignore[no-untyped-def]
        return Reconciler(self.engine, self.audiences(), self.resolve, at).run(dag_run_id="test")

    def lose(self, n: int) -> None:
        with self.standin.lock:
            members = self.standin.audiences["777"]
            for row in sorted(members)[:n]:
                members.discard(row)

    def size(self) -> int:
        return len(self.standin.audiences["777"])

    def notify(self, result, sink: SmtpSink) -> list:  # type: ignore[no-untyped-def]
        items = alerts.transition(self.engine, result)
        recipients = {n: a.config.alerts.recipients for n, a in self.audiences().audiences.items()}
        emails = alerts.build_emails(items, recipients, result.recon_id)
        smtp = ConnectionInfo(
            "smtp",
            "smtp",
            host="127.0.0.1",
            port=sink.port,
            extra={"disable_ssl": True, "disable_tls": True, "from_email": "data-out@example.com"},
        )
        for e in emails:
            alerts.send(smtp, e)
        return emails


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as s:
        yield s


def world(tmp_path: Path, repair: bool) -> Iterator[World]:
    standin = MetaStandIn()
    with Running(standin) as running:
        yield World(tmp_path, running.url, standin, repair)


@pytest.fixture
def repairing(tmp_path: Path) -> Iterator[World]:
    yield from world(tmp_path, repair=True)


@pytest.fixture
def alerting_only(tmp_path: Path) -> Iterator[World]:
    yield from world(tmp_path, repair=False)


def gap(result) -> object:  # type: ignore[no-untyped-def]
    return next(f for f in result.findings if f.destination == "meta" and f.result.check == "destination_gap_pct")


def test_members_lost_behind_our_back_are_detected_alerted_and_repaired(repairing: World, sink: SmtpSink):
    w = repairing
    w.sync("t/1")
    full = w.size()
    w.lose(10)
    result = w.reconcile()
    finding = gap(result)
    assert finding.repaired and finding.result.status == "ok"  # measured again after the repair
    assert result.repaired == [(AUD, "meta")]
    assert w.size() == full
    with w.engine.connect() as conn:
        measures = conn.execute(select(state.recon_measure.c.destination_size)).scalars().all()
    assert measures == [full]

    [email] = w.notify(result, sink)
    [msg] = sink.messages
    text, html = bodies(msg)
    assert msg["To"] == "owner@example.com" and msg["X-Envelope-To"] == "owner@example.com"
    assert msg["Subject"].endswith("0 new breaches, 1 repaired, 0 recovered")
    assert f"before repair {10 / full * 100:.4g} (acknowledged {full}, destination reports {full - 10})" in text
    assert "Detected and repaired" in text and f"{AUD} / meta: destination_gap_pct" in text
    assert "Detected and repaired" in html and "<b>recon_test_v1 / meta</b>" in html


def test_a_breach_is_announced_once_and_its_recovery_too(alerting_only: World, sink: SmtpSink):
    w = alerting_only
    w.sync("t/1")
    w.lose(10)

    first = w.reconcile()
    assert gap(first).result.status == "breach" and not gap(first).repaired  # repair is off for this one
    w.notify(first, sink)
    [msg] = sink.messages
    text, html = bodies(msg)
    assert msg["Subject"].endswith("1 new breach, 0 repaired, 0 recovered")
    assert "New breaches (1)" in text
    value = gap(first).result.value
    assert f"destination_gap_pct = {value:.4g} (threshold 5)" in text
    assert "last 7:" in text and "New breaches" in html

    second = w.reconcile(NOW + dt.timedelta(days=1))
    assert gap(second).result.status == "breach"
    assert w.notify(second, sink) == [] and len(sink.messages) == 1  # continuing: not re-sent

    w.sync("t/2", mode="full_resync")  # an engineer repairs it by hand
    third = w.reconcile(NOW + dt.timedelta(days=2))
    assert gap(third).result.status == "ok"
    w.notify(third, sink)
    assert len(sink.messages) == 2
    text, _ = bodies(sink.messages[1])
    assert "Recovered (1)" in text and "0 new breaches, 0 repaired, 1 recovered" in sink.messages[1]["Subject"]


def test_destination_overrides_only_the_fields_it_names(alerting_only: World):
    cfg = alerting_only.audiences().audiences[AUD].config
    d = cfg.drift_for("meta")
    assert d.repair is False and d.max_gap_pct == 5 and d.baseline_runs == cfg.drift.baseline_runs


def test_message_volume_drop_is_a_breach(alerting_only: World):
    w = alerting_only
    rows = [
        {"day": (NOW.date() - dt.timedelta(days=d)).isoformat(), "metric": "opened", "count": 1000} for d in range(2, 7)
    ]
    rows.append({"day": (NOW.date() - dt.timedelta(days=1)).isoformat(), "metric": "opened", "count": 400})
    with w.engine.begin() as conn:
        conn.execute(insert(state.metric_volume), rows)
    result = w.reconcile()
    [vol] = [f for f in result.findings if f.result.check == "volume_opened"]
    assert (vol.audience, vol.destination, vol.result.status, vol.result.value) == (ALL, ALL, "breach", -60.0)


def test_one_failing_audience_does_not_stop_the_others(alerting_only: World, tmp_path: Path):
    w = alerting_only
    w.sync("t/1")
    write_audience(
        tmp_path / "aud",
        "broken_dest_v1",
        """
        name: broken_dest_v1
        owner: tests
        purpose: its connection is missing
        source: {conn_id: db, query: "SELECT customer_id, email FROM people"}
        destinations: [{type: meta, audience_id: "1", conn_id: nowhere}]
    """,
    )
    result = w.reconcile()
    errors = [f for f in result.findings if f.result.check == "reconcile_error"]
    assert [f.audience for f in errors] == ["broken_dest_v1"]
    assert gap(result).result.status == "ok"


def test_a_scheduled_rebuild_runs_when_the_last_one_is_too_old(alerting_only: World):
    w = alerting_only
    path = w.tmp / "aud" / f"{AUD}.yaml"
    path.write_text(
        path.read_text().replace("drift: {max_gap_pct: 5}", "drift: {max_gap_pct: 5, rebuild_every_days: 7}")
    )
    w.sync("t/1")
    first = w.reconcile()
    assert first.repaired == [(AUD, "meta")]  # never rebuilt before: due
    assert w.reconcile(NOW + dt.timedelta(days=1)).repaired == []  # just rebuilt: not due again
