"""The delivery worker: attempts recorded deliveries from the ledger (SPEC §4.1).

Each attempt follows one path::

    pending / retry_scheduled --start_attempts (committed)--> sending --execute-->
        succeeded | retry_scheduled | dead | uncertain

``sending`` is committed **before** the request goes out, so a process killed mid-send
leaves evidence: at the next start :meth:`DeliveryWorker.recover` turns exactly-once
rows into ``uncertain`` (never sent twice) and others into due-now (retried). How an
attempt's result becomes the next status is :func:`billnotify.deliveries.policy.decide`.

How the work flows:

- a :class:`~billnotify.deliveries.due.DueQueue` reads due deliveries ahead, in the
  background, and settles those that must not be sent;
- the worker starts them in groups: one transaction commits ``sending`` for a group
  before any of its requests goes out; once committed every one of them is attempted,
  even if a drain began meanwhile;
- a fixed pool of ``delivery_concurrency`` slots takes started deliveries one after the
  other and runs their attempts;
- outcomes are committed in groups (:class:`~billnotify.deliveries.outcomes.OutcomeWriter`);
  a delivery counts as settled, and leaves the in-flight set, only once its outcome is
  committed, and :meth:`DeliveryWorker.drain` waits for that.

So that a slot that frees never waits for a transaction, at-least-once deliveries are
started ahead: at most twice ``delivery_concurrency`` of them committed ``sending`` and
waiting for a slot (a start can take as long as two rounds of requests to a fast
receiver). A process killed then leaves them ``sending`` and
recovery makes them due again, which is what at-least-once allows. Exactly-once
deliveries are started only for a slot that is free, so recovery turns into
``uncertain`` only deliveries whose request was about to go out or had gone.

Every process on a shared store runs a worker: a claim (``start_attempts``) skips rows
another process holds, recovery resolves only the rows of dead instances
(:mod:`~billnotify.deliveries.recovery`), the store's ``due_changed`` wakes an idle
worker when any process makes work due, and reconciliation runs in the one process that
holds the ``reconcile`` lease.

A free slot is not enough when the request then queues for something scarcer (four SMTP
connections behind sixteen slots): an executor's ``prepare`` step lets its exactly-once
deliveries go to a slot unstarted, and the slot starts them
(:mod:`~billnotify.deliveries.attempts`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Protocol

from billnotify.actions.base import ActionExecutor, preparer
from billnotify.deliveries.attempts import AttemptRunner, AttemptStore
from billnotify.deliveries.base import DeliveryStatus, Outcome
from billnotify.deliveries.chain import ChainFollower
from billnotify.deliveries.due import DueQueue, DueStore, Job
from billnotify.deliveries.reconcile import InvoiceEmailReconciler
from billnotify.deliveries.recovery import Recovery, RecoveryStore
from billnotify.deliveries.settings import DeliverySettings
from billnotify.deliveries.slots import Slots
from billnotify.deliveries.timers import CallLater, call_later, wait_for_event
from billnotify.errors import StoreError
from billnotify.leases import RECONCILE, LeaseKeeper, run_while_held
from billnotify.notices import Notices

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]

_MIN_READ = 32
"""Due deliveries read at least per trip (a small concurrency would read a few at a time)."""


class WorkerStore(AttemptStore, DueStore, RecoveryStore, Protocol):
    """What the worker needs of the store: the ledger, delivery statuses, endpoints,
    who is alive."""


class DeliveryWorker:
    """Attempts due deliveries, at most ``settings.concurrency`` at once.

    Args:
        settings: the delivery stage's settings (rules, schedules, concurrency, dry run).
        store: the state store.
        executors: action type -> executor.
        clock: returns the current UTC time.
        timer: calls back after a number of seconds (every wait of the worker goes
            through it; tests pass one that moves a fake clock).
        reconciler: settles uncertain invoice emails from the platform (none:
            uncertain rows wait for an operator).
        poll_interval: the longest idle wait (picks up work recorded by other processes,
            e.g. ``billnotify deliveries retry``).
        reconcile_interval: seconds between reconciliation passes.
        notices: reports deliveries that end ``dead`` or ``uncertain`` and endpoints
            disabled as events of the service's own (none: they are only logged).
        keeper: this process's leases, when several processes may share the store.
        exclusive_store: no other process can use the store (SQLite under its lock):
            every ``sending`` row found at start is recovered at once.

    Attributes:
        attempts: attempts by outcome (``success``, ``retryable``, ...) since start.
        settled: deliveries by the status an attempt (or a check) left them in.
        recovered: (uncertain, rescheduled) found at start-up.
    """

    def __init__(
        self,
        settings: DeliverySettings,
        store: WorkerStore,
        executors: Mapping[str, ActionExecutor],
        clock: Clock,
        timer: CallLater = call_later,
        *,
        reconciler: InvoiceEmailReconciler | None = None,
        poll_interval: float = 5.0,
        reconcile_interval: float = 15.0,
        notices: Notices | None = None,
        keeper: LeaseKeeper | None = None,
        exclusive_store: bool = False,
    ) -> None:
        self.store = store
        self.executors = executors
        self.clock = clock
        self.timer = timer
        self.poll_interval = poll_interval
        self.reconcile_interval = reconcile_interval
        self.concurrency = settings.concurrency
        self.notices = notices
        self.reconciler = reconciler
        self.attempts: dict[str, int] = {o.value: 0 for o in Outcome}
        self.settled: dict[str, int] = {s.value: 0 for s in DeliveryStatus}
        self.recovered: tuple[int, int] = (0, 0)
        self._ahead = 2 * self.concurrency
        """At-least-once deliveries started ahead of the free slots, at most."""
        self._read_size = max(4 * self.concurrency, _MIN_READ)
        self._wake = asyncio.Event()
        self._due = DueQueue(
            settings,
            store,
            executors,
            clock,
            held=self._held,
            settled=self.settled,
            on_ready=self._wake.set,
            notices=notices,
        )
        self.chains = ChainFollower(settings.rules, store, clock)
        """Keeps invoice actions' answers; chained actions (false when no rule chains)."""
        self._runner = AttemptRunner(
            store,
            clock,
            self._due,
            attempts=self.attempts,
            settled=self.settled,
            wake=self._wake.set,
            notices=notices,
            chains=self.chains,
        )
        self._slots = Slots(
            self.concurrency, self._runner.run, on_take=self._runner.take, on_free=self._slot_freed
        )
        self._stopping = False
        self._drained = asyncio.Event()
        self._recovery = Recovery(
            store,
            clock,
            keeper=keeper,
            notices=notices,
            on_due=self.wake,
            exclusive=exclusive_store,
        )
        reconciling = reconciler is not None and bool(reconciler.billing_clients)
        self._reconcile_role = keeper.role(RECONCILE) if keeper and reconciling else None

    # -- public control ----------------------------------------------------------------
    @property
    def held(self) -> dict[str, int]:
        """Deliveries held back since start, by reason (``mute``, ``rate_limit``)."""
        return self._due.holds.held

    @property
    def in_flight(self) -> int:
        """Attempts running now (request under way, or outcome being committed)."""
        return len(self._runner.inflight)

    def wake(self) -> None:
        """New deliveries were recorded: look at the ledger now."""
        self._due.more = True
        self._wake.set()

    async def recover(self) -> tuple[int, int]:
        """Resolve ``sending`` rows a previous process (or a dead one) left behind."""
        self.recovered = await self._recovery.at_start()
        if self.chains:  # dependents a crash left behind their predecessor
            await self.chains.sweep(whole=True)
        return self.recovered

    async def run(self) -> None:
        """Recover, then attempt deliveries as they come due until :meth:`drain`."""
        failures = 0
        while True:  # a store that cannot be written (a full disk) is waited out
            try:
                await self.recover()
                break
            except StoreError as exc:
                failures += 1
                if failures == 1:
                    logger.error("delivery worker: %s; retrying until the store recovers", exc)
                await self._sleep(min(30.0, 0.5 * 2**failures))
        self._slots.open()
        failures = 0
        # reconciliation talks to the platform, which may be slow: never in this loop
        helpers = [
            asyncio.create_task(self._recovery.sweep_forever(self._sleep), name="recover"),
            asyncio.create_task(self._follow_due(), name="due-wake"),
        ]
        if self.chains:
            helpers.append(asyncio.create_task(self._sweep_chains(), name="chains"))
        if self.reconciler is not None and self.reconciler.billing_clients:
            helpers.append(
                asyncio.create_task(
                    run_while_held(self._reconcile_role, self._reconcile_forever),
                    name="reconcile",
                )
            )
        try:
            while not self._stopping:
                self._wake.clear()
                try:
                    started = await self._fill()
                    delay = 0.0 if started else await self._idle_delay()
                    failures = 0
                except StoreError as exc:
                    failures += 1
                    delay = min(30.0, 0.5 * 2**failures)
                    logger.error("delivery worker: %s; retrying in %.1fs", exc, delay)
                if self._stopping:
                    break
                await wait_for_event(self._wake, delay, self.timer)
        finally:
            for helper in helpers:
                helper.cancel()
            try:
                if self._stopping:
                    await self._drained.wait()
                await self._due.stop()
                await self._slots.close()
                await self._runner.flush()
            finally:
                await asyncio.gather(*helpers, return_exceptions=True)

    async def drain(self, grace: float | timedelta) -> int:
        """Stop taking work; wait up to ``grace`` for in-flight attempts.

        Attempts still running after ``grace`` are cancelled: their rows stay
        ``sending`` and the next start recovers them, as do deliveries started but not
        attempted yet.

        Returns:
            How many attempts were cut off.
        """
        self._stopping = self._runner.stopping = True
        self._wake.set()
        await self._due.stop()
        seconds = grace.total_seconds() if isinstance(grace, timedelta) else float(grace)
        if self._busy():
            logger.info(
                "draining %d in-flight deliveries (up to %.1fs)",
                len(self._runner.inflight) + self._slots.waiting + len(self._runner.starting),
                seconds,
            )
        # a start under way when we were called adds attempts once it commits: wait for it
        await self._until_quiet(max(seconds, 0.0))
        cut = self._slots.busy | self._runner.starting | self._slots.waiting_ids()
        await self._slots.close()
        await self._runner.close()  # outcomes of attempts that ended before the cut
        if cut:
            logger.warning("%d deliveries left 'sending' for recovery at next start", len(cut))
        self._drained.set()
        return len(cut)

    async def run_once(self) -> int:
        """Start every due delivery (up to the concurrency) and wait for them (tests)."""
        self._slots.open()
        started = 0
        try:
            while self._slots.free > 0 and (taken := await self._fill()):
                started += taken
            await self._due.stop()
            await self._until_quiet(None)
        finally:
            await self._slots.close()
        return started

    async def reconcile(self) -> int:
        """Reconcile uncertain invoice emails now; returns how many were settled."""
        if self.reconciler is None:
            return 0
        settled = await self.reconciler.reconcile()
        if settled:
            self._wake.set()
        return settled

    # -- the loop ----------------------------------------------------------------------
    async def _sleep(self, delay: float) -> None:
        await wait_for_event(asyncio.Event(), delay, self.timer)

    async def _follow_due(self) -> None:
        """Wake when the store says work became due (another process's, too)."""
        due = self.store.due_changed
        while True:
            async with due:
                await due.wait()
            self.wake()

    async def _sweep_chains(self) -> None:
        """Move on dependents whose predecessor changed elsewhere (an operator, the
        reconciler, another process)."""
        while True:
            await self._sleep(self.reconcile_interval)
            try:
                await self.chains.sweep()
            except StoreError as exc:
                logger.warning("sweeping chained deliveries failed: %s", exc)

    async def _reconcile_forever(self) -> None:
        while True:
            try:
                await self.reconcile()
            except Exception:
                logger.exception("reconciling uncertain deliveries failed")
            await self._sleep(self.reconcile_interval)

    async def _idle_delay(self) -> float:
        if self._slots.free <= 0:
            return self.poll_interval  # a slot that frees wakes us
        due = await self.store.next_due_at()
        if due is None:
            return self.poll_interval
        return min(max((due - self.clock()).total_seconds(), 0.05), self.poll_interval)

    def _held(self) -> set[str]:
        """Ids a read must leave out: starting, or in flight until committed settled."""
        return self._runner.starting | self._runner.inflight

    def _busy(self) -> bool:
        return bool(self._runner.starting or self._slots.waiting or self._runner.inflight)

    def _slot_freed(self) -> None:
        if self._slots.waiting <= self._ahead // 2:
            self._wake.set()  # time to start the next group

    async def _until_quiet(self, timeout: float | None) -> bool:
        """Wait until nothing is starting, started or in flight; False on timeout."""
        loop = asyncio.get_running_loop()
        changed = self._runner.changed
        deadline = None if timeout is None else loop.time() + timeout
        while self._busy():
            changed.clear()
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return False
            try:
                await asyncio.wait_for(changed.wait(), left)
            except TimeoutError:
                return not self._busy()
        return True

    async def _fill(self) -> int:
        """Start due deliveries for the free slots (and ahead of them, see the module
        docstring); returns how many were taken or settled."""
        if self._stopping:
            return 0
        free = self._slots.free
        room = free + self._ahead
        if room <= 0:
            return 0
        runner = self._runner
        settled = 0
        if not self._due:
            settled += await self._due.read(max(room, self._read_size))
        taken: list[Job] = []
        jobs: list[Job] = []  # those started here; a slot prepares and starts the others
        while self._due and len(taken) < room:
            if len(taken) >= free and self._due.peek().delivery.exactly_once:
                break  # exactly-once deliveries start only for a free slot
            job = self._due.pop()
            if job.delivery.id in runner.inflight:
                continue  # cannot happen (reads leave out what is held); never twice
            if await self._due.still_sendable(job):
                taken.append(job)
                runner.starting.add(job.delivery.id)
                if not (job.delivery.exactly_once and preparer(job.executor) is not None):
                    jobs.append(job)
            else:
                settled += 1
        if not taken:
            return settled
        numbers: dict[str, int] = {}
        if jobs:
            try:
                numbers = await self.store.start_attempts(
                    [job.delivery.id for job in jobs], self.clock()
                )
            except BaseException:
                runner.starting.difference_update(job.delivery.id for job in taken)
                raise
            finally:
                runner.starting.difference_update(job.delivery.id for job in jobs)
                runner.changed.set()
        for job in taken:
            if job.delivery.id in runner.starting:
                self._slots.put(job)  # number 0: its slot prepares and starts it
                continue
            number = numbers.get(job.delivery.id)
            if number is None:
                logger.info("delivery %s changed before its attempt; skipped", job.delivery.id)
                continue
            job.number = number
            self._slots.put(job)
        if not self._stopping:
            self._due.read_in_background(self._read_size)
        return len(taken) + settled
