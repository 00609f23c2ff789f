"""Settling ``uncertain`` invoice emails from the platform's own records (SPEC §4.1).

An ``invoice_action`` ``email`` delivery becomes ``uncertain`` when the process died (or
the connection broke) after the request went out but before the answer was recorded.
The platform knows whether the invoice was delivered: the invoice list's
``undelivered`` filter shows only invoices not emailed, downloaded, printed or marked
delivered. So:

- the invoice is no longer undelivered -> the delivery ``succeeded`` ("reconciled:
  delivered"): never send it again;
- it is still undelivered -> back to ``pending``: the email did not go out;
- anything unclear (no invoice number, the invoice is gone, the platform errs) -> it
  stays ``uncertain`` for an operator (``billnotify deliveries resolve``).

A request that is still being processed by the platform when we look would read as
"undelivered"; so only attempts that started at least ``settle_after`` ago (longer than
any request can take) are reconciled.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from billnotify.clients.billing_platform import BillingPlatformClient
from billnotify.config.models import Config, InvoiceActionAction
from billnotify.errors import BillnotifyError, NotFoundError
from billnotify.events import CloudEvent
from billnotify.store.base import Delivery, DeliveryStatus, Store

logger = logging.getLogger(__name__)

NOTE_DELIVERED = "reconciled: delivered"
NOTE_NOT_DELIVERED = "reconciled: not delivered, sending again"


def invoice_email_action(config: Config, delivery: Delivery) -> InvoiceActionAction | None:
    """The ``invoice_action`` ``email`` action behind a delivery, if that is what it is."""
    if delivery.action_type != "invoice_action":
        return None
    for rule in config.rules:
        if rule.name == delivery.rule and delivery.action_index < len(rule.actions):
            action = rule.actions[delivery.action_index]
            if isinstance(action, InvoiceActionAction) and action.action == "email":
                return action
    return None


def default_settle_after(config: Config) -> timedelta:
    """Longer than any request to a billing platform can take: its timeout plus a margin."""
    timeouts = [source.timeout for source in config.sources]
    return max(timeouts, default=timedelta(seconds=30)) + timedelta(seconds=5)


class InvoiceEmailReconciler:
    """Resolves uncertain invoice-email deliveries against the platform.

    Args:
        config: the configuration (rules and sources).
        store: the state store.
        billing_clients: source name -> client of that billing platform.
        clock: returns the current UTC time.
        settle_after: how old an interrupted attempt must be before we trust the
            platform's view of it (default: :func:`default_settle_after`).
    """

    def __init__(
        self,
        config: Config,
        store: Store,
        billing_clients: Mapping[str, BillingPlatformClient],
        clock: Callable[[], datetime],
        settle_after: timedelta | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.billing_clients = billing_clients
        self.clock = clock
        self.settle_after = (
            settle_after if settle_after is not None else default_settle_after(config)
        )
        self.delivered = 0
        """Deliveries found delivered (-> succeeded) since start."""
        self.not_delivered = 0
        """Deliveries found not delivered (-> pending) since start."""

    async def reconcile(self, limit: int = 500) -> int:
        """Look at every uncertain invoice email once; returns how many were settled."""
        if not self.billing_clients:
            return 0
        settled = 0
        for delivery in await self.store.list_deliveries([DeliveryStatus.UNCERTAIN], limit=limit):
            action = invoice_email_action(self.config, delivery)
            if action is None:
                continue
            try:
                settled += await self._reconcile_one(delivery, action)
            except BillnotifyError as exc:
                logger.warning("reconcile %s: %s; will try again", delivery.id, exc)
        return settled

    async def _reconcile_one(self, delivery: Delivery, action: InvoiceActionAction) -> int:
        full = await self.store.get_delivery(delivery.id)
        if full is None or full.status is not DeliveryStatus.UNCERTAIN:
            return 0
        started = full.history[-1].started_at if full.history else full.updated_at
        if self.clock() - started < self.settle_after:
            return 0
        events = await self.store.get_events([delivery.event_id])
        if not events:
            return 0
        event = events[0].event
        client = self.billing_clients.get(action.source or event.source_name)
        if client is None:
            return 0
        delivered = await self._is_delivered(client, event)
        if delivered is None:
            return 0
        now = self.clock()
        if delivered:
            await self.store.set_delivery_status(
                delivery.id, DeliveryStatus.SUCCEEDED, now=now, note=NOTE_DELIVERED
            )
            self.delivered += 1
        else:
            await self.store.set_delivery_status(
                delivery.id,
                DeliveryStatus.PENDING,
                now=now,
                next_attempt_at=now,
                note=NOTE_NOT_DELIVERED,
            )
            self.not_delivered += 1
        logger.info(
            "delivery %s (invoice %s): %s",
            delivery.id,
            event.object_id,
            NOTE_DELIVERED if delivered else NOTE_NOT_DELIVERED,
        )
        return 1

    @staticmethod
    async def _is_delivered(client: BillingPlatformClient, event: CloudEvent) -> bool | None:
        """True / False from the platform, None when it cannot tell."""
        obj = event.data.get("object") or {}
        number = obj.get("invoiceNumber")
        invoice_id = event.object_id
        if not number:
            return None
        try:
            await client.get_invoice(invoice_id)
        except NotFoundError:
            return None  # deleted: nothing to compare against
        undelivered = await client.list_invoices(undelivered=True, invoice_number=str(number))
        still = any(
            str(inv.id) == invoice_id or str(inv.invoice_number) == str(number)
            for inv in undelivered
        )
        return not still
