"""Holding a due delivery back, just before it starts: mute windows and rate limits
(SPEC §7.2).

The due queue asks :meth:`Holds.release` about each delivery it is about to start:

- a rule's ``mute`` windows: a delivery of any of its actions (customer-facing invoice
  actions too) that falls due inside one is deferred until the window ends — it stays
  ``pending`` / ``retry_scheduled`` with its next attempt moved, no attempt is counted —
  or, with ``mute_action = "drop"``, settled ``muted`` and never sent;
- the ``rate_limit`` of a webhook endpoint or of ``[smtp]``: the delivery takes a turn
  from the store (:meth:`~billnotify.store.base.Holds.take_turn`, the same turns for
  every process on it and kept across restarts); over the limit it is deferred to its
  turn, never dropped.

A deferral is conditional in the store (only while the delivery is still due), so a
delivery another process started meanwhile is left alone. A ``muted`` delivery an
operator retried (its note begins :data:`~billnotify.deliveries.mute.SENT_ANYWAY`) is
sent now: no window holds it back, a rate limit still does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from billnotify.config.models import Action, EmailAction, Rule, WebhookAction
from billnotify.config.rates import Rate
from billnotify.deliveries.base import DeliveryStatus
from billnotify.deliveries.ledger import settle_without_sending
from billnotify.deliveries.mute import SENT_ANYWAY, Mute, muted_until
from billnotify.deliveries.settings import DeliverySettings
from billnotify.events import format_time
from billnotify.store.base import Deliveries
from billnotify.store.base import Holds as HoldStore
from billnotify.store.records import DueDelivery

logger = logging.getLogger(__name__)

MUTE = "mute"
RATE_LIMIT = "rate_limit"
"""Why a delivery was held (the ``reason`` of ``billnotify_delivery_holds``)."""


class Store(HoldStore, Deliveries, Protocol):
    """What holding needs of the store: deferrals and turns, settling ``muted``."""


def rate_key(action: Action) -> str | None:
    """The rate limit an action's deliveries count against (None: no limit applies)."""
    if isinstance(action, WebhookAction):
        return f"webhook:{action.endpoint}"
    if isinstance(action, EmailAction):
        return "smtp"
    return None


class Holds:
    """Mute windows and rate limits of the delivery stage.

    Args:
        settings: the delivery stage's settings (rules, windows, rates).
        store: the state store.
        settled: the worker's counts by status (``muted`` ones are counted here).

    Attributes:
        held: deliveries held back since start, by reason (``mute``, ``rate_limit``).
    """

    def __init__(
        self, settings: DeliverySettings, store: Store, *, settled: dict[str, int]
    ) -> None:
        self.store = store
        self.held: dict[str, int] = {MUTE: 0, RATE_LIMIT: 0}
        self._settled = settled
        self._mutes = {name: Mute.of(w) for name, w in settings.mute_windows.items()}
        self._rates: dict[str, Rate] = {
            f"webhook:{name}": rate for name, rate in settings.webhook_rates.items()
        }
        if settings.email_rate is not None:
            self._rates["smtp"] = settings.email_rate
        self._rule_mutes: dict[str, list[Mute]] = {
            name: [self._mutes[m] for m in rule.mute if m in self._mutes]
            for name, rule in settings.rules.items()
        }

        self._active = bool(self._rates) or any(self._rule_mutes.values())

    def __bool__(self) -> bool:
        """Whether anything is ever held (no mute window used, no rate limit: nothing)."""
        return self._active

    async def release(
        self, delivery: DueDelivery, rule: Rule, action: Action, clock: Callable[[], datetime]
    ) -> bool:
        """Whether the delivery may start now; when not, it was deferred or settled
        ``muted`` here (or changed elsewhere meanwhile)."""
        mutes = self._rule_mutes.get(rule.name)
        anyway = False
        if mutes:
            now = clock()
            muted = muted_until(mutes, now)
            if muted is not None:
                anyway = await self._sent_anyway(delivery.id)
                if not anyway:
                    return await self._mute(delivery, rule, muted[0], muted[1], now)
        key = rate_key(action)
        rate = self._rates.get(key) if key is not None else None
        if key is None or rate is None:
            return True
        now = clock()
        turn = await self.store.take_turn(key, delivery.id, now, rate.limit, rate.period)
        if turn is None:
            return True
        self.held[RATE_LIMIT] += 1
        note = f"rate limit {rate} of {key}: waits its turn until {format_time(turn)}"
        if anyway:  # still the operator's: the window must not hold it at its turn
            note = f"{SENT_ANYWAY}; {note}"
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("delivery %s: %s", delivery.id, note)
        await self.store.defer_delivery(delivery.id, turn, now, note)
        return False

    async def _sent_anyway(self, delivery_id: str) -> bool:
        """Whether an operator retried the delivery from ``muted`` (read only when a
        window covers it, so an unmuted delivery costs nothing)."""
        found = await self.store.get_deliveries([delivery_id])
        return bool(found) and (found[0].note or "").startswith(SENT_ANYWAY)

    async def _mute(
        self, delivery: DueDelivery, rule: Rule, until: datetime, names: list[str], now: datetime
    ) -> bool:
        windows = ", ".join(repr(n) for n in names)
        self.held[MUTE] += 1
        if rule.mute_action == "drop":
            reason = f"muted by {windows} (mute_action = drop): not sent"
            logger.info("delivery %s (%s): %s", delivery.id, rule.name, reason)
            await settle_without_sending(self.store, delivery.id, DeliveryStatus.MUTED, reason, now)
            self._settled[DeliveryStatus.MUTED.value] += 1
            return False
        note = f"muted by {windows} until {format_time(until)}"
        logger.info("delivery %s (%s): %s", delivery.id, rule.name, note)
        await self.store.defer_delivery(delivery.id, until, now, note)
        return False
