"""Emails rendered from templates and sent over SMTP (SPEC §4 ``email``).

``template = "task_failed"`` renders ``task_failed.subject.j2`` and ``task_failed.txt.j2``
(required) and ``task_failed.html.j2`` (optional; the message is then
multipart/alternative). Recipients may be Jinja strings. Every header value is checked:
a line break anywhere (CR, LF, or any other separator such as U+2028), or an address
that does not parse, is a permanent failure, so a record's field can never inject a
header and a value the email package refuses is never retried. The ``Message-ID`` derives from the delivery
id, the same on every attempt, so a receiving system can spot a repeat.

Attachments: ``invoice_pdf`` (the event's invoice, from its billing platform) and
``billing_documents`` (every ``BE`` + 8 digits document id in the event's billing data,
from its property billing source).

A customer email (exactly-once) is prepared before its attempt is recorded ``sending``
(:meth:`EmailExecutor.prepare`): rendered, its attachments fetched, its message built and
an SMTP connection in hand, so that a crash leaves ``uncertain`` only a message that was
leaving, never one still waiting for a connection.

Parsing header values is most of what building a message costs, so the values that
repeat from one message to the next (the sender, recipients, the rule, the ``Date`` of
the current second) are parsed once and their header objects reused.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from email import policy
from email.headerregistry import Address, BaseHeader
from email.message import EmailMessage
from email.utils import formatdate, getaddresses
from typing import Any

from billnotify.actions.base import (
    DocumentClient,
    InvalidMessageError,
    InvoiceClient,
    NotApplicableError,
    Rendered,
    failure,
)
from billnotify.actions.smtp import Lease, SmtpPool
from billnotify.config.models import Action, EmailAction, Rule, SmtpConfig
from billnotify.deliveries.base import AttemptResult, Outcome
from billnotify.events import CloudEvent
from billnotify.templating import TemplateRenderer, build_context
from billnotify.values import record_id

logger = logging.getLogger(__name__)

DOCUMENT_ID = re.compile(r"^BE\d{8}$")
"""A property billing document reference (seed 003)."""

_CACHED = 1024
"""Parsed addresses and header values kept for reuse, at most (then forgotten at once)."""


@dataclass
class Composed:
    """An email ready to send (attachments aside)."""

    sender: Address
    to: list[Address]
    cc: list[Address]
    bcc: list[Address]
    reply_to: list[Address]
    subject: str
    text: str
    html: str | None
    attachments: list[str] = field(default_factory=list)
    """Names of the attachments that will be fetched."""

    @property
    def recipients(self) -> list[str]:
        """Envelope recipients: To, Cc and Bcc, each once."""
        return list(dict.fromkeys(a.addr_spec for a in (*self.to, *self.cc, *self.bcc)))

    @property
    def needs_utf8(self) -> bool:
        """Whether an address is not ASCII (SMTPUTF8 is needed)."""
        addresses = [self.sender.addr_spec, *self.recipients]
        return not all(a.isascii() for a in addresses)


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
        self._smtp = smtp
        self._pool = SmtpPool(smtp, size=pool_size) if smtp is not None else None
        self._templates = templates
        self._billing = billing_clients or {}
        self._property = property_clients or {}
        self._clock = clock
        self._addresses_of: dict[tuple[str, str], list[Address]] = {}
        self._headers = _HeaderCache()
        self._html: dict[str, bool] = {}
        """Template -> whether its HTML part exists (templates are read once, at start)."""
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
            return ", ".join(str(a) for a in self._addresses(action.to, "to", context))
        except Exception:
            return ", ".join(action.to)

    async def render(self, action: Action, event: CloudEvent, rule: Rule) -> Rendered:
        """The message an attempt would send (attachments by name only)."""
        email = _email(action)
        composed = self.compose(email, event, rule)
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
        composed = self.compose(email, event, rule)
        files = await self._fetch_attachments(email, event)
        message = self.build_message(
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

    # -- composing -----------------------------------------------------------------------

    def compose(self, action: EmailAction, event: CloudEvent, rule: Rule) -> Composed:
        """Render and validate everything but the attachments' content.

        Raises:
            TemplateError: a template failed.
            InvalidMessageError: an unsafe header value or an invalid address.
        """
        if self._smtp is None:
            raise NotApplicableError("no [smtp] server is configured")
        context = build_context(event, rule)
        sender = self._parse(self._smtp.from_, "from")
        if len(sender) != 1:
            raise InvalidMessageError(f"[smtp] from must be one address, not {self._smtp.from_!r}")
        to = self._addresses(action.to, "to", context)
        if not to:
            raise InvalidMessageError("no recipient: every 'to' rendered empty")
        reply_to = self._addresses(
            [action.reply_to] if action.reply_to else [], "reply_to", context
        )
        templates = self._templates
        subject = templates.render_file(f"{action.template}.subject.j2", context).strip()
        _check_header("subject", subject)
        html_name = f"{action.template}.html.j2"
        html = self._html.get(html_name)
        if html is None:
            html = self._html[html_name] = templates.exists(html_name)
        return Composed(
            sender=sender[0],
            to=to,
            cc=self._addresses(action.cc, "cc", context),
            bcc=self._addresses(action.bcc, "bcc", context),
            reply_to=reply_to,
            subject=subject,
            text=templates.render_file(f"{action.template}.txt.j2", context),
            html=templates.render_file(html_name, context) if html else None,
            attachments=self._attachment_names(action, event),
        )

    def build_message(
        self,
        composed: Composed,
        files: Iterable[tuple[str, bytes]],
        *,
        delivery_id: str,
        event: CloudEvent,
        rule: Rule,
    ) -> EmailMessage:
        """The MIME message: text (+ HTML alternative) (+ PDF attachments)."""
        header = self._headers.get
        message = EmailMessage()
        message["From"] = header("From", [composed.sender])
        message["To"] = header("To", composed.to)
        if composed.cc:
            message["Cc"] = header("Cc", composed.cc)
        if composed.reply_to:
            message["Reply-To"] = header("Reply-To", composed.reply_to)
        message["Subject"] = composed.subject
        message["Date"] = header("Date", formatdate(self._clock(), usegmt=True))
        message["Message-ID"] = f"<{delivery_id}@{composed.sender.domain or 'billnotify'}>"
        message["Auto-Submitted"] = header("Auto-Submitted", "auto-generated")
        message["X-Billnotify-Event"] = event.id
        message["X-Billnotify-Rule"] = header("X-Billnotify-Rule", rule.name)
        message.set_content(composed.text)
        if composed.html is not None:
            message.add_alternative(composed.html, subtype="html")
        for name, content in files:
            message.add_attachment(content, maintype="application", subtype="pdf", filename=name)
        return message

    def _addresses(
        self, values: Iterable[str], field_name: str, context: Mapping[str, Any]
    ) -> list[Address]:
        addresses: list[Address] = []
        for value in values:
            rendered = self._templates.render_string(value, context, label=f"{field_name} address")
            addresses.extend(self._parse(rendered.strip(), field_name))
        return addresses

    def _parse(self, value: str, field_name: str) -> list[Address]:
        """:func:`_parse`, remembered (recipients mostly repeat)."""
        key = (value, field_name)
        found = self._addresses_of.get(key)
        if found is None:
            found = _parse(value, field_name)  # raises before anything is kept
            if len(self._addresses_of) >= _CACHED:
                self._addresses_of.clear()
            self._addresses_of[key] = found
        return list(found)

    # -- attachments ---------------------------------------------------------------------

    def _attachment_names(self, action: EmailAction, event: CloudEvent) -> list[str]:
        names: list[str] = []
        for kind in action.attach:
            if kind == "invoice_pdf":
                names.append(_invoice_file_name(event))
            else:
                found = document_ids(event.data)
                names.extend(f"{doc}.pdf" for doc in found)
                if not found:
                    names.append(f"(the documents of billing {event.object_id})")
        return names

    async def _fetch_attachments(
        self, action: EmailAction, event: CloudEvent
    ) -> list[tuple[str, bytes]]:
        files: list[tuple[str, bytes]] = []
        for kind in action.attach:
            if kind == "invoice_pdf":
                if event.entity != "invoice":
                    raise NotApplicableError(
                        f"invoice_pdf needs an invoice event, not {event.type}"
                    )
                client = self._billing.get(event.source_name)
                if client is None:
                    raise NotApplicableError(f"no billing_platform source {event.source_name!r}")
                invoice = record_id(event.data.get("object") or {}) or event.object_id
                files.append((_invoice_file_name(event), await client.get_invoice_pdf(invoice)))
            else:
                files.extend(await self._fetch_documents(event))
        return files

    async def _fetch_documents(self, event: CloudEvent) -> list[tuple[str, bytes]]:
        client = self._property.get(event.source_name)
        if client is None:
            raise NotApplicableError(f"no property_billing source {event.source_name!r}")
        found = document_ids(event.data)
        if not found and event.entity == "billing_header":
            found = document_ids(await client.billing(event.object_id))
        if not found:
            raise NotApplicableError(f"no billing documents found for {event.subject}")
        return [(f"{doc}.pdf", await client.billing_document(doc)) for doc in found]


class _HeaderCache:
    """Header objects of values that repeat, parsed once and shared by messages.

    A header object is immutable; assigning one to a message stores it as it is, where a
    plain value would be parsed again for every message.
    """

    def __init__(self, limit: int = _CACHED) -> None:
        self._limit = limit
        self._made: dict[tuple[str, str], BaseHeader] = {}

    def get(self, name: str, value: str | list[Address]) -> BaseHeader:
        """The header object for ``name: value``."""
        text = value if isinstance(value, str) else ", ".join(str(a) for a in value)
        made = self._made.get((name, text))
        if made is None:
            made = policy.default.header_factory(name, value)
            if len(self._made) >= self._limit:
                self._made.clear()
            self._made[(name, text)] = made
        return made


def document_ids(data: Any) -> list[str]:
    """Every ``BE`` + 8 digits reference in ``data`` (``previous`` values skipped), in order."""
    found: dict[str, None] = {}

    def walk(value: Any) -> None:
        if isinstance(value, str):
            if DOCUMENT_ID.match(value):
                found[value] = None
        elif isinstance(value, Mapping):
            for key, item in value.items():
                if key != "previous":
                    walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    walk(data)
    return list(found)


def _invoice_file_name(event: CloudEvent) -> str:
    record = event.data.get("object") or {}
    label = str(record.get("invoiceNumber") or record_id(record) or event.object_id)
    return "invoice-" + re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-") + ".pdf"


def _email(action: Action) -> EmailAction:
    if not isinstance(action, EmailAction):
        raise NotApplicableError(f"not an email action: {action.type}")
    return action


_LINE_BREAK = re.compile("[\x00\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
"""NUL and every character :meth:`str.splitlines` breaks at: none may reach a header
(CR/LF would inject one; the email package refuses the others, every time)."""


def _check_header(name: str, value: str) -> None:
    if _LINE_BREAK.search(value):
        raise InvalidMessageError(
            f"{name} contains a line break: refusing to send ({value[:80]!r})"
        )


def _parse(value: str, field_name: str) -> list[Address]:
    """Addresses in a header value (``a@x``, ``Name <a@x>``, comma-separated lists)."""
    _check_header(field_name, value)
    if not value:
        return []
    addresses: list[Address] = []
    for name, spec in getaddresses([value]):
        try:
            if not spec or "@" not in spec or spec.startswith("@") or spec.endswith("@"):
                raise ValueError("not an addr-spec")
            address = Address(display_name=name, addr_spec=spec)
        except Exception:
            raise InvalidMessageError(f"{field_name}: invalid email address {value!r}") from None
        addresses.append(address)
    return addresses
