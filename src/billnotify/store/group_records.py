"""The values the store trades in for grouped rules (SPEC §7.2): members, due groups,
flushes. See :class:`~billnotify.store.base.Groups`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from billnotify.store.records import NewDelivery


@dataclass(frozen=True, slots=True)
class GroupMember:
    """An event collected into a group of a grouped rule.

    Attributes:
        rule: the grouped rule.
        key: the group's key (canonical JSON of its ``group_by`` values).
        event_id: the event.
        event_seq: its position in the log (members flush in this order).
        flush_at: when the group flushes first, if this member opens it (now +
            ``group_wait``); a group already open keeps its time.
    """

    rule: str
    key: str
    event_id: str
    event_seq: int
    flush_at: datetime


@dataclass(frozen=True, slots=True)
class DueGroup:
    """A group whose flush time has come, with the members not flushed yet.

    Attributes:
        members: (event id, seq) of the members not flushed yet, oldest first (none:
            nothing arrived since the last flush; the group closes).
        flushes: how many flushes the group made so far.
    """

    rule: str
    key: str
    flush_at: datetime
    flushes: int
    members: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class GroupFlush:
    """One flush of a group, written in ONE transaction by
    :meth:`~billnotify.store.base.Groups.flush_group`.

    Attributes:
        rule: the grouped rule.
        key: the group.
        id: the flush's stable id (rule, key, first event id); None: nothing to flush,
            the group closes (unless a member arrived meanwhile).
        digest: the digest's JSON (the event its deliveries carry).
        event_ids: the members it flushes.
        deliveries: one per action of the rule, ``event_id`` = the flush's id.
        rendered: delivery id -> what a dry run would have sent (JSON).
        next_flush_at: when the group may flush again (now + ``group_interval``).
    """

    rule: str
    key: str
    id: str | None = None
    digest: str = ""
    event_ids: tuple[str, ...] = ()
    deliveries: tuple[NewDelivery, ...] = ()
    rendered: Mapping[str, str] = field(default_factory=dict)
    next_flush_at: datetime | None = None
