"""The PDF attachments of an ``email`` action (SPEC §4 ``attach``).

``invoice_pdf`` is the event's invoice, from its billing platform; ``billing_documents``
is every ``BE`` + 8 digits document id in the event's billing data, from its property
billing source.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from billnotify.actions.base import DocumentClient, InvoiceClient, NotApplicableError
from billnotify.config.models import EmailAction
from billnotify.events import CloudEvent
from billnotify.values import record_id

DOCUMENT_ID = re.compile(r"^BE\d{8}$")
"""A property billing document reference (seed 003)."""


class AttachmentFetcher:
    """Downloads the attachments an ``email`` action names.

    Args:
        billing_clients: billing platform clients by source name (``invoice_pdf``).
        property_clients: property billing clients by source name (``billing_documents``).
    """

    def __init__(
        self,
        billing_clients: Mapping[str, InvoiceClient] | None = None,
        property_clients: Mapping[str, DocumentClient] | None = None,
    ) -> None:
        self._billing = billing_clients or {}
        self._property = property_clients or {}

    async def fetch(self, action: EmailAction, event: CloudEvent) -> list[tuple[str, bytes]]:
        """(file name, content) of every attachment of ``action``, in order.

        Raises:
            NotApplicableError: the event has no such attachment, or its source is unknown.
            SourceError: a download failed.
        """
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
                files.append((invoice_file_name(event), await client.get_invoice_pdf(invoice)))
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


def attachment_names(action: EmailAction, event: CloudEvent) -> list[str]:
    """The file names of ``action``'s attachments, known without downloading them."""
    names: list[str] = []
    for kind in action.attach:
        if kind == "invoice_pdf":
            names.append(invoice_file_name(event))
        else:
            found = document_ids(event.data)
            names.extend(f"{doc}.pdf" for doc in found)
            if not found:
                names.append(f"(the documents of billing {event.object_id})")
    return names


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


def invoice_file_name(event: CloudEvent) -> str:
    """``invoice-<number>.pdf`` (the invoice number, else its id, made file-name safe)."""
    record = event.data.get("object") or {}
    label = str(record.get("invoiceNumber") or record_id(record) or event.object_id)
    return "invoice-" + re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-") + ".pdf"
