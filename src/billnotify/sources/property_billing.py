"""Polling of a ``property_billing`` source (seed 003): billing headers per property.

A header that is new is ``billing_header.published``; one whose ``updateTimeStamp``
changed is ``billing_header.updated``. ``LastUpdate`` is a day in the platform's zone, so
the cursor is that zone's date and each cycle asks from the cursor's day minus one (a day
of overlap); re-read headers equal their snapshot and emit nothing. Events are enriched
with ``data.billing`` = ``Billing/<id>`` (its units' device consumptions included when
the source sets ``include_device_consumptions``).
"""

from __future__ import annotations

import logging
from datetime import date, timedelta
from typing import Any

from billnotify.clients.property_billing import PropertyBillingClient
from billnotify.config.models import PropertyBillingSource
from billnotify.errors import SourceError
from billnotify.events import CloudEvent
from billnotify.sources.base import Clock, PollStats, diff_page, utcnow
from billnotify.sources.detect import Policy
from billnotify.store.base import Snapshots
from billnotify.values import record_id

logger = logging.getLogger(__name__)

ENTITY = "billing_header"


class PropertyBillingSync:
    """Polls the billing headers of one property."""

    def __init__(
        self,
        config: PropertyBillingSource,
        property_uuid: str,
        client: PropertyBillingClient,
        store: Snapshots,
        *,
        clock: Clock = utcnow,
    ) -> None:
        self.config = config
        self.source = config.name
        self.property_uuid = property_uuid
        self.resource = f"billing_headers:{property_uuid}"
        self.client = client
        self.store = store
        self.clock = clock

    async def poll_once(self) -> PollStats:
        """One cycle for the property."""
        stats = PollStats()
        cursor = await self.store.get_cursor(self.source, self.resource)
        today = self.clock().astimezone(self.config.zone).date()
        if cursor is None:
            stats.baseline = not self.config.emit_on_first_sync
            last_update = None
        else:
            last_update = date.fromisoformat(cursor) - timedelta(days=1)
        headers = await self.client.billing_headers(self.property_uuid, last_update=last_update)
        stats.requests += 1
        page = [h.raw for h in headers]
        ids = [record_id(r) for r in page]
        known = await self.store.get_snapshots(self.source, ENTITY, ids)
        result = diff_page(
            self.source,
            ENTITY,
            page,
            known,
            now=self.clock(),
            policy=Policy(zone=self.config.zone),
            baseline=stats.baseline,
        )
        if self.config.enrich:
            result.events = [await self._enrich(e, stats) for e in result.events]
        stats.records = len(page)
        cursor_value = today.isoformat()
        stored = await self.store.commit(
            self.source, result.writes, result.events, (self.resource, cursor_value)
        )
        stats.events = len(stored)
        stats.types.update(s.event.type for s in stored)
        return stats

    async def _enrich(self, event: CloudEvent, stats: PollStats) -> CloudEvent:
        """Attach ``Billing/<id>``; a failure to enrich is logged, never loses the event."""
        data: dict[str, Any] = dict(event.data)
        try:
            data["billing"] = await self.client.billing(
                event.object_id,
                include_device_consumptions=self.config.include_device_consumptions,
            )
            stats.requests += 1
        except SourceError as exc:
            logger.warning(
                "could not fetch Billing/%s to enrich %s: %s", event.object_id, event.id, exc
            )
            data["billing_error"] = str(exc)
        return event.model_copy(update={"data": data})
