"""Incremental polling of a ``billing_platform`` source (seeds 000-002).

Each cycle of a resource:

1. First sync (no cursor): list everything, paging with ``idAfter``, and record it as the
   baseline (no events unless ``emit_on_first_sync``).
2. Later cycles: ``updatedSince`` = cursor - overlap, paged with ``idAfter`` until an
   empty page; ``createdSince`` too, every cycle until the platform has shown that
   ``updatedSince`` lists created records, then once a minute from a cursor of its own
   (:mod:`~billnotify.sources.billing_cursor`). Records re-read in the overlap equal
   their snapshot and emit nothing, so the overlap never duplicates an event.
3. The cursor is the platform's own clock (the ``Date`` headers of the cycle's
   responses, by id range), committed only after every page of the cycle is committed: a
   crash or a failing page repeats the cycle, never skips it.
4. Time-based events (stalled tasks, overdue invoices) are swept from the store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, cast

from billnotify.clients.billing_platform import BillingPlatformClient
from billnotify.config.models import BillingPlatformSource
from billnotify.config.types import RESOURCES
from billnotify.sources.base import Clock, PollStats, diff_page, sweep_due, utcnow
from billnotify.sources.billing_cursor import CreatedCheck, Cursor, ReadTimes
from billnotify.sources.detect import Policy
from billnotify.store.base import Snapshots
from billnotify.values import record_id

logger = logging.getLogger(__name__)

PATHS = {"billing_tasks": "billingTasks", "billing_runs": "billingRuns", "invoices": "invoices"}
"""Resource name -> the API's collection path."""

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
        self._created = CreatedCheck()

    def _base_params(self) -> dict[str, Any]:
        if self.resource == "invoices" and self.config.include_unsent:
            return {"includeUnsent": 1}
        return {}

    async def poll_once(self) -> PollStats:
        """One cycle: fetch, detect, commit; then advance the cursor."""
        stats = PollStats()
        stored = await self.store.get_cursor(self.source, self.resource)
        cursor = None if stored is None else Cursor.parse(stored)
        stats.baseline = cursor is None and not self.config.emit_on_first_sync
        reads = ReadTimes()
        updated = await self._updated_pass(cursor, reads, stats)
        started = reads.first
        assert started is not None
        created = started if cursor is None else cursor.created
        if self._created.due(cursor, started):
            assert cursor is not None
            since = cursor.created - self.config.overlap
            await self._created_pass(since, updated, stats)
            created = started
        swept = await sweep_due(
            self.store, self.source, self.entity, now=self.clock(), policy=self.policy
        )
        stats.events += len(swept)
        stats.types.update(s.event.type for s in swept)
        new_cursor = Cursor(reads.ranges(), created).text()
        if new_cursor != stored:
            await self.store.commit(self.source, [], [], (self.resource, new_cursor))
        return stats

    async def _updated_pass(
        self, cursor: Cursor | None, reads: ReadTimes, stats: PollStats
    ) -> set[str]:
        """Everything (first sync) or ``updatedSince`` by id range (see
        :mod:`~billnotify.sources.billing_cursor`); the ids it found new (incremental
        cycles only)."""
        queries: list[tuple[int | None, datetime | None]] = [(None, None)]
        if cursor is not None:
            queries = [*cursor.queries(self.config.overlap)]
        new: set[str] = set()
        position: int | None = None
        # A page is detected and committed while the next one is fetched (one page
        # ahead, never two requests at once); pages are still committed in order.
        applying: tuple[list[dict[str, Any]], asyncio.Task[set[str]]] | None = None

        async def applied() -> None:
            nonlocal applying
            if applying is not None:
                page, task = applying
                applying = None
                known = await task
                if cursor is not None:
                    new.update(i for i in map(record_id, page) if i not in known)

        try:
            while queries:
                _, since = queries.pop(0)
                params = self._base_params()
                if since is not None:
                    params["updatedSince"] = since
                if position is not None:
                    params["idAfter"] = position
                listing = cast(
                    "AsyncGenerator[list[dict[str, Any]]]",
                    self.client.iter_pages(self.path, params),
                )
                async with aclosing(listing) as pages:
                    async for page in pages:
                        stats.requests += 1
                        reads.add(position, server_time(self.client, self.clock()))
                        await applied()
                        applying = page, asyncio.create_task(self._apply(page, stats))
                        position = max(int(r["id"]) for r in page)
                        passed = [q for q in queries if q[0] is not None and q[0] <= position]
                        if passed:  # the ids above ``position`` are read from a later time
                            queries = [passed[-1], *queries[len(passed) :]]
                            break
                    else:
                        stats.requests += 1  # the empty page: nothing above ``position``
                        reads.add(position, server_time(self.client, self.clock()))
                        break
        finally:
            await applied()  # a failed fetch still lets the page before it commit
        return new

    async def _created_pass(self, since: datetime, updated: set[str], stats: PollStats) -> None:
        """``createdSince``, and what it shows of the platform (see :class:`CreatedCheck`);
        ``updated``: the records this cycle's ``updatedSince`` found new."""
        params = {**self._base_params(), "createdSince": since}
        fresh = confirmed = False
        async for page in self.client.iter_pages(self.path, params):
            stats.requests += 1
            known = await self._apply(page, stats)
            for rid in map(record_id, page):
                fresh = fresh or rid not in known
                confirmed = confirmed or rid in updated
        stats.requests += 1
        folded = self._created.folded
        self._created.learn(fresh=fresh, confirmed=confirmed)
        if folded != self._created.folded:
            logger.info(
                "%s %s: createdSince asked %s",
                self.source,
                self.resource,
                "once a minute (updatedSince lists created records)"
                if self._created.folded
                else "every cycle (a created record only createdSince listed)",
            )

    def iter_all(self) -> AsyncIterator[list[dict[str, Any]]]:
        """Every record the platform lists for the resource now, page by page (the
        deleted-records reconcile, :mod:`billnotify.sources.reconcile_ids`)."""
        return self.client.iter_pages(self.path, self._base_params())

    async def _apply(self, page: list[dict[str, Any]], stats: PollStats) -> set[str]:
        """Detect and commit one page; the ids of its records that had a snapshot."""
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
        return set(known)


def build_billing_syncs(
    config: BillingPlatformSource,
    client: BillingPlatformClient,
    store: Snapshots,
    *,
    clock: Callable[[], datetime] = utcnow,
) -> list[BillingPlatformSync]:
    """One sync per watched resource of a billing_platform source."""
    return [BillingPlatformSync(config, r, client, store, clock=clock) for r in config.watch]
