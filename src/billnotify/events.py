"""CloudEvents 1.0 (structured JSON) as billnotify emits them (SPEC §2)."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from billnotify import jsontext
from billnotify.config.types import RESOURCES
from billnotify.hashing import digest

ENTITY_RESOURCE = {entity: resource for resource, entity in RESOURCES.items()}
"""Entity -> the resource name used in subjects (``billing_task`` -> ``billing_tasks``)."""


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: equal values give equal text."""
    return jsontext.canonical(value)


@functools.lru_cache(maxsize=64)  # a poll's events share their time: one strftime a page
def format_time(value: datetime) -> str:
    """RFC 3339 UTC with seconds, ``2026-11-21T10:15:02Z``."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class CloudEvent(BaseModel):
    """One billnotify event, a CloudEvents 1.0 structured-mode JSON object."""

    model_config = ConfigDict(frozen=True, extra="allow")

    specversion: str = "1.0"
    id: str
    source: str
    type: str
    subject: str
    time: str
    datacontenttype: str = "application/json"
    data: dict[str, Any] = Field(default_factory=dict)

    @property
    def source_name(self) -> str:
        """The configured source name (``billnotify://acme`` -> ``acme``)."""
        return self.source.removeprefix("billnotify://")

    @property
    def entity(self) -> str:
        """``billing_task``, ``billing_run``, ``invoice`` or ``billing_header``."""
        return self.type.partition(".")[0]

    @property
    def action(self) -> str:
        """The part after the dot: ``created``, ``status_changed``, ..."""
        return self.type.partition(".")[2]

    @property
    def object_id(self) -> str:
        """The id in the subject (``billing_tasks/1234`` -> ``1234``)."""
        return self.subject.partition("/")[2]

    def to_json(self) -> str:
        """The event as compact JSON: pydantic's text, written by ``orjson`` where that is
        the very same text (:func:`~billnotify.jsontext.compact`; 3.3 → 1.2 µs an event)."""
        extra = self.__pydantic_extra__
        text = jsontext.compact({**self.__dict__, **extra} if extra else self.__dict__)
        return self.model_dump_json() if text is None else text

    @classmethod
    def from_json(cls, text: str | bytes) -> CloudEvent:
        """Parse an event from JSON."""
        return cls.model_validate_json(text)


def event_id(source: str, subject: str, type_: str, key: str) -> str:
    """The deterministic id of an event: the same change always gets the same id.

    ``key`` identifies the change: the digest of the previous and current record for a
    change, the start time for a stall, the due date for an overdue invoice.
    """
    return "evt_" + digest(source, subject, type_, key)[:32]


def build_event(
    *,
    source: str,
    entity: str,
    object_id: str,
    type_: str,
    key: str,
    time: datetime,
    data: dict[str, Any],
) -> CloudEvent:
    """Assemble one CloudEvent with its deterministic id."""
    subject = f"{ENTITY_RESOURCE[entity]}/{object_id}"
    return CloudEvent(
        id=event_id(source, subject, type_, key),
        source=f"billnotify://{source}",
        type=type_,
        subject=subject,
        time=format_time(time),
        data=data,
    )
