"""What the demo shows: a rich live view, or plain lines when there is no terminal.

:class:`DemoMonitor` follows the running service's store (new events, delivery counts)
and the sinks' counters; :func:`render_live` draws one frame of the live view and
:class:`PlainReporter` prints what changed since the last look.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from billnotify.demo.sinks import ReceivedEmail, ReceivedWebhook, SmtpSink, WebhookSink
from billnotify.events import CloudEvent
from billnotify.store.base import Store

logger = logging.getLogger(__name__)

RECENT_EVENTS = 14
_STATUS_STYLE = {
    "succeeded": "green",
    "dry_run": "cyan",
    "pending": "yellow",
    "sending": "yellow",
    "retry_scheduled": "yellow",
    "dead": "red",
    "uncertain": "magenta",
    "muted": "cyan",
}


@dataclass(frozen=True)
class DemoInfo:
    """Where things are, for the header of the view."""

    folder: str
    simulator: str
    mqtt_host: str
    mqtt_port: int
    smtp: str
    webhooks: str
    console: str
    """The operator console's address (served on loopback without a token)."""
    metrics: str
    log: str
    duration: float | None
    notes: tuple[str, ...] = ()

    @property
    def mqtt_command(self) -> str:
        """The command that watches everything the demo publishes."""
        return f"mosquitto_sub -h {self.mqtt_host} -p {self.mqtt_port} -t 'billnotify/#' -v"

    def lines(self) -> list[tuple[str, str]]:
        """(label, value) pairs describing the running demo."""
        return [
            ("simulator", self.simulator),
            ("MQTT", f"embedded broker {self.mqtt_host}:{self.mqtt_port} - {self.mqtt_command}"),
            ("SMTP sink", self.smtp),
            ("webhook sink", self.webhooks),
            ("console", self.console),
            ("metrics", self.metrics),
            ("log", self.log),
            ("working folder", self.folder),
        ]


@dataclass
class DemoMonitor:
    """Follows the service's store and the sinks.

    Args:
        store: the running service's store.
        smtp: the SMTP sink.
        webhooks: the webhook sink.
        published: how many messages the service published to MQTT so far.
    """

    store: Store
    smtp: SmtpSink
    webhooks: WebhookSink
    published: Callable[[], int] = lambda: 0
    started: float = field(default_factory=time.monotonic)
    last_seq: int = 0
    events_total: int = 0
    event_types: Counter[str] = field(default_factory=Counter)
    recent: deque[CloudEvent] = field(default_factory=lambda: deque(maxlen=RECENT_EVENTS))
    deliveries: dict[tuple[str, str], int] = field(default_factory=dict)

    async def refresh(self) -> list[CloudEvent]:
        """Read what happened since the last call; returns the new events."""
        new: list[CloudEvent] = []
        while True:
            batch = await self.store.read_events(self.last_seq, 500)
            if not batch:
                break
            self.last_seq = batch[-1].seq
            new += [stored.event for stored in batch]
        for event in new:
            self.event_types[event.type] += 1
            self.recent.append(event)
        self.events_total += len(new)
        self.deliveries = await self.store.count_deliveries()
        return new

    @property
    def elapsed(self) -> float:
        """Seconds since the demo started."""
        return time.monotonic() - self.started

    def by_status(self) -> Counter[str]:
        """Deliveries per status, over every action type."""
        counts: Counter[str] = Counter()
        for (_action, status), count in self.deliveries.items():
            counts[status] += count
        return counts


def _hms(event: CloudEvent) -> str:
    time_text = event.time
    return time_text[11:19] if len(time_text) >= 19 else time_text


def _counts(counts: Counter[str]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counts.most_common()) or "none yet"


def render_live(info: DemoInfo, monitor: DemoMonitor) -> RenderableType:
    """One frame of the live view."""
    elapsed = f"{monitor.elapsed:.0f}s"
    if info.duration:
        elapsed += f" of {info.duration:.0f}s"
    header = Table.grid(padding=(0, 2))
    header.add_column(style="bold")
    header.add_column()
    for label, value in info.lines():
        header.add_row(label, value)
    for note in info.notes:
        header.add_row("note", Text(note, style="yellow"))

    events = Table(title=f"Latest events ({monitor.events_total} in all)", expand=True)
    events.add_column("time", no_wrap=True)
    events.add_column("type", no_wrap=True, style="cyan")
    events.add_column("subject")
    events.add_column("source")
    for event in reversed(monitor.recent):
        events.add_row(_hms(event), event.type, event.subject, event.source_name)

    deliveries = Table(title="Deliveries", expand=True)
    deliveries.add_column("action")
    deliveries.add_column("status")
    deliveries.add_column("count", justify="right")
    for (action, status), count in sorted(monitor.deliveries.items()):
        deliveries.add_row(action, Text(status, style=_STATUS_STYLE.get(status, "")), str(count))

    sinks = Table(title="Received by the sinks", expand=True)
    sinks.add_column("where", no_wrap=True)
    sinks.add_column("count", justify="right", no_wrap=True)
    sinks.add_column("latest", no_wrap=True, overflow="ellipsis", ratio=1)
    mails = monitor.smtp.received
    hooks = monitor.webhooks.received
    sinks.add_row("emails", str(len(mails)), mails[-1].subject if mails else "")
    sinks.add_row(
        "webhooks",
        f"{len(hooks)} ({monitor.webhooks.valid} signed ok)",
        hooks[-1].summary if hooks else "",
    )
    sinks.add_row("MQTT published", str(monitor.published()), "")

    body = Table.grid(expand=True, padding=(0, 1))
    body.add_column(ratio=3)
    body.add_column(ratio=2)
    body.add_row(events, Group(deliveries, sinks))
    return Group(
        Panel(header, title=f"billnotify demo - {elapsed} - Ctrl-C to stop", expand=True),
        body,
    )


class PlainReporter:
    """Prints one line per new event, email and webhook, and delivery counts now and then.

    Args:
        write: where lines go (``print`` by default).
        every: seconds between delivery-count lines (printed only when they changed).
    """

    def __init__(self, write: Callable[[str], None] = print, every: float = 5.0) -> None:
        self.write = write
        self.every = every
        self._emails = 0
        self._webhooks = 0
        self._last_counts: Counter[str] = Counter()
        self._last_line = 0.0

    def intro(self, info: DemoInfo) -> None:
        """Where everything is."""
        self.write(f"billnotify demo - working folder {info.folder}")
        for label, value in info.lines()[:-1]:
            self.write(f"  {label:<14} {value}")
        for note in info.notes:
            self.write(f"  note: {note}")
        until = f"after {info.duration:g}s or on Ctrl-C" if info.duration else "on Ctrl-C"
        self.write(f"Stops {until}.")

    def report(self, monitor: DemoMonitor, new_events: list[CloudEvent]) -> None:
        """Print what changed since the previous call."""
        for event in new_events:
            self.write(
                f"{_hms(event)} event    {event.type:<28} {event.subject} ({event.source_name})"
            )
        mails: list[ReceivedEmail] = monitor.smtp.received[self._emails :]
        self._emails += len(mails)
        for mail in mails:
            self.write(f"         email    to {', '.join(mail.recipients)}: {mail.subject}")
        hooks: list[ReceivedWebhook] = monitor.webhooks.received[self._webhooks :]
        self._webhooks += len(hooks)
        for hook in hooks:
            verdict = "signature ok" if hook.valid else f"REJECTED ({hook.reason})"
            self.write(f"         webhook  {hook.path} {verdict}: {hook.summary}")
        counts = monitor.by_status()
        now = time.monotonic()
        if counts != self._last_counts and now - self._last_line >= self.every:
            self._last_counts = counts
            self._last_line = now
            self.write(f"[{monitor.elapsed:.0f}s] deliveries: {_counts(counts)}")


def summary_lines(
    *,
    seconds: float,
    event_types: Counter[str],
    deliveries: Counter[str],
    emails: int,
    webhooks: int,
    webhooks_valid: int,
    published: int,
    digests: int = 0,
) -> list[str]:
    """The closing summary (its ``name: number`` lines are stable, scripts read them)."""
    return [
        f"billnotify demo summary ({seconds:.0f}s)",
        f"  events: {sum(event_types.values())} ({_counts(event_types)})",
        f"  deliveries: {sum(deliveries.values())} ({_counts(deliveries)})",
        f"  emails received by the SMTP sink: {emails}",
        f"  webhooks received by the webhook sink: {webhooks} ({webhooks_valid} signed ok)",
        f"  MQTT messages published: {published}",
        f"  digests of grouped rules: {digests}",
    ]
