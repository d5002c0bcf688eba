"""Alert and failure emails through the SMTP provider's ``SmtpHook``.

The hook owns the connection: host and port, SSL (``disable_ssl``), STARTTLS (``disable_tls``),
``ssl_context``, login or OAuth2 (``auth_type``), ``timeout`` and ``retry_limit``, read as the provider
documents them. Data Out sends its own message through the hook's client because
``SmtpHook.send_email_smtp`` builds HTML-only mail, and alerts carry a plain-text part too (what phone
previews and text-only inboxes show).
"""

from __future__ import annotations

import json
import smtplib
from email.message import EmailMessage
from typing import Any

from airflow.providers.smtp.hooks.smtp import SmtpHook
from airflow.sdk import Connection

from data_out.connections import ConnectionInfo


class DataOutSmtpHook(SmtpHook):
    """``SmtpHook`` that can be handed a ``ConnectionInfo`` (no Airflow look-up) and sends an ``EmailMessage``."""

    def __init__(
        self, smtp_conn_id: str = SmtpHook.default_conn_name, *, connection: ConnectionInfo | None = None, **kw: Any
    ) -> None:
        super().__init__(smtp_conn_id=connection.conn_id if connection else smtp_conn_id, **kw)
        self._info = connection

    def get_connection(self, conn_id: str) -> Connection:  # type: ignore[override]  # a classmethod in BaseHook
        info = self._info
        if info is None:
            return super().get_connection(conn_id)
        return Connection(
            conn_id=info.conn_id,
            conn_type=info.conn_type or "smtp",
            host=info.host,
            port=info.port,
            login=info.login,
            password=info.password,
            extra=json.dumps(dict(info.extra)) if info.extra else None,
        )

    def send_message(self, msg: EmailMessage) -> None:
        """Send ``msg`` to its To/Cc/Bcc, retried up to the connection's ``retry_limit`` as ``SmtpHook`` does."""
        client = self._open_client()
        for attempt in range(self.smtp_retry_limit + 1):
            try:
                client.send_message(msg)
                return
            except smtplib.SMTPServerDisconnected:
                if attempt == self.smtp_retry_limit:
                    raise
                self._smtp_client = None  # reconnect: get_conn opens a new client
                client = self._open_client()

    def _open_client(self) -> smtplib.SMTP:
        """The hook's client, opened by ``get_conn`` (which raises when it cannot connect or log in)."""
        self.get_conn()
        client = self._smtp_client
        if not isinstance(client, smtplib.SMTP):  # SMTP_SSL is one too
            raise RuntimeError("the SMTP client did not open")
        return client
