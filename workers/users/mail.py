"""Outgoing mail for sign-in codes: SMTP (the real service, any provider), or in development a
`console` backend that writes each message as an .eml file under MAIL_DIR. A code is never
written to a log line, whichever backend."""

from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
import time
import uuid
from email.message import EmailMessage
from pathlib import Path

from contracts.observability import log_fields
from contracts.settings import Settings

log = logging.getLogger("users.mail")


class MailError(Exception):
    """The message could not be handed to the mail service."""


class Mailer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.backend = settings.effective_mail_backend
        if self.backend == "smtp" and not settings.smtp_host:
            log.warning("SMTP_HOST is not set: sign-in codes cannot be mailed (e-mail second factor unavailable)")

    def _message(self, to: str, subject: str, body: str) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.settings.mail_from
        msg["To"] = to
        msg["Subject"] = subject
        msg["Message-ID"] = f"<{uuid.uuid4()}@imaging>"
        msg.set_content(body)
        return msg

    async def send(self, to: str, subject: str, body: str) -> None:
        message = self._message(to, subject, body)
        try:
            if self.backend == "console":
                await asyncio.to_thread(self._write_file, message)
            else:
                await asyncio.wait_for(asyncio.to_thread(self._smtp, message), 20)
        except (OSError, smtplib.SMTPException, TimeoutError) as exc:
            log.warning("mail delivery failed", extra=log_fields(backend=self.backend, error=type(exc).__name__))
            raise MailError(str(type(exc).__name__)) from exc

    def _write_file(self, message: EmailMessage) -> None:
        folder = Path(self.settings.mail_dir)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.eml"
        path.write_bytes(bytes(message))
        log.info("mail written (console backend)", extra=log_fields(path=str(path)))

    def _smtp(self, message: EmailMessage) -> None:
        s = self.settings
        if not s.smtp_host:
            raise OSError("SMTP_HOST is not set")
        with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=15) as smtp:
            smtp.ehlo()
            if s.smtp_starttls == "always" or (s.smtp_starttls == "auto" and smtp.has_extn("starttls")):
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if s.smtp_user:
                smtp.login(s.smtp_user, s.smtp_password)
            smtp.send_message(message)


def mask_email(email: str) -> str:
    """`maria.nguyen@hospital.org` → `m***n@hospital.org`."""
    local, _, domain = email.partition("@")
    shown = local[0] + "***" + (local[-1] if len(local) > 2 else "")
    return f"{shown}@{domain}"
