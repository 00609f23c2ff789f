"""The rule handler: turns the event log into recorded deliveries (SPEC §4, §4.1).

It reads the log in order from its position (``rules``), batch by batch. For each event
it computes the deliveries the rules call for and records them **and** its new position
in one store transaction, so a crash either loses the whole batch (it is read again) or
keeps all of it; delivery ids are deterministic, so a batch recorded twice inserts
nothing new. It never sends anything: the :class:`~billnotify.deliveries.worker.DeliveryWorker`
does, from the ledger.

With several processes on one store, only the holder of the ``rules`` lease runs it
(:func:`~billnotify.leases.run_while_held`); it looks at the lease before recording each
batch, so a process that lost it stops.

Dry-run deliveries (global, rule or action ``dry_run``) are rendered here and recorded
with status ``dry_run`` and what would have been sent; the worker never picks them up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from billnotify.actions.base import ActionExecutor, fixed_target
from billnotify.chain_results import chain_results
from billnotify.config.models import Action, Rule
from billnotify.deliveries.base import DeliveryStatus
from billnotify.deliveries.chain import sample_results
from billnotify.deliveries.ledger import RULES_CONSUMER, rendered_json, settle_without_sending
from billnotify.errors import FencedError, StoreError
from billnotify.events import CloudEvent
from billnotify.leases import Role, run_while_held
from billnotify.notices import Notices
from billnotify.rules.groups import Grouper, member_of
from billnotify.rules.matching import Match, admits, effective_dry_run, match_event
from billnotify.store.base import Deliveries, EventLog, Groups, Ledger
from billnotify.store.group_records import GroupMember
from billnotify.store.records import LogEntry, NewDelivery, StoredEvent

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]


class Evaluator(Protocol):
    """What the handler needs of ``TemplateRenderer``: evaluating ``when``."""

    def evaluate(self, expression: str, context: Mapping[str, Any]) -> bool:
        """Evaluate a Jinja expression to a bool (raises on errors)."""
        ...


class RuleStore(EventLog, Ledger, Deliveries, Groups, Protocol):
    """What the rule handler needs of the store: the log it reads, the ledger it records
    deliveries in (with its position), the rows it notes errors on, grouped rules'
    members and flushes."""


@dataclass(frozen=True, slots=True)
class RuleSettings:
    """What the rule handler reads of the configuration.

    Attributes:
        rules: the configured rules, in order.
        dry_run: the global ``[service] dry_run`` switch.
    """

    rules: Sequence[Rule]
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class Planned:
    """A delivery to record, with what must be noted beside it.

    Attributes:
        delivery: the ledger row.
        error: why it is recorded ``dead`` (a failed ``when``) or why a dry run could
            not render.
        rendered: JSON of what a dry run would have sent.
    """

    delivery: NewDelivery
    error: str | None = None
    rendered: str | None = None


class RuleHandler:
    """Consumes the event log and records deliveries.

    Args:
        settings: the rules and the dry-run switch.
        store: the state store.
        renderer: evaluates ``when`` expressions.
        executors: action type -> executor (exactly-once flag, target, dry-run render).
        clock: returns the current UTC time.
        batch_size: events read and recorded per transaction.
        idle_timeout: seconds to wait for ``store.appended`` before looking anyway
            (events appended by another process do not notify this one).
        on_recorded: called after new deliveries were recorded (wakes the worker).
        consumer: the position name in the log.
        notices: reports deliveries recorded ``dead`` (a ``when`` or a template that
            failed) as ``billnotify.delivery.dead``.
        role: the ``rules`` lease it works under (None: always).
    """

    def __init__(
        self,
        settings: RuleSettings,
        store: RuleStore,
        renderer: Evaluator,
        executors: Mapping[str, ActionExecutor],
        clock: Clock,
        *,
        batch_size: int = 200,
        idle_timeout: float = 5.0,
        on_recorded: Callable[[], None] | None = None,
        consumer: str = RULES_CONSUMER,
        notices: Notices | None = None,
        role: Role | None = None,
    ) -> None:
        self.settings = settings
        self.role = role
        self.store = store
        self.renderer = renderer
        self.executors = executors
        self.clock = clock
        self.batch_size = batch_size
        self.idle_timeout = idle_timeout
        self.on_recorded = on_recorded
        self.consumer = consumer
        self.notices = notices
        self.events_processed = 0
        """Events consumed since start (for metrics)."""
        self.deliveries_recorded = 0
        """New deliveries recorded since start (for metrics)."""
        self._fixed = _fixed_rules(settings, executors)
        self.grouper = Grouper(
            settings.rules,
            settings.dry_run,
            store,
            executors,
            clock,
            notices=notices,
            role=role,
            on_recorded=on_recorded,
        )
        """Collects grouped rules' events and flushes their digests (``rules/groups.py``)."""
        self._members: list[GroupMember] = []
        """Grouped rules' members planned, collected by the next :meth:`record`."""
        self._admitted: dict[tuple[str, str], list[Rule]] = {}
        """(type, source) -> the rules whose ``on`` and ``sources`` admit such events."""

    # -- the loop --------------------------------------------------------------------
    async def run(self) -> None:
        """Process the log forever (while the lease is held): catch up, then wait for
        new events."""
        await run_while_held(self.role, self._follow)

    async def _follow(self) -> None:
        failures = 0
        while True:
            try:
                await self.catch_up()
                await self.grouper.flush_due()
                failures = 0
                await self.wait_for_events(await self.grouper.seconds_to_next_flush())
            except FencedError:
                raise
            except StoreError as exc:
                failures += 1
                delay = min(30.0, 0.5 * 2**failures)
                logger.error("rule handler: %s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)

    async def wait_for_events(self, timeout: float | None = None) -> None:
        """Return when the log has grown past our position, or after ``idle_timeout``
        (or ``timeout``, when sooner: a group is due to flush).

        The check happens under the condition's lock, and the store notifies under it
        after committing, so an append between the check and the wait cannot be missed.
        """
        position = await self.store.get_position(self.consumer)
        async with self.store.appended:
            if await self.store.last_seq() > position:
                return
            wait = self.idle_timeout
            if timeout is not None:  # floored: groups still due after a flush spin no loop
                wait = min(max(timeout, 0.05), self.idle_timeout)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.store.appended.wait(), wait)

    async def catch_up(self) -> int:
        """Process batches until the log is exhausted; returns how many events."""
        total = 0
        while True:
            count = await self.process_batch()
            if count == 0:
                return total
            total += count
            await self.grouper.flush_between_batches()  # a long catch-up delays no digest

    async def process_batch(self) -> int:
        """Read, plan and record one batch; returns how many events it held."""
        position = await self.store.get_position(self.consumer)
        planned, first, last, count = await self._plan_batch(position)
        if not count:
            return 0
        if self.role is not None:
            self.role.fence()  # not recorded by a process that lost the lease meanwhile
        # the batch's parsed events are gone by now: none is held while the store writes
        new = await self.record(planned, last)
        self.events_processed += count
        logger.debug(
            "rules: events %d..%d -> %d deliveries (%d new)", first, last, len(planned), new
        )
        return count

    async def _plan_batch(self, position: int) -> tuple[list[Planned], int, int, int]:
        """Read the batch after ``position`` and plan it: (planned, first seq, last seq,
        events). With no rules at all (events to MQTT only) nothing is read: the batch is
        the rest of the log, planned empty, and ``events`` the seqs it spans."""
        if not self.settings.rules:
            last = await self.store.last_seq()
            return [], position + 1, max(last, position), max(0, last - position)
        batch = await self.store.read_log(position, limit=self.batch_size)
        if not batch:
            return [], position, position, 0
        planned: list[Planned] = []
        for entry in batch:
            admitted = self._admitted.get((entry.type, entry.source))
            if admitted is None:
                admitted = [r for r in self.settings.rules if admits(r, entry.type, entry.source)]
                if len(self._admitted) >= 1024:  # event types and sources are few
                    self._admitted.clear()
                self._admitted[(entry.type, entry.source)] = admitted
            if not admitted:
                continue
            planned.extend(await self._plan_entry(entry, admitted))
        return planned, batch[0].seq, batch[-1].seq, len(batch)

    # -- planning --------------------------------------------------------------------
    async def _plan_entry(self, entry: LogEntry, admitted: Sequence[Rule]) -> list[Planned]:
        """The deliveries one log entry calls for, given the rules that admit it.

        When every admitted rule is fixed (:func:`_fixed_rules`), its deliveries are
        known without the event, so it is not parsed: a parsed event per log entry is
        what the garbage collector would otherwise walk (``python -m bench ledger``).
        Otherwise the event goes through :meth:`plan`, the one general path.
        """
        if all(rule.name in self._fixed for rule in admitted):
            return [
                Planned(
                    NewDelivery(
                        d.rule,
                        d.action_index,
                        d.action_type,
                        entry.id,
                        entry.seq,
                        d.exactly_once,
                        d.target,
                    )
                )
                for rule in admitted
                for d in self._fixed[rule.name]
            ]
        event = CloudEvent.from_json(entry.json)  # one at a time, dropped once planned
        return await self.plan(StoredEvent(entry.seq, event))

    async def plan(self, stored: StoredEvent) -> list[Planned]:
        """The deliveries one event calls for (nothing is written)."""
        event = stored.event
        matches = match_event(self.settings.rules, event, self.renderer.evaluate)
        planned: list[Planned] = []
        for match in matches:
            if match.rule.grouped and match.error is None:
                if match.action_index == 0:  # one member per rule, whatever its actions
                    self._members.append(member_of(match.rule, stored, self.clock()))
                continue
            planned.append(await self._plan_match(stored, match))
        return planned

    async def _plan_match(self, stored: StoredEvent, match: Match) -> Planned:
        rule, action, event = match.rule, match.action, stored.event
        executor = self.executors.get(action.type)

        def row(status: DeliveryStatus, exactly_once: bool = True, target: str = "") -> NewDelivery:
            return NewDelivery(
                rule=rule.name,
                action_index=match.action_index,
                action_type=action.type,
                event_id=event.id,
                event_seq=stored.seq,
                exactly_once=exactly_once,
                target=target,
                status=status,
            )

        if executor is None:
            error = f"no executor for {action.type!r} actions (is it configured?)"
            return Planned(row(DeliveryStatus.DEAD), error=error)
        exactly_once, target = _describe(executor, action, event)
        if match.error is not None:
            return Planned(row(DeliveryStatus.DEAD, exactly_once, target), error=match.error)
        if not effective_dry_run(self.settings.dry_run, rule, action):
            # a chained action waits for the one it runs after (deliveries/chain.py)
            first = DeliveryStatus.WAITING if action.after else DeliveryStatus.PENDING
            return Planned(row(first, exactly_once, target))
        delivery = row(DeliveryStatus.DRY_RUN, exactly_once, target)
        try:
            with chain_results(sample_results(rule, match.action_index, event)):
                rendered = await executor.render(action, event, rule)
        except Exception as exc:  # a template error is recorded, never a crash
            error = f"dry run: cannot render: {type(exc).__name__}: {exc}"
            return Planned(delivery, error=error)
        return Planned(delivery, rendered=rendered_json(rendered))

    # -- recording -------------------------------------------------------------------
    async def record(
        self, planned: Sequence[Planned], position: int, *, consumer: str | None = None
    ) -> int:
        """Record planned deliveries and move the position in one transaction.

        Args:
            planned: the deliveries.
            position: the log position they take the consumer to.
            consumer: whose position (default: the handler's own).

        Returns:
            How many deliveries were new.
        """
        now = self.clock()
        # grouped rules' members first: collecting is idempotent, so a crash before the
        # position moves collects them again, and nothing twice
        members, self._members = self._members, []
        await self.grouper.collect(members)
        rendered = {p.delivery.id: p.rendered for p in planned if p.rendered is not None}
        new = await self.store.record_deliveries(
            [p.delivery for p in planned],
            consumer or self.consumer,
            position,
            now,
            rendered=rendered,
        )
        for item in planned:
            if item.error is not None:
                await self._note_error(item, now)
        self.deliveries_recorded += new
        if new and self.on_recorded is not None:
            self.on_recorded()
        return new

    async def _note_error(self, item: Planned, now: datetime) -> None:
        # Only a row this very planning created: an existing delivery (a replay, or a
        # batch read again after a crash) may have moved on and must keep its history.
        current = await self.store.get_delivery(item.delivery.id)
        if current is None or current.attempts or current.last_error:
            return
        if current.status is not item.delivery.status:
            return
        assert item.error is not None
        await settle_without_sending(self.store, current.id, current.status, item.error, now)
        if self.notices is not None and current.status is DeliveryStatus.DEAD:
            self.notices.delivery(current.id)


def _describe(executor: ActionExecutor, action: Action, event: CloudEvent) -> tuple[bool, str]:
    """The executor's exactly-once flag and target hint, defensively."""
    try:
        exactly_once = bool(executor.exactly_once(action))
    except Exception:
        logger.exception("executor %s: exactly_once failed; assuming exactly-once", action.type)
        exactly_once = True  # the safe side: never sent twice
    try:
        target = executor.target(action, event)
    except Exception as exc:
        logger.warning("executor %s: target failed: %s", action.type, exc)
        target = ""
    return exactly_once, target


def _fixed_rules(
    settings: RuleSettings, executors: Mapping[str, ActionExecutor]
) -> dict[str, list[NewDelivery]]:
    """Rules whose deliveries do not depend on the event they match, with those
    deliveries (event id and seq left blank).

    Such a rule has no ``when``, is not dry-run for any of its actions, and each action's
    executor gives a :func:`~billnotify.actions.base.fixed_target`: what
    :meth:`RuleHandler.plan` would record for it, it records without parsing the event.
    """
    fixed: dict[str, list[NewDelivery]] = {}
    for rule in settings.rules:
        if rule.grouped or (rule.when is not None and rule.when.strip()):
            continue
        if any(action.after for action in rule.actions):
            continue  # its chained actions are recorded waiting
        deliveries: list[NewDelivery] = []
        for index, action in enumerate(rule.actions):
            executor = executors.get(action.type)
            if executor is None or effective_dry_run(settings.dry_run, rule, action):
                break
            try:
                target = fixed_target(executor, action)
                exactly_once = bool(executor.exactly_once(action))
            except Exception:
                break  # planned per event, where a failure is handled
            if target is None:
                break
            deliveries.append(
                NewDelivery(rule.name, index, action.type, "", 0, exactly_once, target)
            )
        else:
            fixed[rule.name] = deliveries
    return fixed
