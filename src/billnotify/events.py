"""CloudEvents 1.0 (structured JSON) as billnotify emits them (SPEC §2)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from billnotify.config.types import RESOURCES

ENTITY_RESOURCE = {entity: resource for resource, entity in RESOURCES.items()}
"""Entity -> the resource name used in subjects (``billing_task`` -> ``billing_tasks``)."""


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: equal values give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def digest(*parts: str) -> str:
    """A hex SHA-256 over ``parts`` joined unambiguously."""
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(4, "big"))
        h.update(part.encode())
    return h.hexdigest()


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
    _logged: str | None = PrivateAttr(default=None)
    """The JSON this event was parsed from (:meth:`from_json`), which :meth:`to_json`
    gives back instead of serialising the event again."""

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
        """The event as compact JSON (as logged, for an event read from the log)."""
        # the private attribute read from its dict: ``self._logged`` takes pydantic's
        # ``__getattr__``, slower than serialising a small event
        private = self.__pydantic_private__
        logged = private.get("_logged") if private else None
        return logged if logged is not None else self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes) -> CloudEvent:
        """Parse an event from JSON (which :meth:`to_json` will give back)."""
        event = cls.model_validate_json(text)
        event._logged = text if isinstance(text, str) else text.decode("utf-8")
        return event

    def __eq__(self, other: object) -> bool:
        """Events with equal fields are equal, whether parsed or built."""
        if not isinstance(other, CloudEvent):
            return NotImplemented
        return bool(
            self.__dict__ == other.__dict__ and self.__pydantic_extra__ == other.__pydantic_extra__
        )

    __hash__ = None  # type: ignore[assignment]  # data is a dict: never hashable

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy; one with ``update`` serialises itself again (its JSON changed)."""
        copy = super().model_copy(update=update, deep=deep)
        if update:
            copy._logged = None
        return copy


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
