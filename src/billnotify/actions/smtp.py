"""A small pool of open SMTP connections (aiosmtplib), and the one SMTP transaction.

The transaction is driven command by command (``MAIL``, ``RCPT``..., ``DATA``) so that a
failure is known to have happened before or after the message went out:

- refused with a reply code: 4xx retryable, 5xx permanent (:class:`RejectedError`);
- no answer before ``DATA`` (connection refused, dropped, timed out): nothing was sent
  (:class:`SendFailedError` with ``sent=False``);
- no answer to ``DATA`` (the final reply never came): the server may have accepted the
  message (``sent=True``; UNCERTAIN for customer-facing emails).

Connections are kept open between messages and replaced when they fail; one found
closed when reused (the server hung up while it was idle) is reopened once, since no
command of the transaction reached the server. No aiosmtplib exception leaves here.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiosmtplib

from billnotify.actions.base import RejectedError, SendFailedError
from billnotify.config.models import SmtpConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SendReport:
    """What the server said to an accepted message.

    Attributes:
        code: the final reply code (250).
        message: the final reply text (often a queue id).
        refused: recipients refused while others were accepted -> reply.
    """

    code: int
    message: str
    refused: dict[str, str] = field(default_factory=dict)


class _Stale(Exception):
    """A reused connection turned out closed before anything was sent."""


class SmtpPool:
    """Up to ``size`` SMTP connections to the configured server.

    Args:
        config: the ``[smtp]`` table.
        size: connections open at most (also the number of concurrent sends).
        max_idle: seconds a connection may sit unused before it is replaced rather
            than reused (servers drop idle clients; NAT tables forget them silently).
        clock: monotonic clock for idle times.
    """

    def __init__(
        self,
        config: SmtpConfig,
        *,
        size: int = 4,
        max_idle: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []
        self._slots = asyncio.Semaphore(size)
        self._max_idle = max_idle
        self._clock = clock
        self._local_hostname: str | None = None

    async def send(
        self, sender: str, recipients: Sequence[str], message: bytes, *, utf8: bool = False
    ) -> SendReport:
        """Send one message.

        Raises:
            RejectedError: the server refused it (reply code inside).
            SendFailedError: no answer; ``sent`` says whether DATA had gone out.
        """
        async with self._slots:
            smtp = self._take_idle()
            reused = smtp is not None
            if smtp is None:
                smtp = await self._connect()
            try:
                try:
                    report = await _transaction(smtp, sender, recipients, message, utf8, reused)
                except _Stale:
                    logger.info("SMTP connection to %s went stale; reconnecting", self.config.host)
                    smtp.close()
                    smtp = await self._connect()
                    report = await _transaction(smtp, sender, recipients, message, utf8, False)
            except RejectedError:
                if smtp.is_connected:
                    await _reset_or_close(smtp)
                if smtp.is_connected:
                    self._idle.append((smtp, self._clock()))
                raise
            except BaseException:
                smtp.close()  # its state is unknown (a timeout, a cancellation)
                raise
            self._idle.append((smtp, self._clock()))
            return report

    def _take_idle(self) -> aiosmtplib.SMTP | None:
        now = self._clock()
        while self._idle:
            smtp, since = self._idle.pop()
            if smtp.is_connected and now - since <= self._max_idle:
                return smtp
            smtp.close()
        return None

    async def check(self) -> None:
        """Open (and close) one connection: ``billnotify check --connect``.

        Raises:
            RejectedError, SendFailedError: as :meth:`send`.
        """
        smtp = await self._connect()
        try:
            await smtp.quit()
        except (aiosmtplib.SMTPException, OSError):
            smtp.close()

    async def close(self) -> None:
        """Close every idle connection (politely, with QUIT)."""
        idle, self._idle = self._idle, []
        for smtp, _since in idle:
            try:
                await asyncio.wait_for(smtp.quit(), 2.0)
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                smtp.close()

    async def _connect(self) -> aiosmtplib.SMTP:
        cfg = self.config
        if self._local_hostname is None:
            self._local_hostname = await asyncio.to_thread(socket.getfqdn)
        smtp = aiosmtplib.SMTP(
            hostname=cfg.host,
            port=cfg.port,
            username=cfg.username if cfg.username and cfg.password else None,
            password=cfg.password.reveal() if cfg.username and cfg.password else None,
            use_tls=cfg.tls,
            start_tls=False if cfg.tls else cfg.starttls,
            validate_certs=cfg.validate_certs,
            cert_bundle=cfg.ca_file,
            timeout=cfg.timeout.total_seconds(),
            local_hostname=self._local_hostname,
        )
        where = f"{cfg.host}:{cfg.port}"
        try:
            await smtp.connect()
        except aiosmtplib.SMTPResponseException as exc:
            raise RejectedError(
                f"SMTP {where} refused the session: {exc.code} {_text(exc)}",
                code=exc.code,
                protocol="smtp",
            ) from None
        except aiosmtplib.SMTPNotSupported as exc:
            raise RejectedError(f"SMTP {where}: {_text(exc)}", code=None, protocol="smtp") from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            untrusted = _certificate_error(exc)
            if untrusted is not None:  # retrying will not make the certificate valid
                raise RejectedError(
                    f"SMTP {where}: TLS certificate not trusted: {untrusted.verify_message}",
                    code=None,
                    protocol="smtp",
                ) from None
            raise SendFailedError(
                f"cannot connect to SMTP {where}: {_text(exc)}", sent=False
            ) from None
        return smtp


async def _transaction(
    smtp: aiosmtplib.SMTP,
    sender: str,
    recipients: Sequence[str],
    message: bytes,
    utf8: bool,
    reused: bool,
) -> SendReport:
    options = ["SMTPUTF8"] if utf8 else []
    encoding = "utf-8" if utf8 else "ascii"
    if utf8 and not smtp.supports_extension("smtputf8"):
        raise RejectedError(
            "an address needs SMTPUTF8, which the server does not offer", code=None, protocol="smtp"
        )
    if smtp.supports_extension("size"):
        options.append(f"SIZE={len(message)}")
    try:
        await smtp.mail(sender, options=options, encoding=encoding)
    except aiosmtplib.SMTPResponseException as exc:
        if reused and exc.code == 421:
            raise _Stale from None
        raise RejectedError(
            f"sender {sender} refused: {exc.code} {_text(exc)}", code=exc.code, protocol="smtp"
        ) from None
    except (aiosmtplib.SMTPServerDisconnected, ConnectionError) as exc:
        if reused:
            raise _Stale from None
        raise SendFailedError(f"SMTP connection lost at MAIL: {_text(exc)}", sent=False) from None
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        raise SendFailedError(f"SMTP MAIL failed: {_text(exc)}", sent=False) from None

    refused: dict[str, aiosmtplib.SMTPRecipientRefused] = {}
    for recipient in recipients:
        try:
            await smtp.rcpt(recipient, encoding=encoding)
        except aiosmtplib.SMTPRecipientRefused as exc:
            refused[recipient] = exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise SendFailedError(f"SMTP RCPT failed: {_text(exc)}", sent=False) from None
    if len(refused) == len(recipients):
        codes = [exc.code for exc in refused.values()]
        code = next((c for c in codes if c >= 500), codes[0])
        detail = "; ".join(f"{r}: {e.code} {_text(e)}" for r, e in refused.items())
        raise RejectedError(f"all recipients refused ({detail})", code=code, protocol="smtp")

    try:
        response = await smtp.data(message)
    except aiosmtplib.SMTPDataError as exc:
        raise RejectedError(
            f"message refused: {exc.code} {_text(exc)}", code=exc.code, protocol="smtp"
        ) from None
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        # the message may have been accepted: the final reply is what never came
        raise SendFailedError(f"no reply to DATA: {_text(exc)}", sent=True) from None
    return SendReport(
        code=response.code,
        message=response.message,
        refused={r: f"{e.code} {_text(e)}" for r, e in refused.items()},
    )


async def _reset_or_close(smtp: aiosmtplib.SMTP) -> None:
    # after a refusal the envelope must be reset before the connection is reused
    try:
        await smtp.rset()
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        smtp.close()


def _certificate_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    current: BaseException | None = exc
    for _ in range(5):
        if current is None:
            return None
        if isinstance(current, ssl.SSLCertVerificationError):
            return current
        current = current.__cause__ or current.__context__
    return None


def _text(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return " ".join(str(message).split())[:300]
