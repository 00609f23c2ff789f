"""Small helpers over the delivery ledger shared by the rule handler, worker and commands."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from billnotify.store.base import DeliveryStatus, NewDelivery, Outcome, Store

logger = logging.getLogger(__name__)

RULES_CONSUMER = "rules"
"""The rule handler's position in the event log."""


class LedgerStore(Store, Protocol):
    """A :class:`Store` that can also keep what a dry-run delivery would have sent."""

    async def record_deliveries(
        self,
        deliveries: Sequence[NewDelivery],
        consumer: str,
        position: int,
        now: datetime,
        rendered: dict[str, str] | None = None,
    ) -> int:
        """See :meth:`Store.record_deliveries`; ``rendered`` maps delivery id -> JSON."""

    async def get_rendered(self, delivery_id: str) -> str | None:
        """What a dry-run delivery would have sent (JSON), if recorded."""


async def settle_without_sending(
    store: Store, delivery_id: str, status: DeliveryStatus, error: str, now: datetime
) -> None:
    """Give a delivery a final status and a visible error without attempting it.

    Used when nothing may be sent: a ``when`` that failed to evaluate, a disabled
    endpoint, a rule or event that no longer exists. No attempt is opened (so the row
    never passes through ``sending``, and a crash cannot turn it into ``uncertain``);
    closing attempt 0, which does not exist, only sets the status and ``last_error``.
    """
    await store.finish_attempt(
        delivery_id, 0, now=now, outcome=Outcome.PERMANENT, status=status, error=error
    )


def rendered_json(rendered: Any) -> str:
    """JSON of a :class:`~billnotify.actions.base.Rendered` (or any dataclass/model)."""
    if dataclasses.is_dataclass(rendered) and not isinstance(rendered, type):
        value: Any = dataclasses.asdict(rendered)
    elif hasattr(rendered, "model_dump"):
        value = rendered.model_dump(mode="json")
    else:
        value = {"summary": str(rendered)}
    return json.dumps(value, default=str, ensure_ascii=False, sort_keys=True)
