"""The eight invoice actions of seed 002 (``POST invoices/ID?action=...``).

Actions have side effects (an email goes out), so they are never retried automatically on
5xx, timeouts or dropped connections: the action may have been performed, and only the
caller knows whether repeating it is acceptable. They are retried on ``429`` and when the
connection could not be opened, where nothing reached the server.

Any 2xx counts as performed: a success body that cannot be decoded is logged and returned
as an empty dict rather than raised, so a caller never mistakes a sent email for a failed one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from billnotify.clients.billing_models import ActionResult, DownloadLink, Invoice
from billnotify.clients.codec import segment, single_record
from billnotify.clients.http import JsonTransport
from billnotify.config import invoice_params
from billnotify.config.types import INVOICE_ACTIONS
from billnotify.errors import ActionFailedError, MalformedResponseError

logger = logging.getLogger(__name__)

ACTIONS = INVOICE_ACTIONS
"""Every action documented in seed 002."""

EXPIRY_HOURS = frozenset(invoice_params.EXPIRY_HOURS)
"""Accepted ``expiryHours`` of ``generateDownloadLink``."""
MAX_USES = invoice_params.MAX_USES
"""Largest accepted ``maxUses`` of ``generateDownloadLink``."""


def _emails(value: Sequence[str] | str | None) -> list[str] | str | None:
    # the platform also accepts comma/semicolon-separated strings: pass those through
    if value is None or isinstance(value, str):
        return value
    return list(value)


class InvoiceActions:
    """Invoice actions; mixed into :class:`BillingPlatformClient`."""

    transport: JsonTransport

    async def invoice_action(
        self, invoice_id: int | str, action: str, params: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Perform ``action`` on an invoice and return the decoded response.

        ``params`` go in the JSON body (no body when empty, as in the docs' examples).

        Raises:
            ActionError: a documented ``error_code`` (typed per code, e.g.
                :class:`~billnotify.errors.InvalidEmailError`), or ``success: false``.
            TransportError: the outcome is unknown (the action may have been performed).
        """
        body = {k: v for k, v in (params or {}).items() if v is not None}
        resp = await self.transport.request(
            "POST",
            f"invoices/{segment(invoice_id)}",
            params={"action": action},
            json_body=body or None,
            headers={"Accept": "application/json"},
            retry=False,
        )
        if not resp.body.strip():
            return {}
        try:
            data = single_record(resp.json(), resp.url)
        except MalformedResponseError as exc:
            logger.warning("invoice action %s succeeded with an odd body: %s", action, exc)
            return {}
        if data.get("success") is False or str(data.get("success")).lower() == "false":
            message = str(data.get("message") or data.get("error") or f"{action} failed")
            raise ActionFailedError(message, status=resp.status, url=resp.url)
        return data

    async def email_invoice(
        self,
        invoice_id: int | str,
        *,
        email: Sequence[str] | str | None = None,
        bill_style: str | None = None,
        message: str | None = None,
        attachments: Sequence[str] | None = None,
        invoice_usage_report_customer_profile_id: str | None = None,
    ) -> ActionResult:
        """Email an approved invoice (to the customer's addresses unless ``email``).

        Args:
            invoice_id: the invoice.
            email: recipients (a list, or a comma/semicolon-separated string).
            bill_style: invoice format to attach, e.g. ``"Full"``.
            message: email message template name.
            attachments: names of extra documents.
            invoice_usage_report_customer_profile_id: usage report profile name.
        """
        params = {
            "email": _emails(email),
            "billStyle": bill_style,
            "message": message,
            "attachments": None if attachments is None else list(attachments),
            "invoiceUsageReportCustomerProfileID": invoice_usage_report_customer_profile_id,
        }
        return ActionResult.from_raw(await self.invoice_action(invoice_id, "email", params))

    async def email_cdrs(
        self, invoice_id: int | str, *, email: Sequence[str] | str | None = None
    ) -> ActionResult:
        """Email an approved invoice's CDR files."""
        params = {"email": _emails(email)}
        return ActionResult.from_raw(await self.invoice_action(invoice_id, "emailCdrs", params))

    async def recreate_invoice(self, invoice_id: int | str) -> Invoice:
        """Regenerate the invoice outputs (PDF)."""
        return Invoice.from_raw(await self.invoice_action(invoice_id, "recreate"))

    async def update_call_transactions(self, invoice_id: int | str) -> Invoice:
        """Update the call transactions of an unsent invoice."""
        return Invoice.from_raw(await self.invoice_action(invoice_id, "updateCallTransactions"))

    async def reapply_discount_plans(self, invoice_id: int | str) -> Invoice:
        """Recalculate and reapply discount plan allowances."""
        return Invoice.from_raw(await self.invoice_action(invoice_id, "reapplyDiscountPlans"))

    async def generate_download_link(
        self,
        invoice_id: int | str,
        *,
        expiry_hours: int | None = None,
        max_uses: int | None = None,
    ) -> DownloadLink:
        """Create a time-limited download link for an approved invoice.

        Args:
            invoice_id: the invoice.
            expiry_hours: one of 1, 6, 24, 72, 168, 336, 720 (platform default 168).
            max_uses: 1 or 2 (platform default 1).

        Raises:
            ValueError: a value the platform would refuse.
        """
        if expiry_hours is not None and expiry_hours not in EXPIRY_HOURS:
            allowed = ", ".join(str(h) for h in sorted(EXPIRY_HOURS))
            raise ValueError(f"expiry_hours must be one of {allowed}, not {expiry_hours!r}")
        if max_uses is not None and not 1 <= max_uses <= MAX_USES:
            raise ValueError(f"max_uses must be between 1 and {MAX_USES}, not {max_uses!r}")
        params = {"expiryHours": expiry_hours, "maxUses": max_uses}
        raw = await self.invoice_action(invoice_id, "generateDownloadLink", params)
        return DownloadLink.from_raw(raw)

    async def link_to_xero(self, invoice_id: int | str, xero_id: UUID | str) -> Invoice:
        """Link an invoice to a Xero invoice.

        Raises:
            ValueError: ``xero_id`` is not a UUID.
        """
        try:
            xero = xero_id if isinstance(xero_id, UUID) else UUID(str(xero_id))
        except ValueError:
            raise ValueError(f"xero_id must be a UUID, not {xero_id!r}") from None
        raw = await self.invoice_action(invoice_id, "linkToXero", {"xeroID": str(xero)})
        return Invoice.from_raw(raw)

    async def unlink_from_xero(self, invoice_id: int | str) -> Invoice:
        """Remove the link between an invoice and Xero."""
        return Invoice.from_raw(await self.invoice_action(invoice_id, "unlinkFromXero"))
