"""MQTT topic names (SPEC §3): pure functions, no I/O.

Layout under ``prefix``::

    {prefix}/status                                   retained online / offline
    {prefix}/status/{instance}                        the same, per instance (several)
    {prefix}/events/{source}/{entity}/{id}/{action}   one message per event
                                   (the service's own: {service}/delivery/{dlv_id}/dead)
    {prefix}/state/{source}/{entity}/{id}             retained latest record

A topic level must not contain ``/``, ``+``, ``#`` or NUL; record ids come from the
platforms, so such characters (and ``%`` itself, to stay reversible) are
percent-encoded: id ``A/7`` becomes the level ``A%2F7``.
"""

from __future__ import annotations

import re

from billnotify.events import CloudEvent

_ESCAPES = {"%": "%25", "/": "%2F", "+": "%2B", "#": "%23", "\0": "%00"}
_TABLE = str.maketrans(_ESCAPES)
_SPECIAL = re.compile("[%/+#\0]")


def topic_level(value: str) -> str:
    """One topic level: ``value`` with ``/ + # %`` and NUL percent-encoded.

    An empty value becomes ``_`` so the topic keeps its shape.
    """
    if not value:
        return "_"
    # most levels (names, numeric ids) need no escape: a scan is cheaper than a translate
    return value.translate(_TABLE) if _SPECIAL.search(value) else value


def status_topic(prefix: str, instance: str | None = None) -> str:
    """The availability topic: ``{prefix}/status`` for a single process,
    ``{prefix}/status/{instance}`` for each of several sharing one state (SPEC §7.1)."""
    return f"{prefix}/status" if instance is None else f"{prefix}/status/{topic_level(instance)}"


def client_id(base: str, instance: str | None = None) -> str:
    """The MQTT client id: ``client_id``, or ``{client_id}-{instance}`` for each of several
    processes (one id shared by several would knock each other off the broker)."""
    return base if instance is None else f"{base}-{instance}"


def event_topic(prefix: str, event: CloudEvent) -> str:
    """``{prefix}/events/{source}/{entity}/{id}/{action}`` for one event."""
    return logged_event_topic(prefix, event.type, event.source, event.subject)


def logged_event_topic(prefix: str, type_: str, source: str, subject: str) -> str:
    """:func:`event_topic` from an event's ``type``, ``source`` and ``subject`` as logged."""
    # Called once per published event: the parts are taken apart here directly
    # rather than through the event's properties. The service's own events
    # (``billnotify.delivery.dead``) drop their prefix: entity ``delivery``, action ``dead``.
    entity, _, action = type_.removeprefix("billnotify.").partition(".")
    return (
        f"{prefix}/events/{topic_level(source.removeprefix('billnotify://'))}"
        f"/{topic_level(entity)}/{topic_level(subject.partition('/')[2])}"
        f"/{topic_level(action)}"
    )


def state_topic(prefix: str, source: str, entity: str, object_id: str) -> str:
    """``{prefix}/state/{source}/{entity}/{id}``: the retained state of one record."""
    return "/".join(
        (prefix, "state", topic_level(source), topic_level(entity), topic_level(object_id))
    )


def events_filter(prefix: str) -> str:
    """A subscription filter matching every event topic."""
    return f"{prefix}/events/#"


def state_filter(prefix: str) -> str:
    """A subscription filter matching every retained state topic."""
    return f"{prefix}/state/#"
