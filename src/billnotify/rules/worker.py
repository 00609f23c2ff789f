"""The delivery worker: attempts recorded deliveries from the ledger (SPEC §4.1).

Each attempt follows one path::

    pending / retry_scheduled --start_attempt (committed)--> sending --execute-->
        succeeded | retry_scheduled | dead | uncertain

``sending`` is committed **before** the request goes out, so a process killed mid-send
leaves evidence: at the next start :meth:`DeliveryWorker.recover` turns exactly-once
rows into ``uncertain`` (never sent twice) and others into due-now (retried). How an
attempt's result becomes the next status is :func:`billnotify.rules.policy.decide`.

Both writes are batched without loosening that order: the deliveries taken in one pass
are started in one transaction (committed before any of their requests), and outcomes
that arrive while a commit is under way are committed together in the next one
(group commit). An attempt counts as settled, and leaves the in-flight set, only once
its outcome is committed; :meth:`DeliveryWorker.drain` waits for pending outcomes.

Nothing is sent for a delivery whose rule or event disappeared, whose webhook endpoint
was disabled (410 Gone), or that is dry-run under the current config.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from billnotify.actions.base import ActionExecutor
from billnotify.clients.billing_platform import BillingPlatformClient
from billnotify.config.models import Action, Config, Rule, WebhookAction
from billnotify.errors import StoreError
from billnotify.events import CloudEvent
from billnotify.rules.ledger import settle_without_sending
from billnotify.rules.matching import effective_dry_run
from billnotify.rules.outcomes import OutcomeWriter
from billnotify.rules.policy import AttemptReport, Decision, decide, schedule_for
from billnotify.rules.reconcile import InvoiceEmailReconciler
from billnotify.store.base import AttemptEnd, Delivery, DeliveryStatus, Outcome, Store

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]
Sleep = Callable[[float], Awaitable[object]]


@dataclass(frozen=True)
class _Job:
    """A delivery to attempt (its ``sending`` committed before the attempt runs)."""

    delivery: Delivery
    rule: Rule
    action: Action
    event: CloudEvent
    executor: ActionExecutor
    number: int


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
        settle_after: see :class:`~billnotify.rules.reconcile.InvoiceEmailReconciler`.

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
    ) -> None:
        self.config = config
        self.store = store
        self.executors = executors
        self.clock = clock
        self.sleep = sleep
        self.poll_interval = poll_interval
        self.reconcile_interval = reconcile_interval
        self.concurrency = config.service.delivery_concurrency
        self.reconciler = InvoiceEmailReconciler(
            config, store, billing_clients or {}, clock, settle_after
        )
        self.attempts: dict[str, int] = {o.value: 0 for o in Outcome}
        self.settled: dict[str, int] = {s.value: 0 for s in DeliveryStatus}
        self.recovered: tuple[int, int] = (0, 0)
        self._rules = {rule.name: rule for rule in config.rules}
        self._disabled: dict[str, str] = {}
        self._inflight: dict[str, asyncio.Task[None]] = {}
        """Every attempt task, from its start until its outcome is committed."""
        self._requesting: set[str] = set()
        """Attempts whose request is under way: these are what the concurrency limits."""
        self._ready: collections.deque[_Job] = collections.deque()
        """Due deliveries read and checked ahead, not started yet."""
        self._starting: set[str] = set()
        """Taken from ``_ready``, their ``sending`` not committed yet."""
        self._start: asyncio.Task[dict[str, int]] | None = None
        """The transaction committing ``sending`` for ``_starting`` (drain waits for it)."""
        self._more = True
        """The last read of due deliveries filled its page (there may be more)."""
        self._reading = asyncio.Lock()
        self._prefetch: asyncio.Task[None] | None = None
        self._outcomes = OutcomeWriter(store)
        self._wake = asyncio.Event()
        self._stopping = False
        self._drained = asyncio.Event()

    # -- public control ----------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Attempts running now (request under way, or outcome being committed)."""
        return len(self._inflight)

    def wake(self) -> None:
        """New deliveries were recorded: look at the ledger now."""
        self._more = True
        self._wake.set()

    async def recover(self) -> tuple[int, int]:
        """Resolve ``sending`` rows a previous process left behind (start-up only)."""
        self.recovered = await self.store.recover_in_flight(self.clock())
        if any(self.recovered):
            logger.warning(
                "recovered interrupted deliveries: %d uncertain, %d due again", *self.recovered
            )
        return self.recovered

    async def run(self) -> None:
        """Recover, then attempt deliveries as they come due until :meth:`drain`."""
        await self.recover()
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
            await self._stop_prefetch()
            for task in self._inflight.values():
                task.cancel()
            await self._outcomes.flush()
            if reconciling is not None:
                reconciling.cancel()
                await asyncio.gather(reconciling, return_exceptions=True)

    async def drain(self, grace: float | timedelta) -> int:
        """Stop taking work; wait up to ``grace`` for in-flight attempts.

        Attempts still running after ``grace`` are cancelled: their rows stay
        ``sending`` and the next start recovers them.

        Returns:
            How many attempts were cut off.
        """
        self._stopping = True
        self._wake.set()
        await self._stop_prefetch()
        seconds = grace.total_seconds() if isinstance(grace, timedelta) else float(grace)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(seconds, 0.0)
        if self._inflight:
            logger.info(
                "draining %d in-flight deliveries (up to %.1fs)", len(self._inflight), seconds
            )
        # a start under way when we were called adds attempts once it commits: loop
        while loop.time() < deadline:
            waiting = [*self._inflight.values(), *([self._start] if self._start else [])]
            if not waiting:
                break
            await asyncio.wait(waiting, timeout=deadline - loop.time())
        pending = list(self._inflight.values())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await self._outcomes.flush()  # outcomes of attempts cut off while committing
        if pending:
            logger.warning("%d deliveries left 'sending' for recovery at next start", len(pending))
        self._drained.set()
        return len(pending)

    async def run_once(self) -> int:
        """Start every due delivery (up to the concurrency) and wait for them (tests)."""
        started = 0
        while len(self._requesting) < self.concurrency and (taken := await self._fill()):
            started += taken
        await self._stop_prefetch()
        tasks = list(self._inflight.values())
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
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
        if len(self._requesting) >= self.concurrency:
            return self.poll_interval  # a finishing attempt wakes us
        due = await self.store.next_due_at()
        if due is None:
            return self.poll_interval
        return min(max((due - self.clock()).total_seconds(), 0.05), self.poll_interval)

    async def _idle(self, delay: float) -> None:
        if self._wake.is_set():
            return
        waker = asyncio.ensure_future(self._wake.wait())
        sleeper = asyncio.ensure_future(self.sleep(delay))
        try:
            await asyncio.wait({waker, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waker, sleeper):
                task.cancel()
            await asyncio.gather(waker, sleeper, return_exceptions=True)

    async def _fill(self) -> int:
        """Start due deliveries into free slots; returns how many were taken or settled.

        Due deliveries are read (with their events) and checked ahead of need, in the
        background, so a slot that frees only waits for the transaction that marks its
        successor ``sending``.
        """
        free = self.concurrency - len(self._requesting)
        if free <= 0 or self._stopping:
            return 0
        settled = 0
        if not self._ready:
            settled += await self._read_ahead(self.concurrency + free)
        jobs: list[_Job] = []
        while self._ready and len(jobs) < free:
            job = self._ready.popleft()
            if job.delivery.id in self._inflight:
                continue  # cannot happen (reads leave out what is held); never twice
            if await self._still_sendable(job):
                jobs.append(job)
                self._starting.add(job.delivery.id)
            else:
                settled += 1
        if not jobs:
            return settled
        # 'sending' for the whole group in one transaction, before any request goes out;
        # once committed every one of them is attempted, even if a drain began meanwhile
        self._start = asyncio.ensure_future(
            self.store.start_attempts([job.delivery.id for job in jobs], self.clock())
        )
        try:
            numbers = await self._start
        finally:
            self._start = None
            self._starting.difference_update(job.delivery.id for job in jobs)
        for job in jobs:
            number = numbers.get(job.delivery.id)
            if number is None:
                logger.info("delivery %s changed before its attempt; skipped", job.delivery.id)
                continue
            self._launch(_Job(job.delivery, job.rule, job.action, job.event, job.executor, number))
        self._read_in_background()
        return len(jobs) + settled

    def _read_in_background(self) -> None:
        """Top the ready queue up while the requests just started are in flight."""
        if self._stopping or not self._more or len(self._ready) >= self.concurrency:
            return
        if self._prefetch is None or self._prefetch.done():
            self._prefetch = asyncio.create_task(self._prefetch_due(), name="delivery-read-ahead")

    async def _prefetch_due(self) -> None:
        try:
            if await self._read_ahead(self.concurrency) or self._ready:
                self._wake.set()
        except StoreError as exc:
            logger.warning("reading due deliveries ahead failed: %s", exc)

    async def _stop_prefetch(self) -> None:
        if self._prefetch is not None:
            self._prefetch.cancel()
            await asyncio.gather(self._prefetch, return_exceptions=True)
            self._prefetch = None

    async def _read_ahead(self, target: int) -> int:
        """Read and check due deliveries until ``target`` are ready; returns how many
        were settled without sending instead."""
        async with self._reading:  # one read at a time: none can queue a row twice
            want = target - len(self._ready)
            if want <= 0:
                return 0
            now = self.clock()
            # in flight: 'sending', or settled but not yet committed as such
            held = {job.delivery.id for job in self._ready} | self._starting
            held.update(self._inflight)
            due = await self.store.due_deliveries(now, limit=want, exclude=held)
            self._more = len(due) >= want
            if not due:
                return 0
            self._disabled = await self.store.disabled_endpoints()
            events = {
                s.event.id: s.event
                for s in await self.store.get_events(sorted({d.event_id for d in due}))
            }
            settled = 0
            for delivery in due:
                job = await self._prepare(delivery, events.get(delivery.event_id), now)
                if job is None:
                    settled += 1
                else:
                    self._ready.append(job)
            return settled

    async def _still_sendable(self, job: _Job) -> bool:
        """Re-check a job read ahead against what changed since (a 410 from its endpoint)."""
        action = job.action
        if isinstance(action, WebhookAction) and action.endpoint in self._disabled:
            reason = f"endpoint {action.endpoint!r} disabled: {self._disabled[action.endpoint]}"
            logger.warning("delivery %s: dead without sending: %s", job.delivery.id, reason)
            await settle_without_sending(
                self.store, job.delivery.id, DeliveryStatus.DEAD, reason, self.clock()
            )
            self.settled[DeliveryStatus.DEAD.value] += 1
            return False
        return True

    def _launch(self, job: _Job) -> None:
        key = job.delivery.id
        task = asyncio.create_task(self._attempt(job), name=f"delivery-{key}")
        self._inflight[key] = task
        self._requesting.add(key)
        task.add_done_callback(functools.partial(self._done, key))

    def _release(self, key: str) -> None:
        """The request is over: its slot may take the next delivery."""
        if key in self._requesting:
            self._requesting.discard(key)
            self._wake.set()

    def _done(self, key: str, _task: asyncio.Task[None]) -> None:
        self._inflight.pop(key, None)
        self._release(key)
        self._wake.set()

    async def _prepare(
        self, delivery: Delivery, event: CloudEvent | None, now: datetime
    ) -> _Job | None:
        """Check a due delivery; None when it is not to be sent (it is settled here)."""
        rule = self._rules.get(delivery.rule)
        action = _action_at(rule, delivery)
        executor = self.executors.get(delivery.action_type)
        reason: str | None = None
        if rule is None or action is None:
            reason = f"rule {delivery.rule!r} action {delivery.action_index} no longer exists"
        elif event is None:
            reason = f"event {delivery.event_id} is not in the log"
        elif executor is None:
            reason = f"no executor for {delivery.action_type!r} actions"
        elif isinstance(action, WebhookAction) and action.endpoint in self._disabled:
            reason = f"endpoint {action.endpoint!r} disabled: {self._disabled[action.endpoint]}"
        if reason is not None:
            logger.warning("delivery %s: dead without sending: %s", delivery.id, reason)
            await settle_without_sending(self.store, delivery.id, DeliveryStatus.DEAD, reason, now)
            self.settled[DeliveryStatus.DEAD.value] += 1
            return None
        assert rule is not None and action is not None and event is not None
        assert executor is not None
        if effective_dry_run(self.config.service.dry_run, rule, action):
            await self.store.set_delivery_status(
                delivery.id, DeliveryStatus.DRY_RUN, now=now, note="dry run: not sent"
            )
            self.settled[DeliveryStatus.DRY_RUN.value] += 1
            return None
        return _Job(delivery, rule, action, event, executor, number=0)

    async def _attempt(self, job: _Job) -> None:
        delivery = job.delivery
        try:
            result: AttemptReport = await job.executor.execute(
                job.action, job.event, job.rule, delivery_id=delivery.id, attempt=job.number
            )
        except asyncio.CancelledError:
            raise  # drained or shut down: the row stays 'sending' for recovery
        except Exception as exc:
            logger.exception(
                "executor %s raised for delivery %s", delivery.action_type, delivery.id
            )
            result = _Crash(Outcome.UNCERTAIN, f"executor crashed: {type(exc).__name__}: {exc}")
        # the slot is free, the delivery is not settled: it stays in flight (and out of
        # reach of the next read) until its outcome is committed
        self._release(delivery.id)
        try:
            await self._finish(job, result)
        except Exception:
            logger.exception("cannot record the outcome of delivery %s", delivery.id)

    async def _finish(self, job: _Job, result: AttemptReport) -> None:
        delivery, now = job.delivery, self.clock()
        decision: Decision = decide(
            result,
            attempt=job.number,
            exactly_once=delivery.exactly_once,
            schedule=schedule_for(self.config, job.action),
            now=now,
        )
        outcome = Outcome(result.outcome)
        await self._outcomes.write(
            AttemptEnd(
                delivery.id,
                job.number,
                finished_at=now,
                outcome=outcome,
                status=decision.status,
                next_attempt_at=decision.next_attempt_at,
                status_code=result.status_code,
                error=decision.error,
            )
        )
        self.attempts[outcome.value] += 1
        self.settled[decision.status.value] += 1
        log = logger.info if decision.status is DeliveryStatus.SUCCEEDED else logger.warning
        log(
            "delivery %s (%s %s) attempt %d: %s -> %s%s",
            delivery.id,
            delivery.rule,
            delivery.target or delivery.action_type,
            job.number,
            outcome.value,
            decision.status.value,
            f": {decision.error}" if decision.error else "",
        )
        gone = decision.disable_endpoint or (
            outcome is Outcome.PERMANENT and result.status_code == 410
        )
        if gone and isinstance(job.action, WebhookAction):
            reason = f"410 Gone on delivery {delivery.id}"
            await self.store.disable_endpoint(job.action.endpoint, reason, now)
            self._disabled[job.action.endpoint] = reason
            logger.error("webhook endpoint %s disabled: %s", job.action.endpoint, reason)


def _action_at(rule: Rule | None, delivery: Delivery) -> Action | None:
    """The action a delivery was recorded for, if the config still has it unchanged."""
    if rule is None or not 0 <= delivery.action_index < len(rule.actions):
        return None
    action = rule.actions[delivery.action_index]
    return action if action.type == delivery.action_type else None
