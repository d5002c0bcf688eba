"""A real SMTP server on loopback (aiosmtpd) that keeps every message it receives: the demo and tests.

Given a directory (``make airflow``), it also writes each message there as one ``.eml`` file, named by
arrival time and subject, so a person reads the captured alerts with any mail reader or text editor.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import re
import socket
from email.message import EmailMessage
from pathlib import Path

from aiosmtpd.controller import Controller


class _Collect:
    def __init__(self, directory: Path | None = None) -> None:
        self.messages: list[EmailMessage] = []
        self.directory = directory

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        msg = email.message_from_bytes(envelope.content, _class=EmailMessage, policy=email.policy.default)
        msg["X-Envelope-To"] = ", ".join(envelope.rcpt_tos)
        self.messages.append(msg)
        if self.directory is not None:
            self._write(self.directory, msg, envelope.content)
        return "250 OK"

    def _write(self, directory: Path, msg: email.message.Message, raw: bytes) -> None:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        subject = re.sub(r"[^A-Za-z0-9]+", "-", str(msg["Subject"] or "no-subject")).strip("-")[:80]
        path = directory / f"{stamp}-{len(self.messages):04d}-{subject}.eml"
        path.write_bytes(raw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SmtpSink:
    """``directory``: also write every message there, one ``.eml`` file each."""

    def __init__(self, directory: Path | None = None) -> None:
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
        self.handler = _Collect(directory)
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=free_port())

    @property
    def messages(self) -> list[EmailMessage]:
        return self.handler.messages

    @property
    def port(self) -> int:
        return self.controller.port

    def connection_json(self) -> dict:
        return {
            "conn_type": "smtp",
            "host": "127.0.0.1",
            "port": self.port,
            "extra": {"disable_ssl": True, "disable_tls": True, "from_email": "data-out@example.com"},
        }

    def __enter__(self) -> SmtpSink:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


def bodies(msg: EmailMessage) -> tuple[str, str]:
    """(plain text, html) of a message."""
    text = msg.get_body(preferencelist=("plain",))
    html = msg.get_body(preferencelist=("html",))
    return (text.get_content() if text else ""), (html.get_content() if html else "")
