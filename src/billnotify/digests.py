"""A group's digest as one value: the events of one flush of a grouped rule (SPEC §7.2).

A flush of a grouped rule becomes ONE delivery per action. What that delivery carries
is a :class:`~billnotify.events.CloudEvent` of type :data:`DIGEST_TYPE` whose ``data``
is ``{"group": {...}, "count": N, "events": [CloudEvent, ...]}`` (oldest first); its
``id`` is the flush's stable id. It never enters the event log: it is kept with the
flush in the store, and the executors see it where they would see an event.

Pure functions, no I/O: the group key of an event, the digest of a flush, the extra
template context (``events``, ``group``, ``count``) and a webhook's default body.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from billnotify.events import CloudEvent, canonical_json
from billnotify.hashing import digest

DIGEST_TYPE = "billnotify.digest"
"""The type of a digest (it is never logged, published or matched by rules)."""

FLUSH_PREFIX = "grp_"
"""How a flush's id starts (the log's event ids never do: they start ``evt_``)."""

MISSING = None
"""The group value of a path an event does not have (it groups with the others lacking it)."""


def is_digest(event: CloudEvent) -> bool:
    """Whether ``event`` is a digest of a grouped rule's flush."""
    return event.type == DIGEST_TYPE


def group_values(paths: Sequence[str], event: CloudEvent) -> dict[str, Any]:
    """The values of ``paths`` for one event: path -> value (None when absent).

    The paths read the template context (``event``, ``object``, ``previous``,
    ``source``), as ``config/groups.py`` checked them.
    """
    event_dict = event.model_dump(mode="json")
    data = event_dict.get("data") or {}
    roots: dict[str, Any] = {
        "event": event_dict,
        "object": data.get("object") or {},
        "previous": data.get("previous") or {},
        "source": event.source_name,
    }
    values: dict[str, Any] = {}
    for path in paths:
        root, *names = path.split(".")
        value: Any = roots.get(root)
        for name in names:
            value = value.get(name, MISSING) if isinstance(value, Mapping) else MISSING
        values[path] = value
    return values


def group_key(values: Mapping[str, Any]) -> str:
    """The group's key: canonical JSON of its values (``{}`` for the one group)."""
    return canonical_json(dict(values))


def flush_id(rule: str, key: str, first_event_id: str) -> str:
    """The stable id of a flush: (rule, group key, first event id)."""
    return FLUSH_PREFIX + digest(rule, key, first_event_id)[:32]


def is_flush_id(event_id: str) -> bool:
    """Whether a delivery's event id names a flush (its event is a digest)."""
    return event_id.startswith(FLUSH_PREFIX)


def digest_event(
    flush: str, key: str, events: Sequence[CloudEvent], *, rule: str = ""
) -> CloudEvent:
    """The digest of one flush: the events (oldest first) with their group.

    Args:
        flush: the flush's id (:func:`flush_id`).
        key: the group key (:func:`group_key`).
        events: the flushed events, oldest first (at least one: a flush without
            events is never made).
        rule: the grouped rule's name (the digest's subject).
    """
    sources = {e.source for e in events}
    source = sources.pop() if len(sources) == 1 else "billnotify://several"
    return CloudEvent(
        id=flush,
        source=source,
        type=DIGEST_TYPE,
        subject=f"rules/{rule}" if rule else "rules",
        time=events[-1].time,
        data={
            "group": json.loads(key),
            "count": len(events),
            "events": [e.model_dump(mode="json") for e in events],
        },
    )


def digest_context(event: CloudEvent) -> dict[str, Any]:
    """The template context a digest adds: ``events`` (oldest first), ``group``, ``count``.

    ``object`` and ``previous`` are empty in a digest: a template reads each event's own
    (``events[0].data.object``).
    """
    data = event.data
    return {
        "events": list(data.get("events") or []),
        "group": dict(data.get("group") or {}),
        "count": int(data.get("count") or 0),
    }


def default_body(event: CloudEvent) -> str:
    """A webhook's body when it sets no ``body`` template: the CloudEvent, or for a digest
    ``{"group": ..., "count": N, "events": [CloudEvent, ...]}``."""
    if not is_digest(event):
        return event.to_json()
    return json.dumps(
        {
            "group": event.data.get("group") or {},
            "count": event.data.get("count") or 0,
            "events": event.data.get("events") or [],
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )
