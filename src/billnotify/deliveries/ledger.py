"""Small helpers over the delivery ledger shared by the rule handler, worker and commands."""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import datetime
from typing import Any

from billnotify.deliveries.base import DeliveryStatus
from billnotify.store.base import Deliveries

logger = logging.getLogger(__name__)

RULES_CONSUMER = "rules"
"""The rule handler's position in the event log."""


async def settle_without_sending(
    store: Deliveries, delivery_id: str, status: DeliveryStatus, error: str, now: datetime
) -> None:
    """Give a delivery a final status and a visible error without attempting it.

    Used when nothing may be sent: a ``when`` that failed to evaluate, a disabled
    endpoint, a rule or event that no longer exists. No attempt is opened (so the row
    never passes through ``sending``, and a crash cannot turn it into ``uncertain``).
    """
    await store.set_delivery_status(delivery_id, status, now=now, error=error)


def rendered_json(rendered: Any) -> str:
    """JSON of a :class:`~billnotify.actions.base.Rendered` (or any dataclass/model)."""
    if dataclasses.is_dataclass(rendered) and not isinstance(rendered, type):
        value: Any = dataclasses.asdict(rendered)
    elif hasattr(rendered, "model_dump"):
        value = rendered.model_dump(mode="json")
    else:
        value = {"summary": str(rendered)}
    return json.dumps(value, default=str, ensure_ascii=False, sort_keys=True)
