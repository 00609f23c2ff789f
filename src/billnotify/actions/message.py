"""The MIME message of an ``email`` action: composed from templates, checked, built.

Every header value is checked: a line break anywhere (CR, LF, or any other separator
such as U+2028), or an address that does not parse, is a permanent failure, so a
record's field can never inject a header and a value the email package refuses is never
retried. The ``Message-ID`` derives from the delivery id, the same on every attempt, so
a receiving system can spot a repeat.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from email import policy
from email.headerregistry import Address, BaseHeader
from email.message import EmailMessage
from email.utils import formatdate, getaddresses
from typing import Any

from billnotify.actions.attachments import attachment_names
from billnotify.actions.base import InvalidMessageError, NotApplicableError
from billnotify.config.models import EmailAction, Rule
from billnotify.events import CloudEvent
from billnotify.templating import TemplateRenderer, build_context

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


class MessageComposer:
    """Renders, checks and builds the messages of ``email`` actions.

    The sender, recipients, rule and ``Date`` of the current second repeat from one
    message to the next: their parsed addresses and header objects are reused.

    Args:
        sender: ``[smtp] from`` (None: no ``[smtp]``, composing fails "not configured").
        templates: renders subjects, bodies and recipients.
        clock: wall clock in Unix seconds (the ``Date`` header).
    """

    def __init__(
        self,
        sender: str | None,
        templates: TemplateRenderer,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sender = sender
        self._templates = templates
        self._clock = clock
        self._addresses_of: dict[tuple[str, str], list[Address]] = {}
        self._headers = _HeaderCache()
        self._html: dict[str, bool] = {}
        """Template -> whether its HTML part exists (templates are read once, at start)."""

    def addresses(
        self, values: Iterable[str], field_name: str, context: Mapping[str, Any]
    ) -> list[Address]:
        """Render each of ``values`` (Jinja strings) and parse the addresses in it.

        Raises:
            TemplateError: a value failed to render.
            InvalidMessageError: a line break or an invalid address.
        """
        addresses: list[Address] = []
        for value in values:
            rendered = self._templates.render_string(value, context, label=f"{field_name} address")
            addresses.extend(self._parse(rendered.strip(), field_name))
        return addresses

    def compose(self, action: EmailAction, event: CloudEvent, rule: Rule) -> Composed:
        """Render and validate everything but the attachments' content.

        Raises:
            NotApplicableError: no ``[smtp]``.
            TemplateError: a template failed.
            InvalidMessageError: an unsafe header value or an invalid address.
        """
        if self._sender is None:
            raise NotApplicableError("no [smtp] server is configured")
        context = build_context(event, rule)
        sender = self._parse(self._sender, "from")
        if len(sender) != 1:
            raise InvalidMessageError(f"[smtp] from must be one address, not {self._sender!r}")
        to = self.addresses(action.to, "to", context)
        if not to:
            raise InvalidMessageError("no recipient: every 'to' rendered empty")
        reply_to = self.addresses([action.reply_to] if action.reply_to else [], "reply_to", context)
        templates = self._templates
        subject = templates.render_file(f"{action.template}.subject.j2", context).strip()
        check_header("subject", subject)
        html_name = f"{action.template}.html.j2"
        html = self._html.get(html_name)
        if html is None:
            html = self._html[html_name] = templates.exists(html_name)
        return Composed(
            sender=sender[0],
            to=to,
            cc=self.addresses(action.cc, "cc", context),
            bcc=self.addresses(action.bcc, "bcc", context),
            reply_to=reply_to,
            subject=subject,
            text=templates.render_file(f"{action.template}.txt.j2", context),
            html=templates.render_file(html_name, context) if html else None,
            attachments=attachment_names(action, event),
        )

    def build(
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

    def _parse(self, value: str, field_name: str) -> list[Address]:
        """:func:`parse_addresses`, remembered (recipients mostly repeat)."""
        key = (value, field_name)
        found = self._addresses_of.get(key)
        if found is None:
            found = parse_addresses(value, field_name)  # raises before anything is kept
            if len(self._addresses_of) >= _CACHED:
                self._addresses_of.clear()
            self._addresses_of[key] = found
        return list(found)


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


_LINE_BREAK = re.compile("[\x00\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
"""NUL and every character :meth:`str.splitlines` breaks at: none may reach a header
(CR/LF would inject one; the email package refuses the others, every time)."""


def check_header(name: str, value: str) -> None:
    """Refuse a header value with a line break in it.

    Raises:
        InvalidMessageError: ``value`` holds a line break or NUL.
    """
    if _LINE_BREAK.search(value):
        raise InvalidMessageError(
            f"{name} contains a line break: refusing to send ({value[:80]!r})"
        )


def parse_addresses(value: str, field_name: str) -> list[Address]:
    """Addresses in a header value (``a@x``, ``Name <a@x>``, comma-separated lists).

    Raises:
        InvalidMessageError: a line break, or an address that does not parse.
    """
    check_header(field_name, value)
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
