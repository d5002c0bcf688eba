"""Alert emails go through the SMTP provider's hook to a real SMTP server (aiosmtpd on loopback)."""

from __future__ import annotations

from data_out import alerts
from data_out.connections import ConnectionInfo
from data_out.hooks.smtp import DataOutSmtpHook
from sandbox.smtp_sink import SmtpSink, bodies


def _conn(port: int, **extra: object) -> ConnectionInfo:
    return ConnectionInfo(
        "smtp_alerts",
        "smtp",
        host="127.0.0.1",
        port=port,
        extra={"disable_ssl": True, "disable_tls": True, "from_email": "alerts@example.com", **extra},
    )


def test_an_alert_arrives_with_its_text_and_html_parts():
    email = alerts.failure_email("a_v1", "push", "the vendor refused", "renew the token", ["team@example.com"])
    with SmtpSink() as sink:
        alerts.send(_conn(sink.port), email)
    (msg,) = sink.messages
    text, html = bodies(msg)
    assert msg["From"] == "alerts@example.com" and msg["X-Envelope-To"] == "team@example.com"
    assert "Next step: renew the token" in text and "<b>Next step:</b> renew the token" in html


def test_the_hook_tests_the_connection_as_the_provider_does():
    """``SmtpHook.test_connection`` (Airflow's "Test" button) on a connection handed in as plain data."""
    with SmtpSink() as sink:
        ok, message = DataOutSmtpHook(connection=_conn(sink.port)).test_connection()
    assert ok, message
    ok, message = DataOutSmtpHook(connection=_conn(sink.port, timeout=2)).test_connection()  # the sink is gone
    assert not ok
