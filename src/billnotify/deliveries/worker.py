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

A free slot is not enough when the request then queues for something scarcer (four SMTP
connections behind sixteen slots). An executor may offer a ``prepare`` step
(:func:`~billnotify.actions.base.preparer`; emails: the message built, a connection in
hand): its exactly-once deliveries go to a slot unstarted, and the slot prepares, then
commits ``sending`` for that one delivery (the store's group commit joins starts made
at once), then executes. A kill leaves ``sending`` at most one such delivery per
connection.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from billnotify.actions.base import ActionExecutor, Permit, preparer
from billnotify.clients.billing_platform import BillingPlatformClient
from billnotify.config.models import Config, WebhookAction
from billnotify.deliveries.base import AttemptResult, DeliveryStatus, Outcome
from billnotify.deliveries.due import DueQueue, Job
from billnotify.deliveries.outcomes import OutcomeWriter
from billnotify.deliveries.policy import AttemptReport, Decision, decide
from billnotify.deliveries.reconcile import InvoiceEmailReconciler
from billnotify.deliveries.slots import Slots
from billnotify.errors import StoreError
from billnotify.events import CloudEvent
from billnotify.logs import log_context
from billnotify.notices import Notices
from billnotify.store.base import AttemptEnd, Store

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]
Sleep = Callable[[float], Awaitable[object]]

_MIN_READ = 32
"""Due deliveries read at least per trip (a small concurrency would read a few at a time)."""
_NOTICED = (DeliveryStatus.DEAD, DeliveryStatus.UNCERTAIN)
"""Outcomes reported as events of the service's own (``billnotify.delivery.*``)."""


@dataclass(frozen=True)
class _Crash:
    """Stands in for an AttemptResult when an executor broke its never-raise promise."""

    outcome: Outcome
    error: str
    status_code: int | None = None
    retry_after: float | None = None
    disable_endpoint: bool = False


class DeliveryWorker:
    """Attempts due deliveries, at most ``service.delivery_concurrency`` at once.

    Args:
        config: the configuration (rules, webhooks, concurrency, dry run).
        store: the state store.
        executors: action type -> executor.
        clock: returns the current UTC time.
        sleep: waits a number of seconds (tests pass one that moves a fake clock).
        billing_clients: source name -> billing platform client, for reconciling
            uncertain invoice emails (none: uncertain rows wait for an operator).
        poll_interval: the longest idle wait (picks up work recorded by other processes,
            e.g. ``billnotify deliveries retry``).
        reconcile_interval: seconds between reconciliation passes.
        settle_after: see :class:`~billnotify.deliveries.reconcile.InvoiceEmailReconciler`.
        notices: reports deliveries that end ``dead`` or ``uncertain`` and endpoints
            disabled as events of the service's own (none: they are only logged).

    Attributes:
        attempts: attempts by outcome (``success``, ``retryable``, ...) since start.
        settled: deliveries by the status an attempt (or a check) left them in.
        recovered: (uncertain, rescheduled) found at start-up.
    """

    def __init__(
        self,
        config: Config,
        store: Store,
        executors: Mapping[str, ActionExecutor],
        clock: Clock,
        sleep: Sleep = asyncio.sleep,
        *,
        billing_clients: Mapping[str, BillingPlatformClient] | None = None,
        poll_interval: float = 5.0,
        reconcile_interval: float = 15.0,
        settle_after: timedelta | None = None,
        notices: Notices | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.executors = executors
        self.clock = clock
        self.sleep = sleep
        self.poll_interval = poll_interval
        self.reconcile_interval = reconcile_interval
        self.concurrency = config.service.delivery_concurrency
        self.notices = notices
        self.reconciler = InvoiceEmailReconciler(
            config, store, billing_clients or {}, clock, settle_after
        )
        self.attempts: dict[str, int] = {o.value: 0 for o in Outcome}
        self.settled: dict[str, int] = {s.value: 0 for s in DeliveryStatus}
        self.recovered: tuple[int, int] = (0, 0)
        self._ahead = 2 * self.concurrency
        """At-least-once deliveries started ahead of the free slots, at most."""
        self._read_size = max(4 * self.concurrency, _MIN_READ)
        self._due = DueQueue(
            config,
            store,
            executors,
            clock,
            held=self._held,
            settled=self.settled,
            on_ready=self._wake_up,
            notices=notices,
        )
        self._starting: set[str] = set()
        """Taken from the due queue, their ``sending`` not committed yet."""
        self._slots = Slots(
            self.concurrency, self._attempt, on_take=self._take, on_free=self._slot_freed
        )
        self._inflight: set[str] = set()
        """Attempts taken by a slot, until their outcome is committed."""
        self._disabling: set[asyncio.Task[None]] = set()
        self._outcomes = OutcomeWriter(store)
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        """Set when an attempt settled or a start ended (drain re-checks what is left)."""
        self._stopping = False
        self._drained = asyncio.Event()

    # -- public control ----------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Attempts running now (request under way, or outcome being committed)."""
        return len(self._inflight)

    def wake(self) -> None:
        """New deliveries were recorded: look at the ledger now."""
        self._due.more = True
        self._wake.set()

    async def recover(self) -> tuple[int, int]:
        """Resolve ``sending`` rows a previous process left behind (start-up only)."""
        self.recovered = await self.store.recover_in_flight(self.clock())
        if any(self.recovered):
            logger.warning(
                "recovered interrupted deliveries: %d uncertain, %d due again", *self.recovered
            )
        if self.notices is not None:
            # the ones recovery just made uncertain, and any a crash kept from being told
            try:
                await self.notices.sweep()
            except StoreError as exc:
                logger.error("cannot emit the notices of settled deliveries: %s", exc)
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
                await self.sleep(min(30.0, 0.5 * 2**failures))
        self._slots.open()
        failures = 0
        # reconciliation talks to the platform, which may be slow: never in this loop
        reconciling = (
            asyncio.create_task(self._reconcile_forever(), name="reconcile")
            if self.reconciler.billing_clients
            else None
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
                await self._idle(delay)
        finally:
            if self._stopping:
                await self._drained.wait()
            await self._due.stop()
            await self._slots.close()
            await self._outcomes.flush()
            if reconciling is not None:
                reconciling.cancel()
                await asyncio.gather(reconciling, return_exceptions=True)

    async def drain(self, grace: float | timedelta) -> int:
        """Stop taking work; wait up to ``grace`` for in-flight attempts.

        Attempts still running after ``grace`` are cancelled: their rows stay
        ``sending`` and the next start recovers them, as do deliveries started but not
        attempted yet.

        Returns:
            How many attempts were cut off.
        """
        self._stopping = True
        self._wake.set()
        await self._due.stop()
        seconds = grace.total_seconds() if isinstance(grace, timedelta) else float(grace)
        if self._busy():
            logger.info(
                "draining %d in-flight deliveries (up to %.1fs)",
                len(self._inflight) + self._slots.waiting + len(self._starting),
                seconds,
            )
        # a start under way when we were called adds attempts once it commits: wait for it
        await self._until_quiet(max(seconds, 0.0))
        cut = self._slots.busy | self._starting | self._slots.waiting_ids()
        await self._slots.close()
        for task in list(self._disabling):
            task.cancel()
        await asyncio.gather(*self._disabling, return_exceptions=True)
        await self._outcomes.flush()  # outcomes of attempts that ended before the cut
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
        settled = await self.reconciler.reconcile()
        if settled:
            self._wake.set()
        return settled

    # -- the loop ----------------------------------------------------------------------
    async def _reconcile_forever(self) -> None:
        while True:
            try:
                await self.reconcile()
            except Exception:
                logger.exception("reconciling uncertain deliveries failed")
            await self.sleep(self.reconcile_interval)

    async def _idle_delay(self) -> float:
        if self._slots.free <= 0:
            return self.poll_interval  # a slot that frees wakes us
        due = await self.store.next_due_at()
        if due is None:
            return self.poll_interval
        return min(max((due - self.clock()).total_seconds(), 0.05), self.poll_interval)

    async def _idle(self, delay: float) -> None:
        if self._wake.is_set():
            return
        if self.sleep is asyncio.sleep:  # a timer instead of two tasks per wait
            timer = asyncio.get_running_loop().call_later(delay, self._wake.set)
            try:
                await self._wake.wait()
            finally:
                timer.cancel()
            return
        waker = asyncio.ensure_future(self._wake.wait())
        sleeper = asyncio.ensure_future(self.sleep(delay))
        try:
            await asyncio.wait({waker, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waker, sleeper):
                task.cancel()
            await asyncio.gather(waker, sleeper, return_exceptions=True)

    def _wake_up(self) -> None:
        self._wake.set()

    def _held(self) -> set[str]:
        """Ids a read must leave out: starting, or in flight until committed settled."""
        return self._starting | self._inflight

    def _busy(self) -> bool:
        return bool(self._starting or self._slots.waiting or self._inflight)

    async def _until_quiet(self, timeout: float | None) -> bool:
        """Wait until nothing is starting, started or in flight; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self._busy():
            self._changed.clear()
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return False
            try:
                await asyncio.wait_for(self._changed.wait(), left)
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
        settled = 0
        if not self._due:
            settled += await self._due.read(max(room, self._read_size))
        taken: list[Job] = []
        jobs: list[Job] = []  # those started here; a slot prepares and starts the others
        while self._due and len(taken) < room:
            if len(taken) >= free and self._due.peek().delivery.exactly_once:
                break  # exactly-once deliveries start only for a free slot
            job = self._due.pop()
            if job.delivery.id in self._inflight:
                continue  # cannot happen (reads leave out what is held); never twice
            if await self._due.still_sendable(job):
                taken.append(job)
                self._starting.add(job.delivery.id)
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
                self._starting.difference_update(job.delivery.id for job in taken)
                raise
            finally:
                self._starting.difference_update(job.delivery.id for job in jobs)
                self._changed.set()
        for job in taken:
            if job.delivery.id in self._starting:
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

    # -- attempts ------------------------------------------------------------------------
    def _take(self, job: Job) -> None:
        self._inflight.add(job.delivery.id)

    def _slot_freed(self) -> None:
        if self._slots.waiting <= self._ahead // 2:
            self._wake.set()  # time to start the next group

    async def _attempt(self, job: Job) -> None:
        delivery = job.delivery
        with log_context(delivery_id=delivery.id, rule=delivery.rule, event_id=delivery.event_id):
            await self._attempt_logged(job)

    async def _attempt_logged(self, job: Job) -> None:
        delivery = job.delivery
        result: AttemptReport | None
        try:
            event = CloudEvent.from_json(job.event)
        except ValueError as exc:
            why = f"event {delivery.event_id} in the log cannot be read: {exc}"
            result = AttemptResult(Outcome.PERMANENT, error=" ".join(why.split())[:500])
            if job.number == 0 and not await self._start(job):
                return
        else:
            result = await self._execute(job, event)
            if result is None:
                return  # not started: it stays due
        # the slot frees, the delivery is not settled: it stays in flight (and out of
        # reach of the next read) until its outcome is committed
        try:
            self._conclude(job, result)
        except Exception:
            logger.exception("cannot record the outcome of delivery %s", delivery.id)
            self._forget(delivery.id)

    async def _execute(self, job: Job, event: CloudEvent) -> AttemptReport | None:
        """The attempt's result; None when a job handed over unstarted (number 0) was not
        started after all (draining, changed meanwhile, or the store failed)."""
        delivery = job.delivery
        permit: Permit | None = None
        try:
            if job.number == 0:
                prepare = preparer(job.executor)
                if prepare is not None:
                    permit = await prepare(job.action, event, job.rule, delivery_id=delivery.id)
                if not await self._start(job):
                    return None
            return await job.executor.execute(
                job.action, event, job.rule, delivery_id=delivery.id, attempt=job.number
            )
        except asyncio.CancelledError:
            raise  # drained or shut down: the row stays 'sending' for recovery
        except Exception as exc:
            logger.exception(
                "executor %s raised for delivery %s", delivery.action_type, delivery.id
            )
            return _Crash(Outcome.UNCERTAIN, f"executor crashed: {type(exc).__name__}: {exc}")
        finally:
            if permit is not None:
                permit.release()

    async def _start(self, job: Job) -> bool:
        """Commit ``sending`` for one exactly-once job whose request is ready to leave
        (prepared, its connection in hand); False (and forgotten) when it must not."""
        delivery_id = job.delivery.id
        number: int | None = None
        try:
            if not self._stopping:
                numbers = await self.store.start_attempts([delivery_id], self.clock())
                number = numbers.get(delivery_id)
                if number is None:
                    logger.info("delivery %s changed before its attempt; skipped", delivery_id)
        except StoreError as exc:
            logger.error("delivery %s: cannot record its start: %s", delivery_id, exc)
        finally:
            self._starting.discard(delivery_id)
            self._changed.set()
        if number is None:
            # still due (or settled by someone else): a later read finds it again
            self._forget(delivery_id, due_again=False)
            return False
        job.number = number
        return True

    # -- outcomes ----------------------------------------------------------------------
    def _conclude(self, job: Job, result: AttemptReport) -> None:
        """Decide the delivery's next state and queue it for the next group commit."""
        delivery, now = job.delivery, self.clock()
        decision = decide(
            result,
            attempt=job.number,
            exactly_once=delivery.exactly_once,
            schedule=job.schedule,
            now=now,
        )
        outcome = Outcome(result.outcome)
        end = AttemptEnd(
            delivery.id,
            job.number,
            finished_at=now,
            outcome=outcome,
            status=decision.status,
            next_attempt_at=decision.next_attempt_at,
            status_code=result.status_code,
            error=decision.error,
        )
        self._outcomes.put(
            end, functools.partial(self._committed, job, result, outcome, decision, now)
        )

    def _committed(
        self,
        job: Job,
        result: AttemptReport,
        outcome: Outcome,
        decision: Decision,
        now: datetime,
        error: BaseException | None,
    ) -> None:
        """The outcome's transaction is over: count the delivery settled (if committed)."""
        delivery = job.delivery
        if error is not None:
            logger.error("cannot record the outcome of delivery %s", delivery.id, exc_info=error)
            self._forget(delivery.id)
            return
        self.attempts[outcome.value] += 1
        self.settled[decision.status.value] += 1
        if self.notices is not None and decision.status in _NOTICED:
            self.notices.delivery(delivery.id)
        succeeded = decision.status is DeliveryStatus.SUCCEEDED
        level = logging.INFO if succeeded else logging.WARNING
        if logger.isEnabledFor(level):
            logger.log(
                level,
                "delivery %s (%s %s) attempt %d: %s -> %s%s",
                delivery.id,
                delivery.rule,
                delivery.target or delivery.action_type,
                job.number,
                outcome.value,
                decision.status.value,
                f": {decision.error}" if decision.error else "",
                extra={
                    "delivery_id": delivery.id,
                    "rule": delivery.rule,
                    "event_id": delivery.event_id,
                },
            )
        gone = decision.disable_endpoint or (
            outcome is Outcome.PERMANENT and result.status_code == 410
        )
        if gone and isinstance(job.action, WebhookAction):
            task = asyncio.create_task(
                self._disable(job.action.endpoint, delivery.id, now), name="disable-endpoint"
            )
            self._disabling.add(task)
            task.add_done_callback(self._disabling.discard)
            return
        self._forget(delivery.id, due_again=decision.status is DeliveryStatus.RETRY_SCHEDULED)

    async def _disable(self, endpoint: str, delivery_id: str, now: datetime) -> None:
        reason = f"410 Gone on delivery {delivery_id}"
        try:
            await self.store.disable_endpoint(endpoint, reason, now)
            self._due.disabled[endpoint] = reason
            logger.error("webhook endpoint %s disabled: %s", endpoint, reason)
            if self.notices is not None:
                self.notices.endpoint(endpoint, reason, now)
        except StoreError as exc:
            logger.error("cannot disable webhook endpoint %s: %s", endpoint, exc)
        finally:
            self._forget(delivery_id)

    def _forget(self, key: str, *, due_again: bool = True) -> None:
        """The delivery is settled (or given up on): out of the in-flight set.

        Args:
            due_again: it may come due again (a retry), which the loop must see.
        """
        self._inflight.discard(key)
        self._changed.set()
        if due_again:
            self._wake.set()
