"""A small pool of open SMTP connections (aiosmtplib), and the one SMTP transaction.

The transaction is driven command by command (``MAIL``, ``RCPT``..., ``DATA``) so that a
failure is known to have happened before or after the message went out:

- refused with a reply code: 4xx retryable, 5xx permanent (:class:`RejectedError`), as
  RFC 5321 §4.2.1 reads them, on connect (a ``421`` greeting) as on any command;
- recipients refused one by one: any transient (4xx) refusal defers the whole message
  (no ``DATA``; the envelope is reset and the delivery retried), so that no recipient
  gets it twice and none is dropped; permanently refused ones (5xx) while others are
  accepted are recorded with the message that went to the others;
- no answer before ``DATA`` (connection refused, dropped, timed out): nothing was sent
  (:class:`SendFailedError` with ``sent=False``);
- no answer to ``DATA`` (the final reply never came): the server may have accepted the
  message (``sent=True``; UNCERTAIN for customer-facing emails).

Connections are kept open between messages and replaced when they fail; one found
closed when reused (the server hung up while it was idle) is reopened once, since no
command of the transaction reached the server. A connection can be taken ahead of the
send (:meth:`SmtpPool.lease`), so that a customer email is recorded ``sending`` only
once its connection is in hand, not while it queues for one.

AUTH never goes over an unencrypted connection unless ``allow_plaintext_auth`` says so:
the password would cross the network in clear text. No aiosmtplib exception leaves here.
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


class Lease:
    """One of the pool's connections, open and reserved for one message.

    :meth:`SmtpPool.send` uses it and gives it back; :meth:`release` gives it back unused
    (idempotent, so a caller may always call it).

    Attributes:
        smtp: the connection (None once given back or closed).
        reused: it was open before (a server may have dropped it while idle).
    """

    def __init__(self, pool: SmtpPool, smtp: aiosmtplib.SMTP, *, reused: bool) -> None:
        self.smtp: aiosmtplib.SMTP | None = smtp
        self.reused = reused
        self._pool: SmtpPool | None = pool

    def release(self) -> None:
        """Give the connection back to the pool (kept open when it still is)."""
        pool, self._pool = self._pool, None
        smtp, self.smtp = self.smtp, None
        if pool is None:
            return
        if smtp is not None and smtp.is_connected:
            pool._idle.append((smtp, pool._clock()))
        pool._slots.release()


class SmtpPool:
    """Up to ``size`` SMTP connections to the configured server.

    Args:
        config: the ``[smtp]`` table.
        size: connections open at most (also the number of concurrent sends);
            ``max_connections`` by default.
        max_idle: seconds a connection may sit unused before it is replaced rather
            than reused (servers drop idle clients; NAT tables forget them silently).
        clock: monotonic clock for idle times.
    """

    def __init__(
        self,
        config: SmtpConfig,
        *,
        size: int | None = None,
        max_idle: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.size = size or config.max_connections
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []
        self._slots = asyncio.Semaphore(self.size)
        self._max_idle = max_idle
        self._clock = clock
        self._local_hostname: str | None = None

    async def lease(self) -> Lease:
        """Wait for a free connection slot and an open connection (idle, or new).

        Raises:
            RejectedError: the server refused the session (a ``421`` greeting, AUTH).
            SendFailedError: the server could not be reached (``sent`` is False).
        """
        await self._slots.acquire()
        try:
            smtp = self._take_idle()
            if smtp is not None:
                return Lease(self, smtp, reused=True)
            return Lease(self, await self._connect(), reused=False)
        except BaseException:
            self._slots.release()
            raise

    async def send(
        self,
        sender: str,
        recipients: Sequence[str],
        message: bytes,
        *,
        utf8: bool = False,
        lease: Lease | None = None,
    ) -> SendReport:
        """Send one message, on ``lease`` if given (then given back), else on a
        connection taken here.

        Raises:
            RejectedError: the server refused it (reply code inside).
            SendFailedError: no answer; ``sent`` says whether DATA had gone out.
        """
        if lease is None:
            lease = await self.lease()
        try:
            return await self._send_on(lease, sender, recipients, message, utf8)
        finally:
            lease.release()

    async def _send_on(
        self, lease: Lease, sender: str, recipients: Sequence[str], message: bytes, utf8: bool
    ) -> SendReport:
        smtp = lease.smtp
        if smtp is None:
            raise SendFailedError("SMTP connection already given back", sent=False)
        try:
            try:
                return await _transaction(smtp, sender, recipients, message, utf8, lease.reused)
            except _Stale:
                logger.info("SMTP connection to %s went stale; reconnecting", self.config.host)
                smtp.close()
                smtp = lease.smtp = await self._connect()
                return await _transaction(smtp, sender, recipients, message, utf8, False)
        except RejectedError:
            if smtp.is_connected:
                await _reset_or_close(smtp)
            raise
        except BaseException:
            smtp.close()  # its state is unknown (a timeout, a cancellation)
            raise

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
        if cfg.plaintext_auth and not cfg.allow_plaintext_auth:
            raise RejectedError(
                f"SMTP {cfg.host}:{cfg.port}: refusing to send the password over an "
                "unencrypted connection (tls and starttls are both false); set starttls = "
                "true or tls = true in [smtp], or allow_plaintext_auth = true to accept it",
                code=None,
                protocol="smtp",
            )
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


def check_smtp(config: SmtpConfig | None) -> list[str]:
    """Problems ``billnotify check`` reports about ``[smtp]``, each with its TOML path."""
    if config is None or not config.plaintext_auth or config.allow_plaintext_auth:
        return []
    return [
        "smtp.password: SMTP AUTH over an unencrypted connection (tls and starttls are "
        "both false) would send the password in clear text, so emails would fail; set "
        "starttls = true (port 587) or tls = true (port 465), or allow_plaintext_auth = "
        "true if the network to the server is trusted"
    ]


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
    detail = "; ".join(f"{r}: {e.code} {_text(e)}" for r, e in refused.items())
    deferred = [e.code for e in refused.values() if e.code < 500]
    if deferred:
        # a recipient may accept later: send to nobody now rather than resend to the
        # others then (the caller resets the envelope; the delivery is retried)
        raise RejectedError(
            f"recipient(s) deferred, message not sent ({detail})",
            code=deferred[0],
            protocol="smtp",
        )
    if len(refused) == len(recipients):
        code = next(iter(refused.values())).code
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
