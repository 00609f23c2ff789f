"""Due deliveries read and checked ahead of need, for the delivery worker (SPEC §4.1).

The worker takes its next deliveries from a :class:`DueQueue`, which reads due rows,
their events and the disabled endpoints in one store trip
(:meth:`~billnotify.store.base.Ledger.read_due`), in the background while requests are in
flight, so that starting the next deliveries never waits for a read.

A delivery that must not be sent is settled here, without an attempt: its rule or event
disappeared, no executor handles its action, its webhook endpoint was disabled (410
Gone), or it is dry-run under the current config.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from billnotify.actions.base import ActionExecutor
from billnotify.config.models import Action, Rule, WebhookAction
from billnotify.deliveries.base import DeliveryStatus
from billnotify.deliveries.holds import Holds
from billnotify.deliveries.ledger import settle_without_sending
from billnotify.deliveries.policy import schedule_for
from billnotify.deliveries.settings import DeliverySettings
from billnotify.digests import is_flush_id
from billnotify.errors import StoreError
from billnotify.notices import Notices
from billnotify.rules.matching import effective_dry_run
from billnotify.store.base import Deliveries, Digests, Ledger
from billnotify.store.base import Holds as HoldStore
from billnotify.store.records import DueDelivery

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]


class DueStore(Ledger, Deliveries, Digests, HoldStore, Protocol):
    """What the due queue needs of the store: due rows, and settling those not sent;
    the digests grouped rules' deliveries carry."""


@dataclass(slots=True)
class Job:
    """A delivery to attempt, with everything its attempt needs.

    Attributes:
        event: the event's JSON as logged; it is parsed when the attempt begins, so
            that the many jobs waiting hold strings, not objects to garbage-collect.
        number: the attempt's number, once its ``sending`` is committed (0 before).
    """

    delivery: DueDelivery
    rule: Rule
    action: Action
    event: str
    executor: ActionExecutor
    schedule: Sequence[timedelta]
    number: int = 0


class DueQueue:
    """Due deliveries, read and checked ahead, in the order they came due.

    Args:
        settings: the delivery stage's settings (rules, dry run, retry schedules).
        store: the state store.
        executors: action type -> executor.
        clock: returns the current UTC time.
        held: the ids the worker holds (starting, or in flight until their outcome is
            committed): never read again while held.
        settled: the worker's counts by status, for deliveries settled here.
        on_ready: called when a background read queued or settled deliveries.
        notices: reports the deliveries settled ``dead`` here (see
            :mod:`billnotify.notices`).

    Attributes:
        disabled: disabled endpoint -> reason, as of the last read (and the worker's own
            410s since).
        more: the last read filled its page (there may be more due now).
    """

    def __init__(
        self,
        settings: DeliverySettings,
        store: DueStore,
        executors: Mapping[str, ActionExecutor],
        clock: Clock,
        *,
        held: Callable[[], Collection[str]],
        settled: dict[str, int],
        on_ready: Callable[[], None],
        notices: Notices | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.executors = executors
        self.clock = clock
        self.disabled: dict[str, str] = {}
        self.more = True
        self._held = held
        self._settled = settled
        self._on_ready = on_ready
        self._notices = notices
        self._ready: collections.deque[Job] = collections.deque()
        self.holds = Holds(settings, store, settled=settled)
        """Mute windows and rate limits."""
        self._reading = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._ready)

    def peek(self) -> Job:
        """The next job (the queue must not be empty)."""
        return self._ready[0]

    def pop(self) -> Job:
        """Take the next job (the queue must not be empty)."""
        return self._ready.popleft()

    def ids(self) -> set[str]:
        """The deliveries queued."""
        return {job.delivery.id for job in self._ready}

    async def read(self, target: int) -> int:
        """Read and check due deliveries until ``target`` are queued.

        Returns:
            How many were settled without sending instead.
        """
        async with self._reading:  # one read at a time: none can queue a row twice
            want = target - len(self._ready)
            if want <= 0:
                return 0
            now = self.clock()
            held = self.ids()
            held.update(self._held())
            batch = await self.store.read_due(now, limit=want, exclude=held)
            self.more = len(batch.deliveries) >= want
            self.disabled = batch.disabled
            settled = 0
            for delivery in batch.deliveries:
                job = await self._prepare(delivery, now)
                if job is None:
                    settled += 1
                else:
                    self._ready.append(job)
            return settled

    def read_in_background(self, target: int) -> None:
        """Top the queue up to ``target`` while the requests just started are in flight."""
        if not self.more or len(self._ready) >= target:
            return
        if self._background is None or self._background.done():
            self._background = asyncio.create_task(
                self._read_quietly(target), name="delivery-read-ahead"
            )

    async def stop(self) -> None:
        """Cancel a background read."""
        if self._background is not None:
            self._background.cancel()
            await asyncio.gather(self._background, return_exceptions=True)
            self._background = None

    async def still_sendable(self, job: Job) -> bool:
        """Re-check a job read ahead against what changed since (a 410 from its endpoint);
        a job that is not is settled ``dead`` here. Then hold it back if a mute window
        or a rate limit says so (:mod:`~billnotify.deliveries.holds`)."""
        action = job.action
        if isinstance(action, WebhookAction) and action.endpoint in self.disabled:
            reason = f"endpoint {action.endpoint!r} disabled: {self.disabled[action.endpoint]}"
            logger.warning("delivery %s: dead without sending: %s", job.delivery.id, reason)
            await settle_without_sending(
                self.store, job.delivery.id, DeliveryStatus.DEAD, reason, self.clock()
            )
            self._settled[DeliveryStatus.DEAD.value] += 1
            if self._notices is not None:
                self._notices.delivery(job.delivery.id)
            return False
        if self.holds:
            return await self.holds.release(job.delivery, job.rule, job.action, self.clock)
        return True

    async def _read_quietly(self, target: int) -> None:
        try:
            if await self.read(target) or self._ready:
                self._on_ready()
        except StoreError as exc:
            logger.warning("reading due deliveries ahead failed: %s", exc)

    async def _prepare(self, delivery: DueDelivery, now: datetime) -> Job | None:
        """Check a due delivery; None when it is not to be sent (it is settled here)."""
        rule = self.settings.rules.get(delivery.rule)
        action = _action_at(rule, delivery)
        executor = self.executors.get(delivery.action_type)
        event = delivery.event
        if event is None and is_flush_id(delivery.event_id):  # a grouped rule's digest
            event = await self.store.get_digest(delivery.event_id)
        reason: str | None = None
        if rule is None or action is None:
            reason = f"rule {delivery.rule!r} action {delivery.action_index} no longer exists"
        elif event is None:
            reason = f"event {delivery.event_id} is not in the log"
        elif executor is None:
            reason = f"no executor for {delivery.action_type!r} actions"
        elif isinstance(action, WebhookAction) and action.endpoint in self.disabled:
            reason = f"endpoint {action.endpoint!r} disabled: {self.disabled[action.endpoint]}"
        if reason is not None:
            logger.warning("delivery %s: dead without sending: %s", delivery.id, reason)
            await settle_without_sending(self.store, delivery.id, DeliveryStatus.DEAD, reason, now)
            self._settled[DeliveryStatus.DEAD.value] += 1
            if self._notices is not None:
                self._notices.delivery(delivery.id)
            return None
        assert rule is not None and action is not None and event is not None
        assert executor is not None
        if effective_dry_run(self.settings.dry_run, rule, action):
            await self.store.set_delivery_status(
                delivery.id, DeliveryStatus.DRY_RUN, now=now, note="dry run: not sent"
            )
            self._settled[DeliveryStatus.DRY_RUN.value] += 1
            return None
        schedule = schedule_for(self.settings, action)
        return Job(delivery, rule, action, event, executor, schedule)


def _action_at(rule: Rule | None, delivery: DueDelivery) -> Action | None:
    """The action a delivery was recorded for, if the config still has it unchanged."""
    if rule is None or not 0 <= delivery.action_index < len(rule.actions):
        return None
    action = rule.actions[delivery.action_index]
    return action if action.type == delivery.action_type else None
