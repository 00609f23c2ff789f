"""Local stand-ins for the outside world: an SMTP sink and a webhook receiver.

Both run in the caller's event loop, keep what they receive in memory (and, given a
folder, on disk) and count it. The webhook receiver checks every delivery's Standard
Webhooks signature with its own implementation, so the demo proves the signing
interoperates rather than agreeing with itself.

``python -m billnotify.demo.sinks`` runs both on their default ports (SMTP 8025,
webhooks 9000) for the repository's ``config.toml``; the webhook secret comes from
``$BILLNOTIFY_WEBHOOK_SECRET``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import email
import email.policy
import hashlib
import hmac
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session

logger = logging.getLogger(__name__)

TOLERANCE_SECONDS = 300
"""How far a ``webhook-timestamp`` may be from now (Standard Webhooks' default)."""


@dataclass(frozen=True)
class ReceivedEmail:
    """One message accepted by the SMTP sink."""

    mail_from: str
    recipients: tuple[str, ...]
    subject: str
    received_at: float


@dataclass(frozen=True)
class ReceivedWebhook:
    """One request received by the webhook sink."""

    path: str
    webhook_id: str
    valid: bool
    """Whether the signature and timestamp checked out."""
    reason: str
    """Why not, when not valid."""
    summary: str
    """The CloudEvent's type and subject, or the start of the body."""
    received_at: float


# -- SMTP ------------------------------------------------------------------------------


class SmtpSink:
    """An SMTP server that accepts every message.

    Args:
        host: the address to listen on.
        port: the port (0 picks a free one; see :attr:`port` once started).
        folder: where to save each message as ``.eml`` (not saved when None).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, folder: Path | None = None) -> None:
        self.host = host
        self.port = port
        self.folder = folder
        self.received: list[ReceivedEmail] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen; :attr:`port` is the bound port afterwards."""
        loop = asyncio.get_running_loop()
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
        # hostname given: aiosmtpd's default is a reverse DNS lookup, slow on some hosts
        self._server = await loop.create_server(
            lambda: SMTP(self, hostname="billnotify-demo", loop=loop), self.host, self.port
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        logger.info("SMTP sink listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        """Stop listening (idempotent)."""
        if self._server is not None:
            server, self._server = self._server, None
            server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await server.wait_closed()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """aiosmtpd hook: keep the message and accept it."""
        raw = envelope.original_content or envelope.content or b""
        data = raw if isinstance(raw, bytes) else raw.encode("utf-8")
        message = email.message_from_bytes(data, policy=email.policy.default)
        subject = str(message.get("Subject", ""))
        received = ReceivedEmail(
            mail_from=str(envelope.mail_from or ""),
            recipients=tuple(envelope.rcpt_tos),
            subject=subject,
            received_at=time.time(),
        )
        self.received.append(received)
        if self.folder is not None:
            (self.folder / f"{len(self.received):05d}.eml").write_bytes(data)
        logger.info("email to %s: %s", ", ".join(received.recipients), subject)
        return "250 Message accepted for delivery"


# -- webhooks --------------------------------------------------------------------------


def verify_signature(
    secret: str, headers: Any, body: bytes, *, now: float | None = None
) -> tuple[bool, str]:
    """Check Standard Webhooks headers against ``secret``.

    Args:
        secret: ``whsec_`` + base64 key (any other string is used as UTF-8 bytes).
        headers: the request headers (a case-insensitive mapping).
        body: the raw request body.
        now: the current Unix time (defaults to the clock).

    Returns:
        ``(True, "")`` when one of the ``v1`` signatures matches and the timestamp is
        fresh, else ``(False, reason)``.
    """
    msg_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not (msg_id and stamp and signatures):
        return False, "missing webhook-id, webhook-timestamp or webhook-signature"
    try:
        sent_at = int(stamp)
    except ValueError:
        return False, f"bad webhook-timestamp {stamp!r}"
    current = time.time() if now is None else now
    if abs(current - sent_at) > TOLERANCE_SECONDS:
        return False, f"webhook-timestamp {sent_at} is too far from now"
    if secret.startswith("whsec_"):
        try:
            key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except (binascii.Error, ValueError):
            return False, "the receiver's secret is not valid base64"
    else:
        key = secret.encode("utf-8")
    signed = msg_id.encode() + b"." + stamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return True, ""
    return False, "no matching v1 signature"


def _summary(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body[:60].decode("utf-8", "replace")
    if isinstance(data, dict) and "type" in data and "subject" in data:
        return f"{data['type']} {data['subject']}"
    if isinstance(data, dict) and isinstance(data.get("text"), str):
        return str(data["text"])[:80]
    return json.dumps(data)[:60]


class WebhookSink:
    """An HTTP receiver that verifies signatures and records every request.

    Answers 204 to a valid delivery and 401 to one whose signature does not check
    out (billnotify then retries it, which shows in the deliveries).

    Args:
        secret: the endpoints' ``whsec_`` secret.
        host: the address to listen on.
        port: the port (0 picks a free one; see :attr:`port` once started).
        folder: where to save each body as JSON (not saved when None).
        clock: Unix time, for the timestamp tolerance.
    """

    def __init__(
        self,
        secret: str,
        host: str = "127.0.0.1",
        port: int = 0,
        folder: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.secret = secret
        self.host = host
        self.port = port
        self.folder = folder
        self.clock = clock
        self.received: list[ReceivedWebhook] = []
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` of the running receiver."""
        return f"http://{self.host}:{self.port}"

    @property
    def valid(self) -> int:
        """How many received requests had a valid signature."""
        return sum(1 for r in self.received if r.valid)

    async def start(self) -> None:
        """Listen; :attr:`port` is the bound port afterwards."""
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._receive)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        logger.info("webhook sink listening on %s", self.base_url)

    async def stop(self) -> None:
        """Stop listening (idempotent)."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        valid, reason = verify_signature(self.secret, request.headers, body, now=self.clock())
        received = ReceivedWebhook(
            path=request.path,
            webhook_id=request.headers.get("webhook-id", ""),
            valid=valid,
            reason=reason,
            summary=_summary(body),
            received_at=time.time(),
        )
        self.received.append(received)
        if self.folder is not None:
            (self.folder / f"{len(self.received):05d}.json").write_bytes(body)
        if not valid:
            logger.warning("webhook %s rejected: %s", received.webhook_id or "?", reason)
            return web.Response(status=401, text=reason)
        logger.info("webhook %s on %s: %s", received.webhook_id, request.path, received.summary)
        return web.Response(status=204)


# -- standalone ------------------------------------------------------------------------


async def serve_sinks(host: str, smtp_port: int, webhook_port: int, secret: str) -> None:
    """Run both sinks until SIGINT/SIGTERM, logging what arrives."""
    smtp = SmtpSink(host, smtp_port)
    hooks = WebhookSink(secret, host, webhook_port)
    await smtp.start()
    await hooks.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"SMTP sink on {host}:{smtp.port}, webhook receiver on {hooks.base_url}/ (Ctrl-C to stop)",
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        await hooks.stop()
        await smtp.stop()
    print(f"received {len(smtp.received)} email(s), {len(hooks.received)} webhook(s)")


def main(argv: list[str] | None = None) -> int:
    """``python -m billnotify.demo.sinks``: the sinks the example ``config.toml`` uses."""
    parser = argparse.ArgumentParser(
        prog="python -m billnotify.demo.sinks",
        description="An SMTP sink and a webhook receiver that verifies signatures.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--smtp-port", type=int, default=8025)
    parser.add_argument("--webhook-port", type=int, default=9000)
    parser.add_argument(
        "--secret",
        default=os.environ.get("BILLNOTIFY_WEBHOOK_SECRET"),
        help="whsec_ secret (default: $BILLNOTIFY_WEBHOOK_SECRET)",
    )
    args = parser.parse_args(argv)
    if not args.secret:
        parser.error("no secret: set BILLNOTIFY_WEBHOOK_SECRET or pass --secret")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    asyncio.run(serve_sinks(args.host, args.smtp_port, args.webhook_port, args.secret))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
