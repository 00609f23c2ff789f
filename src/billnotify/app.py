"""The composition root: builds every component from the config and runs them.

Nothing else wires components together. ``Service.run`` starts, in one
``asyncio.TaskGroup``: a poller per source resource, the MQTT publisher, the rule
handler, the delivery worker and the health/metrics server; a stop request shuts them
down in order (pollers, rules, deliveries drained within the grace period, then the
publisher, which says ``offline``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime
from typing import Any

from aiohttp import web

from billnotify.collector import tuned_collector
from billnotify.components import Components, build_components, build_store, utcnow
from billnotify.config.models import Config
from billnotify.deliveries.base import DeliveryStatus
from billnotify.deliveries.worker import DeliveryWorker
from billnotify.errors import BillnotifyError
from billnotify.health import HealthServer
from billnotify.hooks import hook_auth
from billnotify.metrics import Metrics
from billnotify.notices import Notices
from billnotify.publish.broker import EmbeddedBroker
from billnotify.publish.mqtt import MqttPublisher
from billnotify.rules.engine import RuleHandler
from billnotify.sources import Poller
from billnotify.sources.base import PollStats, ResourceSync
from billnotify.store import Store
from billnotify.store.lock import StateLock

logger = logging.getLogger(__name__)


class Service:
    """billnotify as one long-running process.

    Args:
        config: the validated configuration.
        clock: the wall clock (tests inject one).
    """

    def __init__(self, config: Config, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.config = config
        self.clock = clock
        self.metrics = Metrics()
        self.store: Store = build_store(config, child=True)
        self.pollers: list[Poller] = []
        self.publisher: MqttPublisher | None = None
        self.worker: DeliveryWorker | None = None
        self.notices: Notices | None = None
        self.health: HealthServer | None = None
        self.components: Components | None = None
        self.started = asyncio.Event()

    def _on_poll(
        self,
        sync: ResourceSync,
        stats: PollStats | None,
        seconds: float,
        error: BaseException | None,
    ) -> None:
        labels = (sync.source, sync.resource)
        self.metrics.polls.labels(*labels).inc()
        self.metrics.poll_seconds.labels(*labels).observe(seconds)
        self.metrics.source_up.labels(*labels).set(0 if error else 1)
        errors = self.metrics.poll_errors.labels(*labels)  # exported at 0 before a failure
        if error is not None:
            errors.inc()
        if stats is not None:
            for type_, count in stats.types.items():
                self.metrics.events.labels(type_).inc(count)

    # -- health ----------------------------------------------------------------------
    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Sources polled recently, store writable, broker connected."""
        checks: dict[str, Any] = {}
        now = time.monotonic()
        for poller in self.pollers:
            checks[f"source:{poller.name}"] = (
                "ok" if poller.healthy(now) else (poller.last_error or "not polled yet")
            )
        try:
            await self.store.ping()
            checks["store"] = "ok"
        except BillnotifyError as exc:
            checks["store"] = str(exc)
        if self.publisher is not None:
            checks["mqtt"] = "ok" if self.publisher.connected else "disconnected"
        return all(v == "ok" for v in checks.values()), checks

    def held_leases(self) -> list[str]:
        """The names of the leases this process holds (``/readyz``)."""
        if self.components is None:
            return []
        return [lease.name for lease in self.components.keeper.held()]

    async def refresh_metrics(self) -> None:
        """Update the gauges that come from the store (and readiness)."""
        m = self.metrics
        # a scraper that never calls /readyz must still see billnotify_ready move
        ready, _checks = await self.readiness()
        m.ready.set(1 if ready else 0)
        last = await self.store.last_seq()
        for consumer in ("mqtt", "rules"):
            m.log_backlog.labels(consumer).set(
                max(0, last - await self.store.get_position(consumer))
            )
        if self.publisher is not None:
            m.mqtt_connected.set(1 if self.publisher.connected else 0)
            m.count_published(self.publisher.published_total)
            pending = await self.store.read_events(await self.store.get_position("mqtt"), 1)
            lag = 0.0
            if pending:
                recorded = datetime.fromisoformat(pending[0].event.time.replace("Z", "+00:00"))
                lag = max(0.0, (self.clock() - recorded).total_seconds())
            m.publish_lag.set(lag)
        counts = await self.store.count_deliveries()
        m.deliveries.clear()
        retry = 0
        for (action, status), count in counts.items():
            m.deliveries.labels(action, status).set(count)
            if status == DeliveryStatus.RETRY_SCHEDULED:
                retry += count
        m.retry_queue.set(retry)
        oldest = await self.store.oldest_pending_at()
        m.oldest_pending.set((self.clock() - oldest).total_seconds() if oldest else 0)
        if self.worker is not None:
            m.count_holds(self.worker.held)
        grouper = self.components.rules.grouper if self.components is not None else None
        if grouper:  # grouped rules only: two counts, the members are not read
            opened, waiting = await self.store.count_groups()
            m.groups_open.set(opened)
            m.group_events_waiting.set(waiting)
            m.count_flushes(grouper.flushed)

    def _console(self) -> Callable[[web.Application], None] | None:
        """The console's routes, when it may be served (SPEC §7.4: a token, or loopback)."""
        if not self.config.service.console_open:
            logger.warning(
                "console not served: service.http %s is not a loopback address and "
                "service.console_token is not set",
                self.config.service.http,
            )
            return None
        from billnotify.console import Console

        return Console(self.config, self.store, self, clock=self.clock).mount

    def _poll_now(self, source: str) -> None:
        for poller in self.pollers:
            if poller.sync.source == source:
                poller.poll_now()

    # -- running ---------------------------------------------------------------------
    @asynccontextmanager
    async def _broker(self) -> AsyncIterator[None]:
        mqtt = self.config.mqtt
        if not (mqtt.enabled and mqtt.embedded):
            yield
            return
        async with EmbeddedBroker(mqtt.host, mqtt.port):
            yield

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then shut down gracefully."""
        config = self.config
        async with AsyncExitStack() as stack:
            if not config.service.postgres:
                # one process per SQLite state: a second one would send everything twice
                holder = {"service": config.service.name, "http": config.service.http}
                stack.enter_context(StateLock(config.state_path, holder))
            await self.store.open()
            stack.push_async_callback(self.store.close)
            await stack.enter_async_context(self._broker())
            parts = build_components(
                config, self.store, clock=self.clock, metrics=self.metrics, on_poll=self._on_poll
            )
            stack.push_async_callback(parts.close)
            self.components = parts
            self.publisher, self.notices = parts.publisher, parts.notices
            self.worker, self.pollers = parts.worker, parts.pollers
            listen = config.service.listen()
            if listen is not None:
                self.health = HealthServer(
                    *listen,
                    readiness=self.readiness,
                    metrics=self.metrics,
                    refresh=self.refresh_metrics,
                    hooks={
                        source.name: hook_auth(source.hook_secret)
                        for source in config.sources
                        if source.hook_secret
                    },
                    on_hook=self._poll_now,
                    instance=config.service.instance_name,
                    leases=self.held_leases,
                    console=self._console(),
                )
                await self.health.start()
                stack.push_async_callback(self.health.stop)
            stack.enter_context(tuned_collector())
            await self._supervise(stop, parts.rules)

    async def _supervise(self, stop: asyncio.Event, rules: RuleHandler) -> None:
        assert self.worker is not None
        grace = self.config.service.shutdown_grace.total_seconds()
        assert self.components is not None
        async with asyncio.TaskGroup() as group:
            # first in, last out: the stages wait for their leases, and a clean stop
            # releases them only once every stage is done
            keeper = group.create_task(self.components.keeper.run(), name="leases")
            publisher = (
                group.create_task(self.publisher.run(), name="mqtt") if self.publisher else None
            )
            worker = group.create_task(self.worker.run(), name="deliveries")
            rule_task = group.create_task(rules.run(), name="rules")
            polls = [group.create_task(p.run(), name=f"poll {p.name}") for p in self.pollers]
            logger.info(
                "billnotify running: %d pollers, %d rules%s",
                len(polls),
                len(self.config.rules),
                " (dry run)" if self.config.service.dry_run else "",
            )
            self.started.set()
            await stop.wait()
            logger.info("stopping: draining in-flight deliveries (grace %.0fs)", grace)
            for task in polls:
                task.cancel()
            rule_task.cancel()
            await self.worker.drain(grace)
            worker.cancel()
            if self.notices is not None:
                await self.notices.flush()
            if publisher is not None:
                await _finish_publishing(self.publisher, self.store, grace)
                publisher.cancel()
                await asyncio.gather(publisher, return_exceptions=True)
            keeper.cancel()
        logger.info("stopped")


async def _finish_publishing(publisher: MqttPublisher | None, store: Store, grace: float) -> None:
    """Give the publisher a moment to flush what is already logged."""
    if publisher is None or not publisher.connected or not publisher.publishing:
        return
    deadline = time.monotonic() + min(grace, 5.0)
    last = await store.last_seq()
    while time.monotonic() < deadline and publisher.last_published_seq < last:
        await asyncio.sleep(0.05)
