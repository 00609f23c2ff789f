"""What the console's overview shows, read from the running service and the store.

One function builds it, for the page and for each live update: each source's last poll,
its lag and last error; MQTT's connection and backlog; deliveries by status; the rule
handler's backlog; the instances sharing the store and their leases. The live values are
a flat mapping ``key -> text`` that the page's script writes into the elements marked
``data-live="key"`` (no markup travels, only text).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from billnotify.components import Components
from billnotify.deliveries.base import DeliveryStatus
from billnotify.events import format_time
from billnotify.publish.mqtt import MqttPublisher
from billnotify.sources.base import Poller
from billnotify.store.base import Store
from billnotify.store.records import Instance, Lease


class Running(Protocol):
    """The parts of the running service the console reads (``app.Service`` has them)."""

    @property
    def pollers(self) -> Sequence[Poller]:
        """One per source resource."""

    @property
    def publisher(self) -> MqttPublisher | None:
        """The MQTT publisher (None when MQTT is off)."""

    @property
    def components(self) -> Components | None:
        """Every stage, once built (the rule handler and the executors)."""


@dataclass(frozen=True)
class SourceState:
    """One source resource as the overview shows it."""

    name: str
    state: str
    """``ok``, ``failing``, ``standby`` or ``not polled yet``."""
    last_poll: str
    """When it last polled successfully (``2026-11-21T10:00:00Z``, ``never``)."""
    lag: str
    """How old what billnotify knows of it is: the time since that poll (``12s``)."""
    error: str
    """The last poll's error (empty once a poll succeeds)."""
    polls: int


@dataclass(frozen=True)
class Overview:
    """Everything the overview page shows."""

    sources: list[SourceState]
    mqtt: str
    """``connected``, ``disconnected`` or ``off``."""
    mqtt_backlog: int
    rules_backlog: int
    events: int
    deliveries: dict[str, int]
    """Every status (0 when none), in :class:`DeliveryStatus` order."""
    instances: list[Instance] = field(default_factory=list)
    leases: list[Lease] = field(default_factory=list)
    disabled_endpoints: int = 0

    def live(self) -> dict[str, str]:
        """The values a live update carries: ``data-live`` key -> text."""
        values = {
            "events.total": str(self.events),
            "mqtt.state": self.mqtt,
            "mqtt.backlog": str(self.mqtt_backlog),
            "rules.backlog": str(self.rules_backlog),
            "endpoints.disabled": str(self.disabled_endpoints),
        }
        for status, count in self.deliveries.items():
            values[f"deliveries.{status}"] = str(count)
        for source in self.sources:
            values[f"source.{source.name}.state"] = source.state
            values[f"source.{source.name}.last_poll"] = source.last_poll
            values[f"source.{source.name}.lag"] = source.lag
            values[f"source.{source.name}.error"] = source.error or "none"
            values[f"source.{source.name}.polls"] = str(source.polls)
        return values


def span(seconds: float | None) -> str:
    """``12s``, ``3m 5s``, ``2h 10m``; ``—`` for none."""
    if seconds is None:
        return "—"
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60}s"
    return f"{whole // 3600}h {whole % 3600 // 60}m"


def _source(poller: Poller, now: float, wall: datetime) -> SourceState:
    since = None if poller.last_success is None else now - poller.last_success
    if poller.standby:
        state = "standby"
    elif poller.last_success is None and poller.last_error is None:
        state = "not polled yet"
    elif poller.last_error is not None or not poller.healthy(now):
        state = "failing"
    else:
        state = "ok"
    last = "never" if since is None else format_time(wall - timedelta(seconds=since))
    return SourceState(poller.name, state, last, span(since), poller.last_error or "", poller.polls)


async def read_overview(
    store: Store, running: Running | None, now: datetime, ttl: timedelta
) -> Overview:
    """The overview as of ``now`` (instances heard from within ``ttl`` count as live)."""
    monotonic = time.monotonic()
    pollers = list(running.pollers) if running is not None else []
    publisher = running.publisher if running is not None else None
    last = await store.last_seq()
    counts = {status.value: 0 for status in DeliveryStatus}
    for (_kind, status), count in (await store.count_deliveries()).items():
        counts[status] = counts.get(status, 0) + count
    mqtt = "off" if publisher is None else "connected" if publisher.connected else "disconnected"
    return Overview(
        sources=[_source(p, monotonic, now) for p in pollers],
        mqtt=mqtt,
        mqtt_backlog=max(0, last - await store.get_position("mqtt")) if publisher else 0,
        rules_backlog=max(0, last - await store.get_position("rules")),
        events=last,
        deliveries=counts,
        instances=await store.instances(now, ttl),
        leases=await store.leases(),
        disabled_endpoints=len(await store.disabled_endpoints()),
    )


def lease_line(lease: Lease, now: datetime) -> str:
    """``poll:acme/invoices held by a-1 (epoch 3) until 10:00:15Z`` or ``... lapsed``."""
    until = "lapsed" if lease.expires_at <= now else f"until {format_time(lease.expires_at)}"
    return f"{lease.name} held by {lease.holder} (epoch {lease.epoch}), {until}"
