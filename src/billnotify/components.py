"""The composition root: every component built from the config, in one place.

:func:`build_actions` makes the executors and the platform clients they use (all that
``check``, ``render`` and ``replay`` need); :func:`build_components` adds the stages that
work on the store (sources, publisher, rule handler, delivery worker, notices) for
``run`` and the demo. Each component receives only its own settings: the settings
values are built here, from the one :class:`~billnotify.config.models.Config`.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from billnotify import __version__
from billnotify.actions import build_executors
from billnotify.actions.base import ActionExecutor, Prepare, Rendered, preparer
from billnotify.clients.billing_platform import BillingPlatformClient
from billnotify.clients.property_billing import PropertyBillingClient
from billnotify.config.models import (
    Action,
    BillingPlatformSource,
    Config,
    PropertyBillingSource,
    Rule,
    SourceConfig,
)
from billnotify.config.rates import parse_rate
from billnotify.deliveries.base import AttemptResult, Outcome
from billnotify.deliveries.reconcile import (
    InvoiceEmailReconciler,
    InvoiceRecords,
    ReconcileStore,
)
from billnotify.deliveries.settings import DeliverySettings
from billnotify.deliveries.worker import DeliveryWorker
from billnotify.events import CloudEvent
from billnotify.leases import PUBLISH, RULES, LeaseKeeper, poll_lease
from billnotify.logs import Redactor
from billnotify.metrics import Metrics
from billnotify.notices import Notices
from billnotify.publish.mqtt import MqttPublisher
from billnotify.rules.engine import RuleHandler, RuleSettings, RuleStore
from billnotify.sources import (
    BillingPlatformSync,
    Poller,
    PropertyBillingSync,
    build_billing_syncs,
)
from billnotify.sources.base import FencedSnapshots, PollStats, ResourceSync
from billnotify.sources.reconcile_ids import build_id_reconciler
from billnotify.store.base import Store
from billnotify.templating import TemplateRenderer

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]
OnPoll = Callable[[ResourceSync, PollStats | None, float, BaseException | None], None]


def utcnow() -> datetime:
    """The current time, aware UTC."""
    return datetime.now(UTC)


# -- settings ------------------------------------------------------------------------------
def rule_settings(config: Config) -> RuleSettings:
    """What the rule handler reads of the config."""
    return RuleSettings(rules=tuple(config.rules), dry_run=config.service.dry_run)


def delivery_settings(config: Config) -> DeliverySettings:
    """What the delivery stage reads of the config."""
    timeouts = [source.timeout for source in config.sources]
    return DeliverySettings(
        rules={rule.name: rule for rule in config.rules},
        dry_run=config.service.dry_run,
        concurrency=config.service.delivery_concurrency,
        webhook_schedules={hook.name: hook.retry_schedule for hook in config.webhooks},
        email_schedule=config.smtp.retry_schedule if config.smtp is not None else None,
        # longer than any request to a billing platform can take: its timeout plus a margin
        settle_after=max(timeouts, default=timedelta(seconds=30)) + timedelta(seconds=5),
        mute_windows={window.name: window for window in config.mute_windows},
        webhook_rates={
            hook.name: parse_rate(hook.rate_limit) for hook in config.webhooks if hook.rate_limit
        },
        email_rate=parse_rate(config.smtp.rate_limit)
        if config.smtp is not None and config.smtp.rate_limit
        else None,
    )


def secret_values(config: Config) -> list[str]:
    """Every secret value in the config, for the log redactor."""
    values: list[str] = []
    for source in config.sources:
        if isinstance(source, BillingPlatformSource):
            values.append(source.api_key.reveal())
        else:
            values += [source.username.reveal(), source.password.reveal()]
        if source.hook_secret:
            raw = source.hook_secret.reveal()
            values += [raw, raw.removeprefix("whsec_")]
    if config.mqtt.password:
        values.append(config.mqtt.password.reveal())
    if config.smtp and config.smtp.password:
        values.append(config.smtp.password.reveal())
    for hook in config.webhooks:
        raw = hook.secret.reveal()
        values += [raw, raw.removeprefix("whsec_")]
    if config.service.state_password and config.service.state_password.resolved:
        values.append(config.service.state_password.reveal())
    if config.service.console_token and config.service.console_token.resolved:
        values.append(config.service.console_token.reveal())
    return values


# -- the store -----------------------------------------------------------------------------
def build_store(config: Config, *, child: bool = False) -> Store:
    """The store ``[service] state`` names, not yet open.

    A ``postgresql://`` URL is :class:`~billnotify.store.postgres.PgStore` (several
    processes may share it, each as ``[service] instance``); anything else is the SQLite
    file, in a process of its own for the service (``child``) or in this one for the
    commands.
    """
    service = config.service
    if service.postgres:
        from billnotify.store.postgres import PgStore  # asyncpg only where it is used

        password = service.state_password.reveal() if service.state_password else None
        return PgStore(service.state, password=password, instance=service.instance_name)
    from billnotify.store import ProcessStore, SqliteStore

    return ProcessStore(config.state_path) if child else SqliteStore(config.state_path)


# -- the platform clients and the executors ----------------------------------------------
def source_client(
    source: SourceConfig, **overrides: Any
) -> BillingPlatformClient | PropertyBillingClient:
    """The client of one source, with its timeout, attempts and page size.

    Args:
        overrides: client options that replace the source's (``check --connect`` probes
            with ``timeout=10, max_attempts=1``).
    """
    if isinstance(source, BillingPlatformSource):
        options: dict[str, Any] = {
            "timeout": source.timeout.total_seconds(),
            "max_attempts": source.max_attempts,
            "page_size": source.page_size,
        }
        return BillingPlatformClient(source.base_url, source.api_key, **(options | overrides))
    options = {
        "timeout": source.timeout.total_seconds(),
        "max_attempts": source.max_attempts,
        "document_path": source.document_path,
    }
    return PropertyBillingClient(
        source.base_url,
        source.auth_url,
        source.username,
        source.password,
        source.administrator_ids,
        **(options | overrides),
    )


@dataclass
class Actions:
    """The executors, the template renderer and the platform clients they use.

    Close it (:meth:`close`) to close the executors and the clients.
    """

    renderer: TemplateRenderer
    executors: dict[str, ActionExecutor]
    billing_clients: dict[str, BillingPlatformClient] = field(default_factory=dict)
    property_clients: dict[str, PropertyBillingClient] = field(default_factory=dict)

    async def close(self) -> None:
        """Close the executors, then the clients (errors are logged, never raised)."""
        closers = [executor.close for executor in self.executors.values()]
        closers += [client.close for client in self.billing_clients.values()]
        closers += [client.close for client in self.property_clients.values()]
        for close in closers:
            try:
                await close()
            except Exception:
                logger.exception("closing %r failed", close)


def build_actions(config: Config, *, mqtt: MqttPublisher | None = None) -> Actions:
    """The executors of every action type, with the clients of every source."""
    billing: dict[str, BillingPlatformClient] = {}
    prop: dict[str, PropertyBillingClient] = {}
    for source in config.sources:
        client = source_client(source)
        if isinstance(client, BillingPlatformClient):
            billing[source.name] = client
        else:
            prop[source.name] = client
    renderer = TemplateRenderer(config.template_folders)
    executors = build_executors(
        config.smtp,
        config.webhooks,
        billing_clients=billing,
        property_clients=prop,
        mqtt=mqtt,
        templates=renderer,
    )
    return Actions(renderer, executors, billing, prop)


def build_rule_handler(
    config: Config, store: RuleStore, actions: Actions, clock: Clock = utcnow, **options: Any
) -> RuleHandler:
    """The rule handler over ``store`` (``options``: see :class:`RuleHandler`)."""
    return RuleHandler(
        rule_settings(config), store, actions.renderer, actions.executors, clock, **options
    )


def build_reconciler(
    config: Config,
    store: ReconcileStore,
    billing_clients: Mapping[str, InvoiceRecords],
    clock: Clock = utcnow,
    *,
    settle_after: timedelta | None = None,
) -> InvoiceEmailReconciler:
    """The reconciler of uncertain invoice emails (``settle_after``: see
    :func:`delivery_settings`)."""
    settings = delivery_settings(config)
    return InvoiceEmailReconciler(
        settings.rules,
        store,
        billing_clients,
        clock,
        settings.settle_after if settle_after is None else settle_after,
    )


def build_worker(
    config: Config,
    store: Store,
    executors: Mapping[str, ActionExecutor],
    clock: Clock = utcnow,
    *,
    billing_clients: Mapping[str, InvoiceRecords] | None = None,
    **options: Any,
) -> DeliveryWorker:
    """The delivery worker over ``store``, reconciling uncertain invoice emails with
    ``billing_clients`` (``options``: see :class:`DeliveryWorker`)."""
    reconciler = build_reconciler(config, store, billing_clients or {}, clock)
    return DeliveryWorker(
        delivery_settings(config), store, executors, clock, reconciler=reconciler, **options
    )


# -- the whole service ---------------------------------------------------------------------
@dataclass
class Components:
    """Everything ``run`` starts, built over one open store.

    Attributes:
        actions: the executors and clients.
        publisher: the MQTT publisher (None when ``[mqtt]`` is disabled).
        notices: the service's own events.
        worker: the delivery worker.
        rules: the rule handler.
        pollers: one per source resource.
        keeper: this process's heartbeat and the leases the stages work under.
    """

    actions: Actions
    publisher: MqttPublisher | None
    notices: Notices
    worker: DeliveryWorker
    rules: RuleHandler
    pollers: list[Poller]
    keeper: LeaseKeeper

    async def close(self) -> None:
        """Close the executors and the clients."""
        await self.actions.close()


def build_components(
    config: Config,
    store: Store,
    *,
    clock: Clock = utcnow,
    metrics: Metrics | None = None,
    on_poll: OnPoll | None = None,
    keeper: LeaseKeeper | None = None,
) -> Components:
    """Build every stage of the service over ``store`` (open it first).

    Args:
        metrics: counts delivery attempts by outcome (none: not counted).
        on_poll: called after every poll (the service's metrics).
        keeper: the leases the stages work under (default: one for ``[service]
            instance`` and ``lease_ttl``; run it beside them).
    """
    service = config.service
    keeper = keeper or LeaseKeeper(
        store, service.instance_name, ttl=service.lease_ttl, clock=clock, info=_info(config)
    )
    # several processes on one PostgreSQL state: each its own client id and availability
    instance = config.service.instance_name if config.service.postgres else None
    publisher = (
        MqttPublisher(config.mqtt, store, instance=instance, role=keeper.role(PUBLISH))
        if config.mqtt.enabled
        else None
    )
    actions = build_actions(config, mqtt=publisher)
    notices = Notices(
        config.service.name, config.rules, store, clock, redact=Redactor(secret_values(config))
    )
    executors: dict[str, ActionExecutor] = dict(actions.executors)
    if metrics is not None:
        executors = {kind: _CountingExecutor(ex, metrics) for kind, ex in executors.items()}
    worker = build_worker(
        config,
        store,
        executors,
        clock,
        billing_clients=actions.billing_clients,
        notices=notices,
        keeper=keeper,
        exclusive_store=not config.service.postgres,
    )
    rules = build_rule_handler(
        config,
        store,
        actions,
        clock,
        on_recorded=worker.wake,
        notices=notices,
        role=keeper.role(RULES),
    )
    pollers = [
        Poller(
            sync,
            source.poll_interval,
            on_result=on_poll,
            notices=notices,
            failing_after_polls=source.failing_after_polls,
            failing_after=source.failing_after,
            clock=clock,
            role=keeper.role(poll_lease(sync.source, sync.resource)),
            reconciler=build_id_reconciler(sync, source, clock=clock),
        )
        for sync, source in _syncs(config, actions, store, clock, keeper)
    ]
    return Components(actions, publisher, notices, worker, rules, pollers, keeper)


def _info(config: Config) -> dict[str, str]:
    """What an instance says of itself in its heartbeats (``billnotify status``)."""
    info = {"pid": str(os.getpid()), "host": socket.gethostname(), "version": __version__}
    if config.service.http:
        info["http"] = config.service.http
    return info


def _syncs(
    config: Config, actions: Actions, store: Store, clock: Clock, keeper: LeaseKeeper
) -> list[tuple[ResourceSync, SourceConfig]]:
    """Every source resource's sync, committing under its ``poll:`` lease."""
    syncs: list[tuple[BillingPlatformSync | PropertyBillingSync, SourceConfig]] = []
    for source in config.sources:
        if isinstance(source, BillingPlatformSource):
            client = actions.billing_clients[source.name]
            syncs += [(s, source) for s in build_billing_syncs(source, client, store, clock=clock)]
        elif isinstance(source, PropertyBillingSource):
            pclient = actions.property_clients[source.name]
            syncs += [
                (PropertyBillingSync(source, uuid, pclient, store, clock=clock), source)
                for uuid in source.properties
            ]
    for sync, _source in syncs:
        sync.store = FencedSnapshots(store, keeper.role(poll_lease(sync.source, sync.resource)))
    return list(syncs)


class _CountingExecutor:
    """An executor that counts its attempts in ``billnotify_delivery_attempts``."""

    def __init__(self, inner: ActionExecutor, metrics: Metrics) -> None:
        self.inner = inner
        self.action_type = inner.action_type
        self._attempts = metrics.attempts
        prepare = preparer(inner)
        if prepare is not None:  # the worker prepares exactly-once attempts through us
            self.prepare: Prepare = prepare

    def exactly_once(self, action: Action) -> bool:
        return self.inner.exactly_once(action)

    def target(self, action: Action, event: CloudEvent) -> str:
        return self.inner.target(action, event)

    async def render(self, action: Action, event: CloudEvent, rule: Rule) -> Rendered:
        return await self.inner.render(action, event, rule)

    async def execute(
        self, action: Action, event: CloudEvent, rule: Rule, *, delivery_id: str, attempt: int
    ) -> AttemptResult:
        try:
            result = await self.inner.execute(
                action, event, rule, delivery_id=delivery_id, attempt=attempt
            )
        except Exception:
            # the worker records an executor that broke its never-raise promise as uncertain
            self._attempts.labels(self.action_type, Outcome.UNCERTAIN.value).inc()
            raise
        self._attempts.labels(self.action_type, Outcome(result.outcome).value).inc()
        return result

    async def close(self) -> None:
        await self.inner.close()
