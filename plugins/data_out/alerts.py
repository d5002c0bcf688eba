"""Alert emails: breaches of a reconciliation run and failed syncs, in HTML and plain text.

A breach is announced once, when it opens; while it continues it is only listed under "still open" in
emails that go out for something new; when it closes its recovery is announced. One email per
reconciliation run and recipient list (audience recipients, else the default), readable on a phone.
Email goes through the SMTP provider's hook (``hooks.smtp``) with the Airflow SMTP connection's settings
(host, port, login, password, ``from_email``, ``disable_tls``, ``disable_ssl``, ``timeout``, ``retry_limit``).
"""

from __future__ import annotations

import html
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage

from sqlalchemy import Engine, Table, delete, insert, select
from sqlalchemy.sql.elements import ColumnElement

from data_out import state
from data_out.connections import ConnectionInfo
from data_out.reconcile import ALL, ReconResult

log = logging.getLogger(__name__)

DEFAULT_RECIPIENTS_ENV = "DATA_OUT_ALERT_RECIPIENTS"
NEW, CONTINUING, RECOVERED, REPAIRED = "new", "continuing", "recovered", "repaired"
_SPARK = "▁▂▃▄▅▆▇█"


@dataclass
class AlertItem:
    kind: str
    audience: str
    destination: str
    check: str
    value: float | None
    threshold: float
    detail: str
    history: list[float | None] = field(default_factory=list)


@dataclass
class Email:
    recipients: list[str]
    subject: str
    text: str
    html: str


def default_recipients() -> list[str]:
    return [r.strip() for r in os.environ.get(DEFAULT_RECIPIENTS_ENV, "data-team@example.com").split(",") if r.strip()]


def sparkline(values: Sequence[float | None]) -> str:
    nums = [v for v in values if v is not None]
    if not nums:
        return ""
    lo, hi = min(nums), max(nums)
    span = (hi - lo) or 1
    return "".join(" " if v is None else _SPARK[int((v - lo) / span * (len(_SPARK) - 1))] for v in values)


def transition(engine: Engine, result: ReconResult) -> list[AlertItem]:
    """Compare this run's findings with the open breaches; returns what changed (and what stays open)."""
    a = state.alert_state
    items: list[AlertItem] = []
    now = state.utcnow()
    with engine.begin() as conn:
        open_now = {(r.audience, r.destination, r.check) for r in conn.execute(select(a).where(a.c.open.is_(True)))}
        seen = set()
        for f in result.findings:
            key = (f.audience, f.destination, f.result.check)
            seen.add(key)
            was_open = key in open_now
            if f.result.breached:
                kind = CONTINUING if was_open else NEW
                if not was_open:
                    conn.execute(
                        delete(a).where(a.c.audience == key[0], a.c.destination == key[1], a.c.check == key[2])
                    )
                    conn.execute(
                        insert(a).values(audience=key[0], destination=key[1], check=key[2], open=True, since=now)
                    )
            elif was_open or f.repaired:
                kind = REPAIRED if f.repaired else RECOVERED
                conn.execute(delete(a).where(*_key(a, key)))
            else:
                continue
            items.append(
                AlertItem(
                    kind, f.audience, f.destination, f.result.check, f.result.value, f.result.threshold, f.result.detail
                )
            )
    _attach_history(engine, items)
    return items


def _key(a: Table, key: tuple[str, str, str]) -> list[ColumnElement[bool]]:
    return [a.c.audience == key[0], a.c.destination == key[1], a.c.check == key[2]]


def _attach_history(engine: Engine, items: list[AlertItem], days: int = 7) -> None:
    r = state.recon
    with engine.connect() as conn:
        for item in items:
            rows = (
                conn.execute(
                    select(r.c.value)
                    .where(r.c.audience == item.audience, r.c.destination == item.destination, r.c.check == item.check)
                    .order_by(r.c.id.desc())
                    .limit(days)
                )
                .scalars()
                .all()
            )
            item.history = list(reversed(rows))


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else (f"{v:.4g}")


def build_emails(items: list[AlertItem], recipients_for: dict[str, list[str]], recon_id: int) -> list[Email]:
    """One email per recipient list, only when something is new, recovered or repaired."""
    groups: dict[tuple[str, ...], list[AlertItem]] = {}
    for item in items:
        who = tuple(sorted(recipients_for.get(item.audience) or default_recipients()))
        groups.setdefault(who, []).append(item)
    emails = []
    for who, group in groups.items():
        news = [i for i in group if i.kind != CONTINUING]
        if not news:
            continue
        new, repaired, recovered = (sum(i.kind == k for i in group) for k in (NEW, REPAIRED, RECOVERED))
        subject = (
            f"[Data Out] reconciliation #{recon_id}: {new} new breach{'es' * (new != 1)}, "
            f"{repaired} repaired, {recovered} recovered"
        )
        emails.append(Email(list(who), subject, *_render(group, recon_id)))
    return emails


_TITLES = {NEW: "New breaches", REPAIRED: "Detected and repaired", RECOVERED: "Recovered", CONTINUING: "Still open"}
_NEXT = {
    NEW: "Check the destination and the audience's recent runs (state tables do_run and do_sync); a gap "
    "the repair could not close needs a look at the vendor's UI.",
    REPAIRED: "The destination was rebuilt from the warehouse by a full resync; nothing to do unless it recurs.",
    RECOVERED: "Nothing to do.",
    CONTINUING: "Already announced; listed for context.",
}


def _render(items: list[AlertItem], recon_id: int) -> tuple[str, str]:
    text_parts = [f"Data Out reconciliation #{recon_id}", ""]
    html_parts = [f"<h2 style='font-family:sans-serif;font-size:18px'>Data Out reconciliation #{recon_id}</h2>"]
    for kind in (NEW, REPAIRED, RECOVERED, CONTINUING):
        group = [i for i in items if i.kind == kind]
        if not group:
            continue
        text_parts += [f"{_TITLES[kind]} ({len(group)})", _NEXT[kind], ""]
        html_parts.append(
            f"<h3 style='font-family:sans-serif;font-size:16px'>{_TITLES[kind]} ({len(group)})</h3>"
            f"<p style='font-family:sans-serif;font-size:14px'>{html.escape(_NEXT[kind])}</p>"
        )
        for i in group:
            where = i.audience if i.destination == ALL else f"{i.audience} / {i.destination}"
            trend = sparkline(i.history)
            last7 = ", ".join(_fmt(v) for v in i.history)
            text_parts += [
                f"- {where}: {i.check} = {_fmt(i.value)} (threshold {_fmt(i.threshold)})",
                f"  {i.detail}",
                f"  last 7: {last7}  {trend}",
                "",
            ]
            html_parts.append(
                "<div style='font-family:sans-serif;font-size:14px;border-left:4px solid "
                f"{'#d93025' if kind == NEW else '#188038'};padding:4px 8px;margin:8px 0'>"
                f"<b>{html.escape(where)}</b><br>{html.escape(i.check)} = <b>{_fmt(i.value)}</b> "
                f"(threshold {_fmt(i.threshold)})<br><span style='color:#555'>{html.escape(i.detail)}</span><br>"
                f"last 7: {html.escape(last7)} <span style='font-size:18px'>{trend}</span></div>"
            )
    return "\n".join(text_parts), "<html><body>" + "".join(html_parts) + "</body></html>"


def failure_email(audience: str, task: str, reason: str, next_step: str, recipients: list[str]) -> Email:
    subject = f"[Data Out] sync failed: {audience} ({task})"
    text = f"The sync of {audience} failed in task {task}.\n\nReason: {reason}\n\nNext step: {next_step}\n"
    body = (
        f"<html><body style='font-family:sans-serif;font-size:14px'><h3>Sync failed: {html.escape(audience)}"
        f"</h3><p>Task: {html.escape(task)}</p><p><b>Reason:</b> {html.escape(reason)}</p>"
        f"<p><b>Next step:</b> {html.escape(next_step)}</p></body></html>"
    )
    return Email(recipients or default_recipients(), subject, text, body)


def send(conn: ConnectionInfo, email: Email) -> None:
    """Send through an SMTP connection with the provider's ``SmtpHook``; the sender is extra ``from_email``."""
    from data_out.hooks.smtp import DataOutSmtpHook  # Airflow's face: imported when an email goes out

    msg = EmailMessage()
    msg["Subject"] = email.subject
    msg["From"] = str(conn.extra.get("from_email") or conn.login or "data-out@localhost")
    msg["To"] = ", ".join(email.recipients)
    msg.set_content(email.text)
    msg.add_alternative(email.html, subtype="html")
    hook = DataOutSmtpHook(connection=conn)
    with hook:  # SmtpHook.__enter__ is typed as returning the base hook
        hook.send_message(msg)
