"""The deleted-records reconcile of one source resource (SPEC §7.5).

Incremental polls see what changed, never what vanished. Every ``reconcile_interval``
(default 6 h) an :class:`IdReconciler` lists every record the platform has for its
resource, paged as the first sync pages (the APIs have no field selection, so pages
carry whole records; only their ids are kept), and compares the ids with the snapshots
the service holds (:func:`~billnotify.sources.deletions.diff_ids`):

- a known id the platform no longer lists gives ``{entity}.deleted`` (``data.object`` =
  the last known record) and its snapshot is marked deleted;
- a deleted id that is listed again gives ``{entity}.restored`` (through
  :func:`~billnotify.sources.base.diff_page`, which also notices a restored record an
  incremental poll brings back first).

A listing counts only when it ran to its end: a failing or malformed page raises, and
nothing is marked. The known ids are read before the listing starts, and a snapshot
written while it ran (its version moved) is left for the next round, so a record created
or changed meanwhile is never taken for deleted. The commit runs under the poller's lock
(never between two pages of a poll) and through the poll's lease (on PostgreSQL only the
process that polls the resource reconciles it). When it last ran is a cursor of its own
(``reconcile:<resource>``), so a restart does not postpone it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from billnotify.config.models import SourceConfig
from billnotify.errors import BillnotifyError, FencedError
from billnotify.logs import log_context
from billnotify.sources.base import Clock, ResourceSync, diff_page, utcnow
from billnotify.sources.billing_cursor import CURSOR_FORMAT
from billnotify.sources.billing_platform import BillingPlatformSync
from billnotify.sources.deletions import DELETED, Known, deletions, diff_ids, known_from
from billnotify.sources.detect import Policy
from billnotify.sources.property_billing import ENTITY as HEADER_ENTITY
from billnotify.sources.property_billing import PropertyBillingSync
from billnotify.store.base import Snapshots
from billnotify.values import flags, record_id

logger = logging.getLogger(__name__)

RETRY_AFTER = timedelta(minutes=5)
"""A failed reconcile is tried again this soon (or after the interval, if shorter)."""
_WAIT_FOR_BASELINE = 5.0


class IdListing(Protocol):
    """Every record of one resource as the platform lists it now."""

    source: str
    resource: str
    entity: str
    closing_requests: int
    """Requests a complete listing makes beyond its pages (the empty last page)."""

    def pages(self) -> AsyncIterator[list[dict[str, Any]]]:
        """The complete listing, page by page; raises when it cannot be completed."""

    def owns(self, record: dict[str, Any]) -> bool:
        """Whether a stored record of the entity belongs to this listing."""


@dataclass
class _BillingListing:
    sync: BillingPlatformSync
    closing_requests: int = 1

    def __post_init__(self) -> None:
        self.source, self.resource, self.entity = (
            self.sync.source,
            self.sync.resource,
            self.sync.entity,
        )

    def pages(self) -> AsyncIterator[list[dict[str, Any]]]:
        return self.sync.iter_all()

    def owns(self, record: dict[str, Any]) -> bool:
        # Without include_unsent the listing leaves unsent invoices out: one known from
        # when it was on is not gone.
        if self.resource == "invoices" and not self.sync.config.include_unsent:
            return bool(record.get("invoiceNumber")) and "Unsent" not in flags(record.get("status"))
        return True


@dataclass
class _HeaderListing:
    """One property's billing headers: ``BillingHeaders/<uuid>`` without ``LastUpdate``
    lists them all in one answer (seed 003 has no paging)."""

    sync: PropertyBillingSync
    closing_requests: int = 0

    def __post_init__(self) -> None:
        self.source, self.resource, self.entity = (
            self.sync.source,
            self.sync.resource,
            HEADER_ENTITY,
        )

    async def pages(self) -> AsyncIterator[list[dict[str, Any]]]:
        headers = await self.sync.client.billing_headers(self.sync.property_uuid)
        yield [h.raw for h in headers]

    def owns(self, record: dict[str, Any]) -> bool:
        return str(record.get("propertyUUId", "")) == self.sync.property_uuid


@dataclass
class ReconcileStats:
    """What one reconcile did."""

    known: int = 0
    listed: int = 0
    requests: int = 0
    deleted: int = 0
    restored: int = 0
    events: int = 0
    seconds: float = 0.0
    skipped: str = ""
    """Why nothing was compared (no baseline yet, a suspect empty listing), if so."""


class IdReconciler:
    """Lists every id of one resource on its interval and records deletions and returns.

    Args:
        listing: the platform side.
        store: the snapshots (the poll's, fenced by its lease).
        interval: ``reconcile_interval`` (positive).
        policy: the source's detection settings (for records that come back).
        clock: wall clock (the cursor, event times).
        sleep: awaited between rounds.
    """

    def __init__(
        self,
        listing: IdListing,
        store: Snapshots,
        interval: timedelta,
        *,
        policy: Policy | None = None,
        clock: Clock = utcnow,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.listing = listing
        self.store = store
        self.interval = interval
        self.policy = policy or Policy()
        self.source, self.resource, self.entity = listing.source, listing.resource, listing.entity
        self.cursor = f"reconcile:{listing.resource}"
        self._clock = clock
        self._sleep = sleep
        self.rounds = 0
        self.last_error: str | None = None

    @property
    def name(self) -> str:
        """``source/resource``."""
        return f"{self.source}/{self.resource}"

    async def reconcile_once(self, busy: asyncio.Lock | None = None) -> ReconcileStats:
        """One round: list everything, compare, commit deletions and returns.

        Args:
            busy: held around the final read and commit (the poller's lock), so the
                commit never lands between a poll's read and write of a snapshot.

        Raises:
            BillnotifyError: the listing or the store failed; nothing was marked.
            FencedError: the poll lease moved to another process.
        """
        stats = ReconcileStats()
        started = time.monotonic()
        if await self.store.get_cursor(self.source, self.resource) is None:
            stats.skipped = "no baseline yet"
            return stats
        known = await self._known()
        stats.known = len(known)
        listed: set[str] = set()
        returning: dict[str, dict[str, Any]] = {}
        async for page in self.listing.pages():
            stats.requests += 1
            for record in page:
                rid = record_id(record)
                listed.add(rid)
                k = known.get(rid)
                if k is not None and k.deleted:
                    returning[rid] = record
        stats.requests += self.listing.closing_requests
        stats.listed = len(listed)
        found = diff_ids(known, listed)
        live = sum(1 for k in known.values() if not k.deleted)
        if not listed and live > 1:
            stats.skipped = f"the platform listed nothing while {live} records are known"
            logger.warning(
                "reconcile %s: %s; not believed, nothing marked deleted", self.name, stats.skipped
            )
        else:
            async with busy or contextlib.nullcontext():
                await self._commit(found.gone, found.back, known, returning, stats)
        stats.seconds = time.monotonic() - started
        return stats

    async def _known(self) -> dict[str, Known]:
        known: dict[str, Known] = {}
        after = ""
        while True:
            page = await self.store.iter_snapshots(self.source, self.entity, after, 1000)
            for snap in page:
                if self.listing.owns(snap.record):
                    known[snap.id] = known_from(snap)
            if len(page) < 1000:
                return known
            after = page[-1].id

    async def _commit(
        self,
        gone: list[str],
        back: list[str],
        known: dict[str, Known],
        returning: dict[str, dict[str, Any]],
        stats: ReconcileStats,
    ) -> None:
        now = self._clock()
        current = await self.store.get_snapshots(self.source, self.entity, [*gone, *back])
        # Written while the listing ran: the poll saw it, so it is not gone (or it was
        # restored by a poll already); the next round looks again.
        vanished = [
            s
            for rid in gone
            if (s := current.get(rid)) is not None
            and s.version == known[rid].version
            and DELETED not in s.marks
        ]
        writes, events = deletions(self.source, self.entity, vanished, now=now)
        came_back = {
            rid: s for rid in back if (s := current.get(rid)) is not None and DELETED in s.marks
        }
        result = diff_page(
            self.source,
            self.entity,
            [returning[rid] for rid in came_back],
            came_back,
            now=now,
            policy=self.policy,
            baseline=False,
        )
        stored = await self.store.commit(
            self.source,
            [*writes, *result.writes],
            [*events, *result.events],
            (self.cursor, now.astimezone(UTC).strftime(CURSOR_FORMAT)),
        )
        stats.deleted, stats.restored, stats.events = len(vanished), len(came_back), len(stored)

    async def _delay(self) -> float:
        """Seconds until the next round is due; records the first due time at the first
        sight of a baselined resource (the baseline itself just listed everything)."""
        last = await self.store.get_cursor(self.source, self.cursor)
        now = self._clock()
        if last is None:
            if await self.store.get_cursor(self.source, self.resource) is None:
                return min(self.interval.total_seconds(), _WAIT_FOR_BASELINE)
            await self.store.commit(
                self.source, [], [], (self.cursor, now.astimezone(UTC).strftime(CURSOR_FORMAT))
            )
            return self.interval.total_seconds()
        since = datetime.strptime(last, CURSOR_FORMAT).replace(tzinfo=UTC)
        return max(0.0, (since + self.interval - now).total_seconds())

    async def run(self, busy: asyncio.Lock | None = None) -> None:
        """Reconcile whenever due until cancelled; failures are logged and tried again
        after :data:`RETRY_AFTER` (a lease lost meanwhile is raised: FencedError)."""
        retry = min(self.interval, RETRY_AFTER).total_seconds()
        while True:
            try:
                delay = await self._delay()
            except BillnotifyError as exc:
                if isinstance(exc, FencedError):
                    raise
                logger.warning("reconcile %s: cannot read its cursor: %s", self.name, exc)
                delay = retry
            if delay > 0:
                await self._sleep(delay)
                continue
            with log_context(source=self.source):
                await self._round(retry, busy)

    async def _round(self, retry: float, busy: asyncio.Lock | None) -> None:
        self.rounds += 1
        try:
            stats = await self.reconcile_once(busy)
        except FencedError:
            raise
        except (BillnotifyError, OSError, ValueError, KeyError, TypeError) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            logger.warning(
                "reconcile %s failed: %s (nothing marked deleted; again in %.0fs)",
                self.name,
                exc,
                retry,
            )
            await self._sleep(retry)
            return
        self.last_error = None
        if stats.skipped:
            await self._sleep(retry)
            return
        level = logging.INFO if stats.deleted or stats.restored else logging.DEBUG
        logger.log(
            level,
            "reconcile %s: %d known, %d listed in %d requests (%.1fs): %d deleted, %d restored",
            self.name,
            stats.known,
            stats.listed,
            stats.requests,
            stats.seconds,
            stats.deleted,
            stats.restored,
        )


def build_id_reconciler(
    sync: ResourceSync, source: SourceConfig, *, clock: Clock = utcnow
) -> IdReconciler | None:
    """The reconciler of a poll's resource, over the poll's (fenced) store; None when
    ``reconcile_interval`` is ``"0s"``."""
    if not source.reconcile_interval:
        return None
    listing: IdListing
    if isinstance(sync, BillingPlatformSync):
        listing, store, policy = _BillingListing(sync), sync.store, sync.policy
    elif isinstance(sync, PropertyBillingSync):
        listing, store, policy = _HeaderListing(sync), sync.store, Policy(zone=source.zone)
    else:
        return None
    return IdReconciler(listing, store, source.reconcile_interval, policy=policy, clock=clock)
