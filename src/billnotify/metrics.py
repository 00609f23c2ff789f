"""Prometheus metrics (prometheus-client), one registry per service instance."""

from __future__ import annotations

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)


class Metrics:
    """Every metric family billnotify exports, on a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # process_* (CPU, memory, open files) and python_* (GC, version), as every
        # Prometheus-instrumented Python service exports them
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)
        self.polls = Counter(
            "billnotify_polls", "Poll cycles run.", ["source", "resource"], registry=r
        )
        self.poll_errors = Counter(
            "billnotify_poll_errors", "Poll cycles that failed.", ["source", "resource"], registry=r
        )
        self.poll_seconds = Histogram(
            "billnotify_poll_duration_seconds",
            "Duration of a poll cycle.",
            ["source", "resource"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.source_up = Gauge(
            "billnotify_source_up",
            "1 if the last poll of the resource succeeded.",
            ["source", "resource"],
            registry=r,
        )
        self.events = Counter(
            "billnotify_events", "Events appended to the log.", ["type"], registry=r
        )
        self.log_backlog = Gauge(
            "billnotify_log_backlog_events",
            "Events in the log a consumer has not processed yet.",
            ["consumer"],
            registry=r,
        )
        self.publish_lag = Gauge(
            "billnotify_mqtt_publish_lag_seconds",
            "Age of the oldest event not yet published to MQTT (0 when caught up).",
            registry=r,
        )
        self.mqtt_connected = Gauge(
            "billnotify_mqtt_connected", "1 while connected to the broker.", registry=r
        )
        self.mqtt_published = Counter(
            "billnotify_mqtt_published_events",
            "Events published to MQTT by this process.",
            registry=r,
        )
        self.deliveries = Gauge(
            "billnotify_deliveries",
            "Deliveries in the ledger by action type and status.",
            ["action", "status"],
            registry=r,
        )
        self.attempts = Counter(
            "billnotify_delivery_attempts",
            "Delivery attempts by action type and outcome.",
            ["action", "outcome"],
            registry=r,
        )
        self.retry_queue = Gauge(
            "billnotify_retry_queue_depth",
            "Deliveries waiting for a scheduled retry.",
            registry=r,
        )
        self.oldest_pending = Gauge(
            "billnotify_oldest_pending_delivery_age_seconds",
            "Age of the oldest delivery not yet settled (0 when none).",
            registry=r,
        )
        self.ready = Gauge("billnotify_ready", "1 when /readyz answers 200.", registry=r)
        self.holds = Counter(
            "billnotify_delivery_holds",
            "Deliveries held back before an attempt by this process: by a mute window "
            "(deferred or muted) or a rate limit (waiting for their turn).",
            ["reason"],
            registry=r,
        )
        self.groups_open = Gauge(
            "billnotify_groups_open",
            "Open groups of grouped rules (collecting events for a digest).",
            registry=r,
        )
        self.group_events_waiting = Gauge(
            "billnotify_group_events_waiting",
            "Events collected into groups, waiting for their group's next flush.",
            registry=r,
        )
        self.digest_flushes = Counter(
            "billnotify_digest_flushes",
            "Digests flushed by this process (one per group flush), by grouped rule.",
            ["rule"],
            registry=r,
        )
        self._published = 0
        self._held: dict[str, int] = {}
        self._flushed: dict[str, int] = {}

    def count_published(self, total: int) -> None:
        """Move the published-events counter up to the publisher's running ``total``."""
        if total > self._published:
            self.mqtt_published.inc(total - self._published)
            self._published = total

    def count_holds(self, held: dict[str, int]) -> None:
        """Move the holds counter up to the delivery worker's running counts by reason."""
        for reason, total in held.items():
            seen = self._held.get(reason, 0)
            counter = self.holds.labels(reason)  # every reason shown, at 0 until it holds
            if total > seen:
                counter.inc(total - seen)
                self._held[reason] = total

    def count_flushes(self, flushed: dict[str, int]) -> None:
        """Move the digest flushes counter up to the grouper's running counts by rule."""
        for rule, total in flushed.items():
            seen = self._flushed.get(rule, 0)
            counter = self.digest_flushes.labels(rule)  # every grouped rule, at 0 at first
            if total > seen:
                counter.inc(total - seen)
                self._flushed[rule] = total

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)
