"""Emails rendered from templates and sent over SMTP (SPEC §4 ``email``).

``template = "task_failed"`` renders ``task_failed.subject.j2`` and ``task_failed.txt.j2``
(required) and ``task_failed.html.j2`` (optional; the message is then
multipart/alternative). Recipients may be Jinja strings. The message is composed and
checked by :class:`~billnotify.actions.message.MessageComposer`, its PDF attachments
fetched by :class:`~billnotify.actions.attachments.AttachmentFetcher`, and sent through
:class:`~billnotify.actions.smtp.SmtpPool`.

A customer email (exactly-once) is prepared before its attempt is recorded ``sending``
(:meth:`EmailExecutor.prepare`): rendered, its attachments fetched, its message built and
an SMTP connection in hand, so that a crash leaves ``uncertain`` only a message that was
leaving, never one still waiting for a connection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email import policy
from typing import Any

from billnotify.actions.attachments import AttachmentFetcher
from billnotify.actions.base import (
    DocumentClient,
    InvoiceClient,
    NotApplicableError,
    Rendered,
    failure,
)
from billnotify.actions.message import Composed, MessageComposer
from billnotify.actions.smtp import Lease, SmtpPool
from billnotify.config.models import Action, EmailAction, Rule, SmtpConfig
from billnotify.deliveries.base import AttemptResult, Outcome
from billnotify.events import CloudEvent
from billnotify.templating import TemplateRenderer, build_context

logger = logging.getLogger(__name__)


@dataclass
class _Ready:
    """A message built and its connection in hand, waiting for its attempt."""

    sender: str
    recipients: list[str]
    data: bytes
    utf8: bool
    message_id: str
    lease: Lease


@dataclass
class _Prepared:
    """What :meth:`EmailExecutor.prepare` left for the attempt: a message ready to
    leave, or the failure that stopped it (returned by ``execute`` without I/O)."""

    ready: _Ready | None = None
    failed: AttemptResult | None = None


class _Permit:
    """The executor's side of a prepared attempt, for the worker to give back."""

    def __init__(self, prepared: dict[str, _Prepared], delivery_id: str) -> None:
        self._prepared = prepared
        self._delivery_id = delivery_id

    def release(self) -> None:
        """Give the connection back if the attempt did not use it."""
        left = self._prepared.pop(self._delivery_id, None)
        if left is not None and left.ready is not None:
            left.ready.lease.release()


class EmailExecutor:
    """Sends ``email`` actions through the ``[smtp]`` server.

    Args:
        smtp: the ``[smtp]`` table (None: emails fail permanently, "not configured").
        templates: renders subjects, bodies and recipients.
        billing_clients: billing platform clients by source name (``invoice_pdf``).
        property_clients: property billing clients by source name (``billing_documents``).
        clock: wall clock in Unix seconds (the ``Date`` header).
        pool_size: SMTP connections kept open (and concurrent sends); ``[smtp]
            max_connections`` by default.
    """

    action_type = "email"

    def __init__(
        self,
        smtp: SmtpConfig | None,
        templates: TemplateRenderer,
        *,
        billing_clients: Mapping[str, InvoiceClient] | None = None,
        property_clients: Mapping[str, DocumentClient] | None = None,
        clock: Callable[[], float] = time.time,
        pool_size: int | None = None,
    ) -> None:
        self._pool = SmtpPool(smtp, size=pool_size) if smtp is not None else None
        self._messages = MessageComposer(
            smtp.from_ if smtp is not None else None, templates, clock=clock
        )
        self._attachments = AttachmentFetcher(billing_clients, property_clients)
        self._prepared: dict[str, _Prepared] = {}
        """Delivery id -> what :meth:`prepare` left for its attempt."""

    # -- the executor interface --------------------------------------------------------

    def exactly_once(self, action: Action) -> bool:
        """Customer emails are never sent twice, unless flagged ``at_least_once``."""
        return not (isinstance(action, EmailAction) and action.at_least_once)

    def target(self, action: Action, event: CloudEvent) -> str:
        """The recipients (rendered when possible)."""
        if not isinstance(action, EmailAction):
            return ""
        try:
            context = build_context(event)
            return ", ".join(str(a) for a in self._messages.addresses(action.to, "to", context))
        except Exception:
            return ", ".join(action.to)

    async def render(self, action: Action, event: CloudEvent, rule: Rule) -> Rendered:
        """The message an attempt would send (attachments by name only)."""
        email = _email(action)
        composed = self._messages.compose(email, event, rule)
        summary = {
            "from": str(composed.sender),
            "to": [str(a) for a in composed.to],
            "cc": [str(a) for a in composed.cc],
            "bcc": [str(a) for a in composed.bcc],
            "reply_to": [str(a) for a in composed.reply_to],
            "subject": composed.subject,
            "text": composed.text,
            "html": composed.html,
            "attachments": composed.attachments,
        }
        return Rendered(self.action_type, ", ".join(str(a) for a in composed.to), summary)

    async def prepare(
        self, action: Action, event: CloudEvent, rule: Rule, *, delivery_id: str
    ) -> _Permit:
        """Everything the attempt of ``delivery_id`` needs before its message can leave:
        render, fetch the attachments, build the message, take an SMTP connection.

        The :meth:`execute` of that delivery that follows sends on the connection at
        once (or returns the failure met here). Never raises but for cancellation.
        """
        permit = _Permit(self._prepared, delivery_id)
        try:
            sender, recipients, data, utf8, message_id = await self._build(
                action, event, rule, delivery_id
            )
        except Exception as exc:  # nothing has been sent
            self._prepared[delivery_id] = _Prepared(failed=failure(exc))
            return permit
        assert self._pool is not None
        try:
            lease = await self._pool.lease()
        except Exception as exc:  # the server refused the session or was not reached
            self._prepared[delivery_id] = _Prepared(failed=failure(exc, protocol="smtp"))
            return permit
        ready = _Ready(sender, recipients, data, utf8, message_id, lease)
        self._prepared[delivery_id] = _Prepared(ready=ready)
        return permit

    async def execute(
        self, action: Action, event: CloudEvent, rule: Rule, *, delivery_id: str, attempt: int
    ) -> AttemptResult:
        """Send once what :meth:`prepare` made ready, or else compose, fetch
        attachments and send; failures are returned."""
        prepared = self._prepared.pop(delivery_id, None)
        if prepared is not None and prepared.failed is not None:
            return prepared.failed
        ready = prepared.ready if prepared is not None else None
        if ready is None:
            try:
                sender, recipients, data, utf8, message_id = await self._build(
                    action, event, rule, delivery_id
                )
            except Exception as exc:  # nothing has been sent yet
                return failure(exc)
        else:
            sender, recipients, data, utf8 = ready.sender, ready.recipients, ready.data, ready.utf8
            message_id = ready.message_id
        assert self._pool is not None
        try:
            report = await self._pool.send(
                sender, recipients, data, utf8=utf8, lease=ready.lease if ready else None
            )
        except Exception as exc:
            return failure(exc, protocol="smtp", exactly_once=self.exactly_once(action))
        logger.info(
            "email %s (attempt %d) accepted for %d recipient(s): %s",
            delivery_id,
            attempt,
            len(recipients) - len(report.refused),
            report.message,
        )
        response: dict[str, Any] = {"reply": report.message, "message_id": message_id}
        if report.refused:
            response["refused"] = report.refused
        return AttemptResult(Outcome.SUCCESS, status_code=report.code, response=response)

    async def _build(
        self, action: Action, event: CloudEvent, rule: Rule, delivery_id: str
    ) -> tuple[str, list[str], bytes, bool, str]:
        """(sender, recipients, message bytes, needs SMTPUTF8, Message-ID).

        Raises:
            NotApplicableError, TemplateError, InvalidMessageError, SourceError: as
            :meth:`compose` and the attachments' downloads.
        """
        email = _email(action)
        if self._pool is None:
            raise NotApplicableError("no [smtp] server is configured")
        composed = self._messages.compose(email, event, rule)
        files = await self._attachments.fetch(email, event)
        message = self._messages.build(
            composed, files, delivery_id=delivery_id, event=event, rule=rule
        )
        utf8 = composed.needs_utf8
        data = message.as_bytes(policy=policy.SMTPUTF8 if utf8 else policy.SMTP)
        return composed.sender.addr_spec, composed.recipients, data, utf8, message["Message-ID"]

    async def close(self) -> None:
        """Close the SMTP connections."""
        if self._pool is not None:
            await self._pool.close()

    async def check(self) -> None:
        """Connect to the SMTP server once (``billnotify check --connect``).

        Raises:
            NotApplicableError: no ``[smtp]``.
            RejectedError, SendFailedError: the server refused or could not be reached.
        """
        if self._pool is None:
            raise NotApplicableError("no [smtp] server is configured")
        await self._pool.check()

    def compose(self, action: EmailAction, event: CloudEvent, rule: Rule) -> Composed:
        """Render and validate everything but the attachments' content
        (:meth:`MessageComposer.compose`)."""
        return self._messages.compose(action, event, rule)


def _email(action: Action) -> EmailAction:
    if not isinstance(action, EmailAction):
        raise NotApplicableError(f"not an email action: {action.type}")
    return action
