"""Settling ``uncertain`` invoice emails from the platform's own records (SPEC §4.1).

An ``invoice_action`` ``email`` delivery becomes ``uncertain`` when the process died (or
the answer was lost) after the request went out but before the outcome was recorded.
The platform knows whether the invoice was delivered: the invoice list's
``undelivered`` filter shows only invoices not emailed, downloaded, printed or marked
delivered. That flag is about the INVOICE, not about one request, so what it proves
depends on who else may have set it:

- **delivered** proves that *some* email (or download) of the invoice happened. It
  proves that THIS delivery's email went out only when nothing else billnotify did can
  have set the flag: no other delivery that emails the same invoice (another rule or
  action of the same event, or a delivery of another event on the invoice) has been
  attempted with an outcome that may have been an email (succeeded, sending, uncertain,
  or an attempt that succeeded or ended unknown), and no ``email`` action attaching the
  invoice PDF ran for the same event (fetching the PDF may count as "downloaded"). Then
  the delivery ``succeeded`` ("reconciled: delivered"). Otherwise it stays ``uncertain``
  with a note naming the other delivery; an operator decides (``billnotify deliveries
  resolve``). Such a verdict is final: the flag never clears, so it is not re-examined.
- **not delivered** proves that no email of the invoice has taken effect, ours
  included: our attempt started at least ``settle_after`` ago (longer than any request
  can take), so had it been performed, the flag would be set. Other deliveries cannot
  hide ours (they only ever set the flag). The one exception we guard against: while
  another email of the same invoice is in flight, the platform may be holding our old
  request behind it (a platform may serialise work on one invoice), so the verdict is
  put off until nothing else on the invoice is ``sending``. Then -> ``pending``: the
  email did not go out and is sent (once) again.
- anything unclear (no invoice number, the invoice is gone, the platform errs) -> it
  stays ``uncertain``.

Other deliveries are found in the ledger by their target (``invoice <id> email``):
every ``sending`` or ``uncertain`` one, and the newest ``scan_limit`` deliveries of
any status; the other actions of the same event are found exactly, by their ids. A
delivery of an older event on the same invoice that is further back in the ledger than
``scan_limit`` is not seen (a known limit: the store has no query by target).
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol

from billnotify.config.models import EmailAction, InvoiceActionAction, Rule
from billnotify.deliveries.base import DeliveryStatus, Outcome
from billnotify.deliveries.settings import DEFAULT_SETTLE_AFTER
from billnotify.errors import BillnotifyError, NotFoundError
from billnotify.events import CloudEvent
from billnotify.store.base import Deliveries, EventLog
from billnotify.store.records import Delivery, delivery_id
from billnotify.values import record_id

logger = logging.getLogger(__name__)

NOTE_DELIVERED = "reconciled: delivered"
NOTE_NOT_DELIVERED = "reconciled: not delivered, sending again"
NOTE_AMBIGUOUS = "reconcile: stays uncertain"
"""Prefix of the note left on a delivery that the platform's flag cannot settle."""
NOTES_NOT_SENT = frozenset({NOTE_NOT_DELIVERED, "operator: not sent"})
"""Verdicts that an earlier unknown attempt of a delivery did not go out."""
DEFAULT_SCAN_LIMIT = 10_000

_EMAIL_TARGET = re.compile(r"^invoice (?P<invoice>\S+) email(?: on \S+)?$")
_MAYBE_EMAILED = frozenset({DeliveryStatus.SUCCEEDED, DeliveryStatus.UNCERTAIN})
_INVOICES = "invoices"


class ReconcileStore(EventLog, Deliveries, Protocol):
    """What the reconciler needs of the store: deliveries and the events behind them."""


class InvoiceRecords(Protocol):
    """What the reconciler asks a billing platform, as raw records (a
    :class:`~billnotify.clients.billing_platform.BillingPlatformClient`)."""

    async def get_record(self, resource: str, record_id: int | str) -> dict[str, Any]:
        """Fetch ``resource/ID`` (raises ``NotFoundError`` when there is none)."""
        ...

    def iter_pages(
        self, resource: str, params: Mapping[str, Any] | None = None
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Yield every page of a list endpoint."""
        ...


def invoice_email_action(
    rules: Mapping[str, Rule], delivery: Delivery
) -> InvoiceActionAction | None:
    """The ``invoice_action`` ``email`` action behind a delivery, if that is what it is."""
    if delivery.action_type != "invoice_action":
        return None
    rule = rules.get(delivery.rule)
    if rule is not None and delivery.action_index < len(rule.actions):
        action = rule.actions[delivery.action_index]
        if isinstance(action, InvoiceActionAction) and action.action == "email":
            return action
    return None


def emailed_invoice(delivery: Delivery) -> str | None:
    """The invoice id of an ``invoice_action`` ``email`` delivery, from its target."""
    if delivery.action_type != "invoice_action":
        return None
    found = _EMAIL_TARGET.match(delivery.target)
    return found["invoice"] if found else None


def may_have_emailed(delivery: Delivery) -> bool:
    """Whether a delivery (with its history) may have made the platform email the invoice.

    ``sending`` counts too (see :func:`in_flight`); a dry run never does; an SMTP email
    that attaches the invoice PDF does once attempted (the PDF may have been fetched);
    otherwise an attempt that succeeded, or ended unknown without a later verdict that it
    did not go out (a reconciler's or an operator's), does.
    """
    if delivery.status in _MAYBE_EMAILED or delivery.status is DeliveryStatus.SENDING:
        return True
    if delivery.status is DeliveryStatus.DRY_RUN:
        return False
    if delivery.action_type == "email":  # an SMTP email attaching the invoice's PDF
        return delivery.attempts > 0
    judged = delivery.note in NOTES_NOT_SENT
    for attempt in delivery.history:
        if attempt.outcome is Outcome.SUCCESS:
            return True
        if attempt.outcome in (None, Outcome.UNCERTAIN) and not judged:
            return True
    return False


def in_flight(delivery: Delivery) -> bool:
    """Whether a delivery's request may be at the platform right now."""
    return delivery.status is DeliveryStatus.SENDING


class InvoiceEmailReconciler:
    """Resolves uncertain invoice-email deliveries against the platform.

    Args:
        rules: the configured rules by name.
        store: the state store.
        billing_clients: source name -> client of that billing platform.
        clock: returns the current UTC time.
        settle_after: how old an interrupted attempt must be before we trust the
            platform's view of it (longer than any request to the platform can take).
        scan_limit: how many of the newest deliveries are searched for other emails of
            the same invoice (every ``sending`` and ``uncertain`` one is, always).
    """

    def __init__(
        self,
        rules: Mapping[str, Rule],
        store: ReconcileStore,
        billing_clients: Mapping[str, InvoiceRecords],
        clock: Callable[[], datetime],
        settle_after: timedelta = DEFAULT_SETTLE_AFTER,
        scan_limit: int = DEFAULT_SCAN_LIMIT,
    ) -> None:
        self.rules = rules
        self.store = store
        self.billing_clients = billing_clients
        self.clock = clock
        self.settle_after = settle_after
        self.scan_limit = scan_limit
        self.delivered = 0
        """Deliveries found delivered (-> succeeded) since start."""
        self.not_delivered = 0
        """Deliveries found not delivered (-> pending) since start."""
        self.ambiguous = 0
        """Deliveries left uncertain because another delivery may have emailed the invoice."""

    async def reconcile(self, limit: int = 500) -> int:
        """Look at every uncertain invoice email once; returns how many were settled."""
        if not self.billing_clients:
            return 0
        candidates = [
            (delivery, action)
            for delivery in await self.store.list_deliveries([DeliveryStatus.UNCERTAIN], limit)
            if (action := invoice_email_action(self.rules, delivery)) is not None
            and not (delivery.note or "").startswith(NOTE_AMBIGUOUS)
        ]
        ready = [
            (full, action)
            for delivery, action in candidates
            if (full := await self._settled(delivery)) is not None
        ]
        if not ready:
            return 0
        by_invoice = await self._emails_by_invoice()
        settled = 0
        for delivery, action in ready:
            try:
                settled += await self._reconcile_one(delivery, action, by_invoice)
            except BillnotifyError as exc:
                logger.warning("reconcile %s: %s; will try again", delivery.id, exc)
        return settled

    async def _settled(self, delivery: Delivery) -> Delivery | None:
        """The delivery with its history once its last attempt is old enough to judge."""
        full = await self.store.get_delivery(delivery.id)
        if full is None or full.status is not DeliveryStatus.UNCERTAIN:
            return None
        started = full.history[-1].started_at if full.history else full.updated_at
        return full if self.clock() - started >= self.settle_after else None

    async def _emails_by_invoice(self) -> dict[str, set[str]]:
        """Invoice id -> ids of the ``email`` invoice-action deliveries on it."""
        rows = [
            *await self.store.list_deliveries(
                [DeliveryStatus.SENDING, DeliveryStatus.UNCERTAIN], self.scan_limit
            ),
            *await self.store.list_deliveries(None, self.scan_limit),
        ]
        found: dict[str, set[str]] = {}
        for row in rows:
            invoice = emailed_invoice(row)
            if invoice is not None:
                found.setdefault(invoice, set()).add(row.id)
        return found

    async def _reconcile_one(
        self, delivery: Delivery, action: InvoiceActionAction, by_invoice: Mapping[str, set[str]]
    ) -> int:
        events = await self.store.get_events([delivery.event_id])
        if not events:
            return 0
        event = events[0].event
        client = self.billing_clients.get(action.source or event.source_name)
        if client is None:
            return 0
        invoice = emailed_invoice(delivery) or event.object_id
        ids = by_invoice.get(invoice, set()) | set(self._same_event_emails(delivery, event))
        others = await self._others(delivery.id, ids)
        busy = [other for other in others if in_flight(other)]
        if busy:
            # another email of this invoice may be at the platform now: look again later
            logger.info(
                "delivery %s (invoice %s): waiting for %s, in flight on the same invoice",
                delivery.id,
                invoice,
                busy[0].id,
            )
            return 0
        delivered = await self._is_delivered(client, event)
        if delivered is None:
            return 0
        now = self.clock()
        if delivered:
            rival = next((other for other in others if may_have_emailed(other)), None)
            if rival is not None:
                await self._keep_uncertain(delivery, invoice, rival, now)
                return 0
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
            invoice,
            NOTE_DELIVERED if delivered else NOTE_NOT_DELIVERED,
        )
        return 1

    def _same_event_emails(self, delivery: Delivery, event: CloudEvent) -> Iterable[str]:
        """Ids of the event's other deliveries that email the invoice or fetch its PDF."""
        for rule in self.rules.values():
            for index, action in enumerate(rule.actions):
                emails = isinstance(action, InvoiceActionAction) and action.action == "email"
                downloads = isinstance(action, EmailAction) and "invoice_pdf" in action.attach
                if emails or downloads:
                    yield delivery_id(rule.name, index, event.id)

    async def _others(self, own: str, ids: Iterable[str]) -> list[Delivery]:
        others = []
        for other_id in sorted(set(ids) - {own}):
            other = await self.store.get_delivery(other_id)
            if other is not None:
                others.append(other)
        return others

    async def _keep_uncertain(
        self, delivery: Delivery, invoice: str, rival: Delivery, now: datetime
    ) -> None:
        note = (
            f"{NOTE_AMBIGUOUS}: invoice {invoice} is delivered, but delivery {rival.id} "
            f"(rule {rival.rule!r}, {rival.status.value}) may have emailed it too; "
            "the platform cannot tell which"
        )
        await self.store.set_delivery_status(
            delivery.id, DeliveryStatus.UNCERTAIN, now=now, note=note
        )
        self.ambiguous += 1
        logger.warning("delivery %s: %s; resolve it by hand", delivery.id, note)

    @staticmethod
    async def _is_delivered(client: InvoiceRecords, event: CloudEvent) -> bool | None:
        """True / False from the platform, None when it cannot tell."""
        obj = event.data.get("object") or {}
        number = obj.get("invoiceNumber")
        invoice_id = event.object_id
        if not number:
            return None
        try:
            await client.get_record(_INVOICES, invoice_id)
        except NotFoundError:
            return None  # deleted: nothing to compare against
        query = {"undelivered": True, "invoiceNumber": str(number)}
        undelivered = [
            record async for page in client.iter_pages(_INVOICES, query) for record in page
        ]
        still = any(
            record_id(record) == invoice_id or str(record.get("invoiceNumber")) == str(number)
            for record in undelivered
        )
        return not still
