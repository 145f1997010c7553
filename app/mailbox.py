"""The embedded local mail server of `clarion up`: aiosmtpd storing every message in a Maildir."""

from __future__ import annotations

import mailbox
from dataclasses import dataclass
from email import message_from_bytes, policy
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


class MaildirHandler:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.maildir = mailbox.Maildir(path, create=True)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        msg = mailbox.MaildirMessage(data)
        msg["X-Envelope-To"] = ", ".join(envelope.rcpt_tos)
        self.maildir.add(msg)
        return "250 OK: stored"


def start_mail_server(path: Path, host: str = "127.0.0.1", port: int = 8025) -> Controller:
    controller = Controller(MaildirHandler(path), hostname=host, port=port, ready_timeout=10)
    controller.start()
    return controller


@dataclass(frozen=True)
class StoredMail:
    key: str
    to: str
    subject: str
    date: str
    message_id: str


def list_mail(path: Path) -> list[StoredMail]:
    if not path.exists():
        return []
    box = mailbox.Maildir(path, create=False)
    out = []
    for key in box.iterkeys():
        with box.get_file(key) as fh:
            msg = message_from_bytes(fh.read(), policy=policy.default)
        out.append(StoredMail(key=key, to=str(msg.get("To", "")), subject=str(msg.get("Subject", "")),
                              date=str(msg.get("Date", "")), message_id=str(msg.get("Message-ID", ""))))
    return sorted(out, key=lambda m: m.key)
