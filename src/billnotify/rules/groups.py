"""Grouped rules: collect matching events per group, flush each group as one digest
(SPEC §7.2).

A rule with ``group_by`` / ``group_wait`` / ``group_interval`` does not record a delivery
per event. The rule handler **collects** each matching event into its group (the
values of the rule's ``group_by`` paths): a member row in the store, idempotent per
(rule, event), written before the handler's position moves past the event, so a crash
re-reads the batch and collects nothing twice. The first member of a group that is not
open opens it, due at now + ``group_wait``.

The :class:`Grouper` **flushes** due groups, in the process that holds the ``rules``
lease (the rule handler calls it between batches): the members not flushed yet, oldest
first, become one digest (:mod:`billnotify.digests`) and one delivery per action, whose
event id is the flush's stable id (rule, group key, first event id). The digest, the
members marked flushed, the deliveries and the group's next flush time (now +
``group_interval``) are ONE store transaction: a restart at any point neither loses nor
repeats a flush. A group found due with nothing new closes; the next event opens it
again and waits ``group_wait``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Protocol

from billnotify.actions.base import ActionExecutor
from billnotify.config.groups import DEFAULT_GROUP_INTERVAL, DEFAULT_GROUP_WAIT
from billnotify.config.models import Rule
from billnotify.deliveries.base import DeliveryStatus
from billnotify.deliveries.ledger import rendered_json, settle_without_sending
from billnotify.digests import digest_event, flush_id, group_key, group_values
from billnotify.events import CloudEvent, format_time
from billnotify.leases import Role
from billnotify.notices import Notices
from billnotify.rules.matching import effective_dry_run
from billnotify.store.base import Deliveries, EventLog, Groups
from billnotify.store.group_records import DueGroup, GroupFlush, GroupMember
from billnotify.store.records import NewDelivery, StoredEvent

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]

MAX_EVENTS_PER_FLUSH = 1000
"""The most events one digest carries; the rest wait for the group's next flush."""

_DUE_PER_PASS = 100


def group_wait(rule: Rule) -> timedelta:
    """How long a new group of ``rule`` collects before its first flush."""
    return DEFAULT_GROUP_WAIT if rule.group_wait is None else rule.group_wait


def group_interval(rule: Rule) -> timedelta:
    """The least time between two flushes of a group of ``rule``."""
    return DEFAULT_GROUP_INTERVAL if rule.group_interval is None else rule.group_interval


def member_of(rule: Rule, stored: StoredEvent, now: datetime) -> GroupMember:
    """The member an event makes of its group of ``rule`` (opening it, due after
    ``group_wait``, if it is not open)."""
    key = group_key(group_values(rule.group_by or [], stored.event))
    return GroupMember(rule.name, key, stored.event.id, stored.seq, now + group_wait(rule))


def digest_of(rule: Rule, events: Sequence[CloudEvent]) -> CloudEvent:
    """The digest a flush of the newest event's group would carry: that group's events
    among ``events`` (oldest first). For previews (``render``, the console)."""
    paths = rule.group_by or []
    key = group_key(group_values(paths, events[-1]))
    members = [e for e in events if group_key(group_values(paths, e)) == key]
    return digest_event(flush_id(rule.name, key, members[0].id), key, members, rule=rule.name)


class GroupStore(EventLog, Deliveries, Groups, Protocol):
    """What grouping needs of the store: members and flushes, the events flushed, and
    the rows it notes errors on."""


class Grouper:
    """Collects grouped rules' events and flushes due groups as digests.

    Args:
        rules: the configured rules (the grouped ones are used).
        dry_run: the global ``[service] dry_run`` switch.
        store: the state store.
        executors: action type -> executor (exactly-once flag, target, dry-run render).
        clock: returns the current UTC time.
        notices: reports digests recorded ``dead`` (no executor for an action).
        role: the ``rules`` lease (None: always held); flushes are fenced by it.
        on_recorded: called after a flush recorded new deliveries (wakes the worker).

    Attributes:
        flushed: flushes written since start by rule (every grouped rule, from 0), for
            ``billnotify_digest_flushes_total``.
    """

    def __init__(
        self,
        rules: Sequence[Rule],
        dry_run: bool,
        store: GroupStore,
        executors: Mapping[str, ActionExecutor],
        clock: Clock,
        *,
        notices: Notices | None = None,
        role: Role | None = None,
        on_recorded: Callable[[], None] | None = None,
    ) -> None:
        self.rules = {rule.name: rule for rule in rules if rule.grouped and rule.enabled}
        self.dry_run = dry_run
        self.store = store
        self.executors = executors
        self.clock = clock
        self.notices = notices
        self.role = role
        self.on_recorded = on_recorded
        self.flushed = dict.fromkeys(self.rules, 0)
        self.look_every = 1.0
        """Seconds between looks for due groups in a catch-up."""
        self._looked = 0.0

    def __bool__(self) -> bool:
        return bool(self.rules)

    async def collect(self, members: Sequence[GroupMember]) -> int:
        """Collect members into their groups; returns how many were new."""
        if not members:
            return 0
        return await self.store.add_group_members(members, self.clock())

    async def seconds_to_next_flush(self) -> float | None:
        """Seconds until the next group is due (0 when one is), None when none is open."""
        if not self.rules:
            return None
        at = await self.store.next_group_flush_at()
        if at is None:
            return None
        return max((at - self.clock()).total_seconds(), 0.0)

    async def flush_between_batches(self) -> int:
        """:meth:`flush_due`, at most once per :attr:`look_every` seconds: between the
        batches of a long catch-up, so that it holds no due digest back."""
        if not self.rules or time.monotonic() - self._looked < self.look_every:
            return 0
        return await self.flush_due()

    async def flush_due(self) -> int:
        """Flush the groups whose time has come (up to a page of them); returns how many
        deliveries were recorded."""
        if not self.rules:
            return 0
        self._looked = time.monotonic()
        now = self.clock()
        new = 0
        for group in await self.store.due_groups(
            now, limit=_DUE_PER_PASS, members_limit=MAX_EVENTS_PER_FLUSH
        ):
            new += await self.flush(group, now)
        return new

    async def flush(self, group: DueGroup, now: datetime) -> int:
        """Flush one due group: its digest and deliveries, or close it when nothing is
        new. Returns how many deliveries were recorded."""
        if self.role is not None:
            self.role.fence()  # not flushed by a process that lost the lease
        rule = self.rules.get(group.rule)
        if not group.members:
            await self.store.flush_group(GroupFlush(group.rule, group.key), now)
            return 0
        first = group.members[0][0]
        fid = flush_id(group.rule, group.key, first)
        ids = tuple(event_id for event_id, _ in group.members)
        events = [s.event for s in await self.store.get_events(list(ids))]
        interval = DEFAULT_GROUP_INTERVAL if rule is None else group_interval(rule)
        if rule is None or not events:
            why = "its rule is no longer grouped" if rule is None else "its events left the log"
            logger.warning(
                "group %s of rule %s: flushed without sending: %s", group.key, group.rule, why
            )
            flush = GroupFlush(group.rule, group.key, fid, "", ids, (), {}, now + interval)
            await self.store.flush_group(flush, now)
            return 0
        digest = digest_event(fid, group.key, events, rule=rule.name)
        planned = [
            await self._plan(rule, index, digest, group) for index in range(len(rule.actions))
        ]
        rendered = {d.id: r for d, r, _ in planned if r is not None}
        flush = GroupFlush(
            rule.name,
            group.key,
            fid,
            digest.to_json(),
            ids,
            tuple(d for d, _, _ in planned),
            rendered,
            now + interval,
        )
        new = await self.store.flush_group(flush, now)
        self.flushed[rule.name] = self.flushed.get(rule.name, 0) + 1
        logger.info(
            "rule %s: group %s flushed %d events as %s (%d deliveries)",
            rule.name,
            group.key,
            len(events),
            fid,
            new,
        )
        if new:
            for delivery, _, error in planned:
                if error is not None:
                    await settle_without_sending(
                        self.store, delivery.id, delivery.status, error, now
                    )
                    if self.notices is not None and delivery.status is DeliveryStatus.DEAD:
                        self.notices.delivery(delivery.id)
            if self.on_recorded is not None:
                self.on_recorded()
        return new

    async def _plan(
        self, rule: Rule, index: int, digest: CloudEvent, group: DueGroup
    ) -> tuple[NewDelivery, str | None, str | None]:
        """One action's delivery of a flush: (row, dry-run rendering, error to note)."""
        action = rule.actions[index]
        executor = self.executors.get(action.type)
        seq = group.members[-1][1]

        def row(status: DeliveryStatus, exactly_once: bool = True, target: str = "") -> NewDelivery:
            return NewDelivery(
                rule.name, index, action.type, digest.id, seq, exactly_once, target, status
            )

        if executor is None:
            error = f"no executor for {action.type!r} actions (is it configured?)"
            return row(DeliveryStatus.DEAD), None, error
        try:
            exactly_once = bool(executor.exactly_once(action))
        except Exception:
            exactly_once = True  # the safe side: never sent twice
        try:
            target = executor.target(action, digest)
        except Exception as exc:
            logger.warning("executor %s: target failed: %s", action.type, exc)
            target = ""
        if not effective_dry_run(self.dry_run, rule, action):
            return row(DeliveryStatus.PENDING, exactly_once, target), None, None
        try:
            rendered = await executor.render(action, digest, rule)
        except Exception as exc:  # a template error is recorded, never a crash
            error = f"dry run: cannot render: {type(exc).__name__}: {exc}"
            return row(DeliveryStatus.DRY_RUN, exactly_once, target), None, error
        return row(DeliveryStatus.DRY_RUN, exactly_once, target), rendered_json(rendered), None


async def group_status(store: Groups, now: datetime, limit: int = 1000) -> list[str]:
    """``billnotify status`` lines: the open groups, the events they hold, the next flush."""
    groups = await store.due_groups(datetime.max.replace(tzinfo=UTC), limit=limit)
    waiting = sum(len(g.members) for g in groups)
    line = f"groups: {len(groups)} open, {waiting} events waiting for their flush"
    if groups:
        soonest = min(g.flush_at for g in groups)
        line += f"; next flush {format_time(soonest)}" + (" (due now)" if soonest <= now else "")
    return [line]
