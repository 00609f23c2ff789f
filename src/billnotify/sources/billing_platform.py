"""Incremental polling of a ``billing_platform`` source (seeds 000-002).

Each cycle of a resource:

1. First sync (no cursor): list everything, paging with ``idAfter``, and record it as the
   baseline (no events unless ``emit_on_first_sync``).
2. Later cycles: ``updatedSince`` and ``createdSince`` = cursor - overlap, each paged with
   ``idAfter`` until an empty page. Records re-read in the overlap equal their snapshot
   and emit nothing, so the overlap never duplicates an event.
3. The cursor is the platform's own clock (the ``Date`` header of the cycle's first
   response), committed only after every page of the cycle is committed: a crash or a
   failing page repeats the cycle, never skips it.
4. Time-based events (stalled tasks, overdue invoices) are swept from the store.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

from billnotify.clients.billing_platform import BillingPlatformClient
from billnotify.config.models import BillingPlatformSource
from billnotify.config.types import RESOURCES
from billnotify.sources.base import Clock, PollStats, diff_page, sweep_due, utcnow
from billnotify.sources.detect import Policy
from billnotify.store.base import Snapshots
from billnotify.values import record_id

logger = logging.getLogger(__name__)

PATHS = {"billing_tasks": "billingTasks", "billing_runs": "billingRuns", "invoices": "invoices"}
"""Resource name -> the API's collection path."""

CURSOR_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_NO_DATE_MARGIN = timedelta(minutes=5)


def server_time(client: BillingPlatformClient, fallback: datetime) -> datetime:
    """The platform's clock from the last response's ``Date`` header.

    Without one, the local clock minus a margin for skew (at worst a few extra records
    are re-read; they emit nothing).
    """
    header = getattr(client.transport, "last_date", None)
    if isinstance(header, str):
        try:
            return parsedate_to_datetime(header).astimezone(UTC)
        except (TypeError, ValueError):
            pass
    return fallback - _NO_DATE_MARGIN


class BillingPlatformSync:
    """Polls one resource (billing tasks, billing runs or invoices) of one source."""

    def __init__(
        self,
        config: BillingPlatformSource,
        resource: str,
        client: BillingPlatformClient,
        store: Snapshots,
        *,
        clock: Clock = utcnow,
    ) -> None:
        self.config = config
        self.source = config.name
        self.resource = resource
        self.entity = RESOURCES[resource]
        self.path = PATHS[resource]
        self.client = client
        self.store = store
        self.clock = clock
        self.policy = Policy(stall_after=config.stall_after, zone=config.zone)

    def _base_params(self) -> dict[str, Any]:
        if self.resource == "invoices" and self.config.include_unsent:
            return {"includeUnsent": 1}
        return {}

    async def poll_once(self) -> PollStats:
        """One cycle: fetch, detect, commit; then advance the cursor."""
        stats = PollStats()
        cursor = await self.store.get_cursor(self.source, self.resource)
        if cursor is None:
            stats.baseline = not self.config.emit_on_first_sync
            passes: list[dict[str, Any]] = [self._base_params()]
        else:
            since = datetime.strptime(cursor, CURSOR_FORMAT).replace(tzinfo=UTC)
            since -= self.config.overlap
            passes = [
                {**self._base_params(), "updatedSince": since},
                {**self._base_params(), "createdSince": since},
            ]
        started: datetime | None = None
        for params in passes:
            async for page in self.client.iter_pages(self.path, params):
                stats.requests += 1
                if started is None:
                    started = server_time(self.client, self.clock())
                await self._apply(page, stats)
            stats.requests += 1
            if started is None:
                started = server_time(self.client, self.clock())
        swept = await sweep_due(
            self.store, self.source, self.entity, now=self.clock(), policy=self.policy
        )
        stats.events += len(swept)
        stats.types.update(s.event.type for s in swept)
        assert started is not None
        new_cursor = started.strftime(CURSOR_FORMAT)
        if new_cursor != cursor:
            await self.store.commit(self.source, [], [], (self.resource, new_cursor))
        return stats

    def iter_all(self) -> AsyncIterator[list[dict[str, Any]]]:
        """Every record the platform lists for the resource now, page by page (the
        deleted-records reconcile, :mod:`billnotify.sources.reconcile_ids`)."""
        return self.client.iter_pages(self.path, self._base_params())

    async def _apply(self, page: list[dict[str, Any]], stats: PollStats) -> None:
        ids = [record_id(r) for r in page]
        known = await self.store.get_snapshots(self.source, self.entity, ids)
        result = diff_page(
            self.source,
            self.entity,
            page,
            known,
            now=self.clock(),
            policy=self.policy,
            baseline=stats.baseline,
        )
        stats.records += len(page)
        if result.writes or result.events:
            stored = await self.store.commit(self.source, result.writes, result.events)
            stats.events += len(stored)
            stats.types.update(s.event.type for s in stored)


def build_billing_syncs(
    config: BillingPlatformSource,
    client: BillingPlatformClient,
    store: Snapshots,
    *,
    clock: Callable[[], datetime] = utcnow,
) -> list[BillingPlatformSync]:
    """One sync per watched resource of a billing_platform source."""
    return [BillingPlatformSync(config, r, client, store, clock=clock) for r in config.watch]
