"""The polling loop and the shared step that turns a page of records into events.

A :class:`ResourceSync` knows how to fetch one resource of one source
(``poll_once``); a :class:`Poller` runs it on the source's interval as its own task, so
a slow or failing source never delays another. With several processes on one store, a
poller polls only while its process holds the resource's lease
(:func:`~billnotify.leases.poll_lease`), and its sync commits through
:class:`FencedSnapshots`, so a process that lost the lease cannot write stale state.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from billnotify.errors import BillnotifyError, FencedError
from billnotify.events import CloudEvent, build_event
from billnotify.leases import Role, run_while_held
from billnotify.logs import log_context
from billnotify.notices import FailureEpisode, Notices
from billnotify.sources.deletions import DELETED, with_restored
from billnotify.sources.detect import Detection, Policy, detect
from billnotify.sources.snapshot_cache import SnapshotCache
from billnotify.store.base import Snapshots
from billnotify.store.records import Lease, Snapshot, SnapshotWrite, StoredEvent
from billnotify.values import record_id

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """The current time, aware UTC."""
    return datetime.now(UTC)


@dataclass
class PollStats:
    """What one poll cycle did."""

    records: int = 0
    events: int = 0
    requests: int = 0
    baseline: bool = False
    types: collections.Counter[str] = field(default_factory=collections.Counter)
    """Appended events by type."""


class ResourceSync(Protocol):
    """One resource (or one property's headers) of one source."""

    source: str
    resource: str

    async def poll_once(self) -> PollStats:
        """Fetch what changed, commit snapshots, events and cursor; raise on failure."""


@dataclass
class PageResult:
    """Snapshots to write and events to append for one page."""

    writes: list[SnapshotWrite] = field(default_factory=list)
    events: list[CloudEvent] = field(default_factory=list)


def _write(entity: str, rid: str, record: dict[str, Any], found: Detection) -> SnapshotWrite:
    return SnapshotWrite(entity, rid, record, marks=found.marks, due_at=found.due_at)


def diff_page(
    source: str,
    entity: str,
    records: Sequence[dict[str, Any]],
    known: dict[str, Snapshot],
    *,
    now: datetime,
    policy: Policy,
    baseline: bool,
    enrich: Callable[[CloudEvent], CloudEvent] | None = None,
) -> PageResult:
    """Compare a page with the stored snapshots (pure): what to write, what to emit.

    A record equal to its snapshot (the overlap window re-reads such records) writes
    nothing and emits nothing, unless a time-based event became due. A record whose
    snapshot is marked deleted is back: ``{entity}.restored``, then any change.
    """
    result = PageResult()
    seen: set[str] = set()
    for record in records:
        rid = record_id(record)
        if not rid or rid in seen:
            continue
        seen.add(rid)
        snap = known.get(rid)
        previous = snap.record if snap else None
        marks = snap.marks if snap else frozenset()
        found = detect(
            entity,
            previous,
            record,
            now=now,
            marks=marks - {DELETED},
            policy=policy,
            baseline=baseline and snap is None,
        )
        if previous is not None and DELETED in marks:
            found = with_restored(entity, previous, record, found)
        unchanged = (
            snap is not None
            and snap.record == record
            and snap.marks == found.marks
            and snap.due_at == found.due_at
        )
        if not unchanged:
            result.writes.append(_write(entity, rid, record, found))
        for draft in found.drafts:
            result.events.append(
                build_event(
                    source=source,
                    entity=entity,
                    object_id=rid,
                    type_=draft.type,
                    key=draft.key,
                    time=now,
                    data=draft.data,
                )
            )
    if enrich is not None:
        result.events = [enrich(e) for e in result.events]
    return result


async def sweep_due(
    store: Snapshots, source: str, entity: str, *, now: datetime, policy: Policy
) -> list[StoredEvent]:
    """Emit time-based events (stalled, overdue) for unchanged records that became due."""
    emitted: list[StoredEvent] = []
    while True:
        due = await store.due_snapshots(source, entity, now)
        if not due:
            return emitted
        result = diff_page(
            source,
            entity,
            [s.record for s in due],
            {s.id: s for s in due},
            now=now,
            policy=policy,
            baseline=False,
        )
        emitted += await store.commit(source, result.writes, result.events)
        if len(due) < 500:
            return emitted


class FencedSnapshots:
    """:class:`~billnotify.store.base.Snapshots` whose commits carry a role's lease.

    A sync commits through it unchanged; the store refuses the commit once another
    process took the lease (:class:`~billnotify.errors.FencedError`), and a lease that
    is not held (or may have lapsed) refuses it here, before the store is asked.

    While the lease is held, the snapshots it read and wrote are kept
    (:class:`~billnotify.sources.snapshot_cache.SnapshotCache`): a poll compares its
    pages with them without asking the store.
    """

    def __init__(self, store: Snapshots, role: Role, cache: SnapshotCache | None = None) -> None:
        self._store = store
        self.role = role
        self.cache = cache or SnapshotCache()
        self._commits = 0
        """Commits started plus commits ended: a read that overlapped one is not kept."""
        self._committing = 0

    def _epoch(self) -> int | None:
        lease = self.role.lease
        return None if lease is None else lease.epoch

    async def get_snapshots(
        self, source: str, entity: str, ids: Sequence[str]
    ) -> dict[str, Snapshot]:
        cache, epoch, commits = self.cache, self._epoch(), self._commits
        cache.hold(epoch)
        found, missing = cache.get(source, entity, ids)
        if missing:
            read = await self._store.get_snapshots(source, entity, missing)
            quiet = not self._committing and commits == self._commits
            if quiet and self._epoch() == epoch:  # nothing written, lease not moved
                cache.read(source, entity, missing, read)
            found.update(read)
        return found

    async def due_snapshots(
        self, source: str, entity: str, now: datetime, limit: int = 500
    ) -> list[Snapshot]:
        return await self._store.due_snapshots(source, entity, now, limit)

    async def count_snapshots(self, source: str, entity: str | None = None) -> int:
        return await self._store.count_snapshots(source, entity)

    async def iter_snapshots(
        self, source: str, entity: str, after_id: str = "", limit: int = 500
    ) -> list[Snapshot]:
        return await self._store.iter_snapshots(source, entity, after_id, limit)

    async def dirty_snapshots(self, limit: int = 500) -> list[Snapshot]:
        return await self._store.dirty_snapshots(limit)

    async def clear_dirty(self, snapshots: Sequence[Snapshot]) -> None:
        await self._store.clear_dirty(snapshots)

    async def get_cursor(self, source: str, resource: str) -> str | None:
        return await self._store.get_cursor(source, resource)

    async def commit(
        self,
        source: str,
        writes: Sequence[SnapshotWrite],
        events: Sequence[CloudEvent],
        cursor: tuple[str, str] | None = None,
        fence: Lease | None = None,
    ) -> list[StoredEvent]:
        fence = fence or self.role.fence()
        self.cache.hold(fence.epoch)
        self._commits += 1
        self._committing += 1
        try:
            stored = await self._store.commit(source, writes, events, cursor, fence=fence)
        except BaseException:
            self.cache.forget()  # landed or not: the store is asked again
            raise
        else:
            self.cache.written(source, writes)
        finally:
            self._commits += 1
            self._committing -= 1
        return stored


class Reconciler(Protocol):
    """Work a poller runs beside its polls, under its lease (the deleted-records
    reconcile, :mod:`billnotify.sources.reconcile_ids`)."""

    async def run(self, busy: asyncio.Lock) -> None:
        """Until cancelled; commits only while holding ``busy``."""


class Poller:
    """Runs one :class:`ResourceSync` every ``interval`` until cancelled.

    With ``notices``, polls that keep failing (``failing_after_polls`` in a row, or for
    ``failing_after``) are reported once per episode as ``billnotify.source.failing``,
    and the first success after that as ``billnotify.source.recovered``.

    With a ``role``, it polls only while the role's lease is held, so only the holder
    polls and reports a failing source; the others stand by.

    Attributes:
        last_success: monotonic time of the last successful poll (None before).
        last_error: the last failure's message, cleared by a success.
    """

    def __init__(
        self,
        sync: ResourceSync,
        interval: timedelta,
        *,
        on_result: Callable[[ResourceSync, PollStats | None, float, BaseException | None], None]
        | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
        min_gap: timedelta = timedelta(seconds=1),
        notices: Notices | None = None,
        failing_after_polls: int = 3,
        failing_after: timedelta = timedelta(minutes=5),
        clock: Clock = utcnow,
        role: Role | None = None,
        reconciler: Reconciler | None = None,
    ) -> None:
        self.sync = sync
        self.role = role
        self.reconciler = reconciler
        """Lists every id on its own interval, beside the polls (deleted records)."""
        self.busy = asyncio.Lock()
        """Held while a poll runs: the reconciler commits only between two polls."""
        self.interval = interval.total_seconds()
        self.min_gap = min_gap.total_seconds()
        """Least time between the starts of two polls when :meth:`poll_now` asks early."""
        self._sleep = sleep
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.polls = 0
        self._on_result = on_result
        self._wake = asyncio.Event()
        self._notices = notices
        self._clock = clock
        self.episode = FailureEpisode(
            sync.source, sync.resource, failing_after_polls, failing_after
        )
        """The failing episode under way, if any."""

    @property
    def name(self) -> str:
        """``source/resource``."""
        return f"{self.sync.source}/{self.sync.resource}"

    def poll_now(self) -> None:
        """Poll soon (an inbound platform webhook), debounced.

        At once when idle; else after the running poll, and ``min_gap`` after the start
        of the previous one. Requests meanwhile coalesce into that one poll, so a flood
        of hooks costs the platform a few polls, not one each.
        """
        self._wake.set()

    @property
    def standby(self) -> bool:
        """Another process holds this resource's lease: this one does not poll it."""
        return self.role is not None and self.role.standby and self.role.lease is None

    def healthy(self, now: float | None = None, intervals: float = 3.0) -> bool:
        """Polled successfully, and not failing for long (or standing by).

        Unhealthy before the first success; once polls have been failing for more than
        ``intervals`` poll intervals (a single failed poll is not yet a problem); and when
        nothing succeeded for ``intervals`` intervals plus a minute (a poll stuck in slow
        requests, which has not failed yet).
        """
        if self.standby:
            return True
        if self.last_success is None:
            return False
        now = time.monotonic() if now is None else now
        since = now - self.last_success
        if self.last_error is not None and since > self.interval * intervals:
            return False
        return since <= self.interval * intervals + 60

    async def run_once(self) -> PollStats | None:
        """One poll with its error handling; failures are logged, never raised (a lease
        lost meanwhile is: :class:`~billnotify.errors.FencedError`)."""
        with log_context(source=self.sync.source):
            return await self._poll()

    async def _poll(self) -> PollStats | None:
        started = time.monotonic()
        stats: PollStats | None = None
        error: BaseException | None = None
        try:
            async with self.busy:
                stats = await self.sync.poll_once()
        except FencedError:
            raise  # not the source's failure: the lease moved (run() stands by)
        except BillnotifyError as exc:
            error = exc
            self.last_error = str(exc)
            logger.warning("poll %s failed: %s (will retry next interval)", self.name, exc)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            error = exc
            self.last_error = f"{type(exc).__name__}: {exc}"
            logger.exception("poll %s failed unexpectedly", self.name)
        else:
            self.last_success = time.monotonic()
            self.last_error = None
            if stats.events or stats.baseline:
                logger.info(
                    "poll %s: %d records, %d events%s",
                    self.name,
                    stats.records,
                    stats.events,
                    " (baseline)" if stats.baseline else "",
                )
        self.polls += 1
        if self._on_result is not None:
            self._on_result(self.sync, stats, time.monotonic() - started, error)
        if self._notices is not None:
            await self._notice(self._notices, self.last_error if error else None)
        return stats

    async def _notice(self, notices: Notices, error: str | None) -> None:
        """Report a failing episode once, and its end; a notice the store cannot take
        is tried again after the next poll."""
        episode, now = self.episode, self._clock()
        try:
            if error is not None:
                if episode.failed(notices.redact(error), now):
                    await notices.emit([episode.failing(notices.service, now)])
                    episode.reported = True
            elif episode.succeeded():
                await notices.emit([episode.recovered(notices.service, now)])
                episode.reset()
        except BillnotifyError as exc:
            logger.error("cannot record the state of source %s: %s", self.name, exc)

    async def run(self) -> None:
        """Poll forever on the interval, and after :meth:`poll_now`, while the lease is
        held (at once when it is gained); the reconciler, if any, beside it under the
        same lease."""
        reconciler = self.reconciler
        if reconciler is None:
            await run_while_held(self.role, self._poll_forever)
            return
        async with asyncio.TaskGroup() as group:
            group.create_task(run_while_held(self.role, self._poll_forever))
            group.create_task(run_while_held(self.role, lambda: reconciler.run(self.busy)))

    async def _poll_forever(self) -> None:
        while True:
            # Cleared before the poll starts: a request that arrives while it runs may
            # concern a change it no longer sees, so it queues the next poll.
            self._wake.clear()
            started = time.monotonic()
            await self.run_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval)
                gap = started + self.min_gap - time.monotonic()
                if gap > 0:
                    await self._sleep(gap)
