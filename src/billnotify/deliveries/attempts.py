"""One delivery's attempt, from a slot taking it to its outcome committed (SPEC §4.1).

A job handed to a slot is started already (``sending`` committed by the worker), or,
for an exactly-once job whose executor offers a ``prepare`` step, not yet: then the
slot prepares it (the message built, a connection in hand), commits ``sending`` for
this one delivery and executes it (a kill leaves ``sending`` at most one such delivery
per connection). The result becomes the delivery's next status
(:func:`~billnotify.deliveries.policy.decide`), queued for the next group commit
(:class:`~billnotify.deliveries.outcomes.OutcomeWriter`); a delivery leaves the
in-flight set only once that commit is over.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from billnotify.actions.base import Permit, preparer
from billnotify.chain_results import chain_results
from billnotify.config.models import WebhookAction
from billnotify.deliveries.base import AttemptResult, DeliveryStatus, Outcome
from billnotify.deliveries.chain import ChainFollower, Settled
from billnotify.deliveries.due import DueQueue, Job
from billnotify.deliveries.outcomes import OutcomeWriter
from billnotify.deliveries.policy import AttemptReport, Decision, decide
from billnotify.errors import StoreError
from billnotify.events import CloudEvent
from billnotify.logs import log_context
from billnotify.notices import Notices
from billnotify.store.base import Chains, Endpoints, Ledger
from billnotify.store.records import AttemptEnd, DueDelivery

logger = logging.getLogger(__name__)

_NOTICED = (DeliveryStatus.DEAD, DeliveryStatus.UNCERTAIN)
"""Outcomes reported as events of the service's own (``billnotify.delivery.*``)."""


class AttemptStore(Ledger, Endpoints, Chains, Protocol):
    """What an attempt needs of the store: starting and finishing it, disabling an
    endpoint that answered 410 Gone, keeping its answer for the actions chained to it."""


@dataclass(frozen=True)
class _Crash:
    """Stands in for an AttemptResult when an executor broke its never-raise promise."""

    outcome: Outcome
    error: str
    status_code: int | None = None
    retry_after: float | None = None
    disable_endpoint: bool = False


class AttemptRunner:
    """Runs the attempts the slots take, and keeps what is starting or in flight.

    Args:
        store: the state store.
        clock: returns the current UTC time.
        due: the due queue (an endpoint disabled here is known to it at once).
        attempts: counts attempts by outcome.
        settled: counts deliveries by the status an attempt left them in.
        wake: tells the worker's loop that a delivery may come due again.
        notices: reports deliveries that end ``dead`` or ``uncertain`` and endpoints
            disabled.
        chains: keeps answers, gives chained actions their ``results`` and moves a
            delivery's dependents on once its outcome is committed (none: no rule
            chains actions).

    Attributes:
        starting: taken from the due queue, their ``sending`` not committed yet.
        inflight: taken by a slot, until their outcome is committed.
        changed: set when an attempt settled or a start ended.
        stopping: a drain began: no job is started any more.
    """

    def __init__(
        self,
        store: AttemptStore,
        clock: Callable[[], datetime],
        due: DueQueue,
        *,
        attempts: dict[str, int],
        settled: dict[str, int],
        wake: Callable[[], None],
        notices: Notices | None = None,
        chains: ChainFollower | None = None,
    ) -> None:
        self.store = store
        self.chains = chains
        self.clock = clock
        self.starting: set[str] = set()
        self.inflight: set[str] = set()
        self.changed = asyncio.Event()
        self.stopping = False
        self._due = due
        self._attempts = attempts
        self._settled = settled
        self._wake = wake
        self._notices = notices
        self._outcomes = OutcomeWriter(store)
        self._disabling: set[asyncio.Task[None]] = set()
        self._following: set[asyncio.Task[object]] = set()

    def take(self, job: Job) -> None:
        """A slot took ``job``: it is in flight until its outcome is committed."""
        self.inflight.add(job.delivery.id)

    async def run(self, job: Job) -> None:
        """Attempt one job (never raises but for cancellation)."""
        delivery = job.delivery
        with log_context(delivery_id=delivery.id, rule=delivery.rule, event_id=delivery.event_id):
            await self._run_logged(job)

    async def close(self) -> None:
        """Cancel endpoint disabling under way; commit the outcomes queued."""
        for task in list(self._disabling):
            task.cancel()
        await asyncio.gather(*self._disabling, return_exceptions=True)
        await self.flush()
        # dependents not moved yet are moved by the sweep at the next start
        await asyncio.gather(*self._following, return_exceptions=True)

    async def flush(self) -> None:
        """Commit the outcomes queued so far."""
        await self._outcomes.flush()

    def forget(self, key: str, *, due_again: bool = True) -> None:
        """The delivery is settled (or given up on): out of the in-flight set.

        Args:
            due_again: it may come due again (a retry), which the worker must see.
        """
        self.inflight.discard(key)
        self.changed.set()
        if due_again:
            self._wake()

    # -- the attempt -------------------------------------------------------------------
    async def _run_logged(self, job: Job) -> None:
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
            await self._keep_answer(job, result)
        # the slot frees, the delivery is not settled: it stays in flight (and out of
        # reach of the next read) until its outcome is committed
        try:
            self._conclude(job, result)
        except Exception:
            logger.exception("cannot record the outcome of delivery %s", delivery.id)
            self.forget(delivery.id)

    async def _execute(self, job: Job, event: CloudEvent) -> AttemptReport | None:
        """The attempt's result; None when a job handed over unstarted (number 0) was not
        started after all (draining, changed meanwhile, or the store failed)."""
        delivery = job.delivery
        results: dict[str, Any] = {}
        if self.chains is not None and self.chains.chained(delivery.rule, delivery.action_index):
            try:
                results = await self.chains.results_for(
                    delivery.rule, delivery.action_index, delivery.event_id
                )
            except StoreError as exc:  # nothing was sent
                why = f"cannot read the answers it runs after: {exc}"
                logger.error("delivery %s: %s", delivery.id, why)
                if job.number == 0:  # not started: it stays due
                    self.starting.discard(delivery.id)
                    self.forget(delivery.id, due_again=False)
                    return None
                return AttemptResult(Outcome.RETRYABLE, error=why[:500])
        try:
            with chain_results(results):
                return await self._prepare_and_execute(job, event)
        except asyncio.CancelledError:
            raise  # drained or shut down: the row stays 'sending' for recovery
        except Exception as exc:
            logger.exception(
                "executor %s raised for delivery %s", delivery.action_type, delivery.id
            )
            return _Crash(Outcome.UNCERTAIN, f"executor crashed: {type(exc).__name__}: {exc}")

    async def _prepare_and_execute(self, job: Job, event: CloudEvent) -> AttemptReport | None:
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
        finally:
            if permit is not None:
                permit.release()

    async def _keep_answer(self, job: Job, result: AttemptReport) -> None:
        """Keep a successful attempt's answer, before its success is committed: a
        dependent that runs once it is committed always finds it."""
        response = getattr(result, "response", None)
        delivery = job.delivery
        if (
            self.chains is None
            or result.outcome != Outcome.SUCCESS
            or response is None
            or not self.chains.keeps_result(delivery.rule, delivery.action_index)
        ):
            return
        try:
            await self.chains.keep(delivery.id, response, self.clock())
        except StoreError as exc:  # the dependents' templates will say what is missing
            logger.error("delivery %s: cannot keep its answer: %s", delivery.id, exc)

    async def _start(self, job: Job) -> bool:
        """Commit ``sending`` for one exactly-once job whose request is ready to leave
        (prepared, its connection in hand); False (and forgotten) when it must not."""
        delivery_id = job.delivery.id
        number: int | None = None
        try:
            if not self.stopping:
                numbers = await self.store.start_attempts([delivery_id], self.clock())
                number = numbers.get(delivery_id)
                if number is None:
                    logger.info("delivery %s changed before its attempt; skipped", delivery_id)
        except StoreError as exc:
            logger.error("delivery %s: cannot record its start: %s", delivery_id, exc)
        finally:
            self.starting.discard(delivery_id)
            self.changed.set()
        if number is None:
            # still due (or settled by someone else): a later read finds it again
            self.forget(delivery_id, due_again=False)
            return False
        job.number = number
        return True

    # -- the outcome -------------------------------------------------------------------
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
            self.forget(delivery.id)
            return
        self._attempts[outcome.value] += 1
        self._settled[decision.status.value] += 1
        if self._notices is not None and decision.status in _NOTICED:
            self._notices.delivery(delivery.id)
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
        if self.chains is not None and self.chains.has_dependents(
            delivery.rule, delivery.action_index
        ):
            self._follow(delivery, decision.status)
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
        self.forget(delivery.id, due_again=decision.status is DeliveryStatus.RETRY_SCHEDULED)

    def _follow(self, delivery: DueDelivery, status: DeliveryStatus) -> None:
        """Move the delivery's dependents on, now that its outcome is committed."""
        assert self.chains is not None
        settled = Settled(delivery.rule, delivery.action_index, delivery.event_id, status)
        task = asyncio.create_task(self._follow_quietly(settled), name="follow-chain")
        self._following.add(task)
        task.add_done_callback(self._following.discard)

    async def _follow_quietly(self, settled: Settled) -> None:
        assert self.chains is not None
        try:
            await self.chains.follow([settled])
        except StoreError as exc:  # the next sweep moves them
            logger.warning("moving the dependents of %s on failed: %s", settled, exc)

    async def _disable(self, endpoint: str, delivery_id: str, now: datetime) -> None:
        reason = f"410 Gone on delivery {delivery_id}"
        try:
            await self.store.disable_endpoint(endpoint, reason, now)
            self._due.disabled[endpoint] = reason
            logger.error("webhook endpoint %s disabled: %s", endpoint, reason)
            if self._notices is not None:
                self._notices.endpoint(endpoint, reason, now)
        except StoreError as exc:
            logger.error("cannot disable webhook endpoint %s: %s", endpoint, exc)
        finally:
            self.forget(delivery_id)
