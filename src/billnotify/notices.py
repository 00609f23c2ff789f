"""The service's own failures as events (SPEC §7.6).

What an operator must act on becomes a CloudEvent of the service itself, with source
``billnotify://<service name>``, logged, published and routed by rules like any other::

    billnotify.delivery.uncertain   a customer-facing delivery may or may not have gone out
    billnotify.delivery.dead        a delivery gave up (exhausted, permanent, or unsendable)
    billnotify.endpoint.disabled    a webhook endpoint answered 410 Gone
    billnotify.source.failing       a source resource's polls keep failing (once per episode)
    billnotify.source.recovered     the first successful poll after ``failing``

Their ids are deterministic (a delivery's id, status and attempt count; an endpoint's
disabling reason; a source resource and the start of its failing episode), so a notice
emitted twice, e.g. by the start-up sweep after a crash, enters the log once.

No loops: a delivery made for a ``billnotify.*`` event that goes dead or uncertain is
logged, never turned into another notice, so no rule can fire on what its own
deliveries caused.

The builders and :class:`FailureEpisode` are pure; :class:`Notices` is the adapter that
appends notices to the event log.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from billnotify.config.chains import chain_of
from billnotify.config.models import Rule, WebhookAction
from billnotify.config.types import NOTICE_TYPES
from billnotify.deliveries.base import DeliveryStatus
from billnotify.errors import StoreError
from billnotify.events import CloudEvent, event_id, format_time
from billnotify.store.base import Deliveries, Endpoints, EventLog, Snapshots
from billnotify.store.records import Delivery, StoredEvent, delivery_id

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]

NOTICE_PREFIX = "billnotify."
"""Every notice type starts with this (and no platform event type does)."""
DELIVERY_UNCERTAIN, DELIVERY_DEAD, ENDPOINT_DISABLED, SOURCE_FAILING, SOURCE_RECOVERED = (
    NOTICE_TYPES
)
_DELIVERY_TYPES = {
    DeliveryStatus.UNCERTAIN: DELIVERY_UNCERTAIN,
    DeliveryStatus.DEAD: DELIVERY_DEAD,
}
_LEVELS = {SOURCE_RECOVERED: logging.WARNING}
"""Log level of each notice type (ERROR when absent)."""
_DELIVERY_ID = re.compile(r"\bdlv_[0-9a-f]+\b")

SWEEP_LOOKBACK = timedelta(hours=1)
"""How far back the start-up sweep looks for deliveries settled without their notice."""


def is_notice(event_type: str) -> bool:
    """Whether an event type is one of the service's own (``billnotify.*``)."""
    return event_type.startswith(NOTICE_PREFIX)


def _notice(
    service: str, type_: str, resource: str, object_id: str, key: str, time: datetime, data: Any
) -> CloudEvent:
    subject = f"{resource}/{object_id}"
    return CloudEvent(
        id=event_id(service, subject, type_, key),
        source=f"billnotify://{service}",
        type=type_,
        subject=subject,
        time=format_time(time),
        data=data,
    )


def delivery_notice(
    service: str,
    delivery: Delivery,
    event: CloudEvent | None,
    *,
    endpoint: str | None = None,
    redact: Callable[[str], str] = str,
    dependents: Sequence[Delivery] = (),
) -> CloudEvent | None:
    """``billnotify.delivery.dead`` / ``.uncertain`` for a settled delivery (None for any
    other status, and for a delivery made for a notice: no loops).

    Args:
        service: the service name (the notice's source).
        delivery: the ledger row, as settled.
        event: the event the delivery was for (None: no longer in the log).
        endpoint: the webhook endpoint, for a webhook delivery.
        redact: removes secrets from error text.
        dependents: the chained actions' deliveries that run after this one (SPEC §7.5)
            and are ``waiting`` or ``skipped``: they do not run unless it succeeds after
            all, so the notice names them (``data.dependents``, only when there are any).
    """
    type_ = _DELIVERY_TYPES.get(delivery.status)
    if type_ is None or (event is not None and is_notice(event.type)):
        return None
    about: dict[str, Any] = {"id": delivery.event_id}
    if event is not None:
        about.update(type=event.type, source=event.source_name, subject=event.subject)
    data: dict[str, Any] = {
        "delivery": delivery.id,
        "status": delivery.status.value,
        "rule": delivery.rule,
        "action": delivery.action_type,
        "action_index": delivery.action_index,
        "target": delivery.target,
        "exactly_once": delivery.exactly_once,
        "event": about,
        "attempts": delivery.attempts,
        "error": redact(delivery.last_error) if delivery.last_error else None,
        "status_code": delivery.last_status_code,
    }
    if endpoint is not None:
        data["endpoint"] = endpoint
    if dependents:
        data["dependents"] = [
            {
                "delivery": d.id,
                "action": d.action_type,
                "action_index": d.action_index,
                "target": d.target,
            }
            for d in sorted(dependents, key=lambda d: d.action_index)
        ]
    key = f"{delivery.status.value}/{delivery.attempts}"
    return _notice(service, type_, "deliveries", delivery.id, key, delivery.updated_at, data)


def endpoint_notice(
    service: str, endpoint: str, reason: str, time: datetime, *, redact: Callable[[str], str] = str
) -> CloudEvent:
    """``billnotify.endpoint.disabled``: one per endpoint and disabling (its reason)."""
    found = _DELIVERY_ID.search(reason)
    data = {
        "endpoint": endpoint,
        "reason": redact(reason),
        "delivery": found.group(0) if found else None,
    }
    return _notice(service, ENDPOINT_DISABLED, "endpoints", endpoint, reason, time, data)


@dataclass
class FailureEpisode:
    """Consecutive failed polls of one source resource (pure: no I/O, no clock).

    ``failing`` is due once per episode: when ``after_polls`` polls in a row failed, or
    the first of them is at least ``after`` old; ``recovered`` is due at the first
    success after a ``failing`` was reported.

    Attributes:
        failures: failed polls in a row.
        since: when the first of them failed.
        error: the last failure.
        reported: ``failing`` was emitted for this episode.
    """

    source: str
    resource: str
    after_polls: int = 3
    after: timedelta = timedelta(minutes=5)
    failures: int = 0
    since: datetime | None = None
    error: str = ""
    reported: bool = False

    def failed(self, error: str, now: datetime) -> bool:
        """Count a failed poll; True when ``failing`` is due now."""
        if self.since is None:
            self.since = now
        self.failures += 1
        self.error = error
        if self.reported:
            return False
        return self.failures >= self.after_polls or now - self.since >= self.after

    def succeeded(self) -> bool:
        """A poll succeeded; True when ``recovered`` is due (else the episode is over)."""
        if not self.reported:
            self.reset()
        return self.reported

    def reset(self) -> None:
        """The episode is over."""
        self.failures, self.since, self.error, self.reported = 0, None, "", False

    def _key(self) -> str:
        assert self.since is not None
        return f"{self.resource}/{self.since.isoformat()}"

    def failing(self, service: str, now: datetime) -> CloudEvent:
        """The ``billnotify.source.failing`` of this episode."""
        assert self.since is not None
        data = {
            "source": self.source,
            "resource": self.resource,
            "since": format_time(self.since),
            "failures": self.failures,
            "error": self.error,
        }
        return _notice(service, SOURCE_FAILING, "sources", self.source, self._key(), now, data)

    def recovered(self, service: str, now: datetime) -> CloudEvent:
        """The ``billnotify.source.recovered`` that ends this episode."""
        assert self.since is not None
        data = {
            "source": self.source,
            "resource": self.resource,
            "since": format_time(self.since),
            "failures": self.failures,
            "down_seconds": round((now - self.since).total_seconds(), 3),
            "error": self.error,
        }
        return _notice(service, SOURCE_RECOVERED, "sources", self.source, self._key(), now, data)


class NoticeStore(Snapshots, EventLog, Deliveries, Endpoints, Protocol):
    """What notices need of the store: appending to the log (``commit``), the settled
    deliveries and disabled endpoints they report."""


class Notices:
    """Appends notices to the event log (and logs each one once, when it is appended).

    Deliveries and endpoints are reported from synchronous callbacks: :meth:`delivery`
    and :meth:`endpoint` queue them, and a background task reads the settled rows and
    commits their notices together. A notice lost to a crash (or to a failing store)
    after its delivery settled is emitted by :meth:`sweep` at the next start.

    Args:
        service: the service's name (``[service] name``), the notices' source.
        rules: the configured rules (a delivery's webhook endpoint is found by its rule).
        store: the state store.
        clock: returns the current UTC time.
        redact: removes secret values from error text.
    """

    def __init__(
        self,
        service: str,
        rules: Iterable[Rule],
        store: NoticeStore,
        clock: Clock,
        *,
        redact: Callable[[str], str] = str,
    ) -> None:
        self.service = service
        self.store = store
        self.clock = clock
        self.redact = redact
        self._rules = {rule.name: rule for rule in rules}
        self._after: dict[tuple[str, int], list[int]] = {}
        """(rule, action index) -> the actions that run after it, directly or not."""
        for rule in self._rules.values():
            for index in range(len(rule.actions)):
                for before in chain_of(rule.actions, index):
                    self._after.setdefault((rule.name, before), []).append(index)
        self._deliveries: list[str] = []
        self._endpoints: list[tuple[str, str, datetime]] = []
        self._writer: asyncio.Task[None] | None = None

    # -- reporting -----------------------------------------------------------------------
    def delivery(self, delivery_id: str) -> None:
        """A delivery was committed ``dead`` or ``uncertain``: report it."""
        self._deliveries.append(delivery_id)
        self._kick()

    def endpoint(self, name: str, reason: str, now: datetime) -> None:
        """A webhook endpoint was committed disabled: report it."""
        self._endpoints.append((name, reason, now))
        self._kick()

    async def emit(self, events: Sequence[CloudEvent]) -> list[StoredEvent]:
        """Append notices to the log; logs each one that was new.

        Raises:
            StoreError: the store could not commit them.
        """
        if not events:
            return []
        appended = await self.store.commit(self.service, [], events)
        for stored in appended:
            _log(stored.event)
        return appended

    async def flush(self) -> None:
        """Wait until every notice queued so far is committed (or given up on)."""
        while self._writer is not None and not self._writer.done():
            await asyncio.wait({self._writer})

    async def sweep(self, lookback: timedelta = SWEEP_LOOKBACK) -> int:
        """Emit the notices a crash may have lost (start-up): deliveries settled
        ``dead``/``uncertain`` in the last ``lookback`` (those recovery just made
        uncertain included) and disabled endpoints. Ids already logged are skipped.

        Returns:
            How many notices were new.
        """
        now = self.clock()
        rows = await self.store.settled_since(list(_DELIVERY_TYPES), now - lookback)
        notices = await self._delivery_notices(rows, told=False)
        disabled = await self.store.disabled_endpoints()
        notices += [
            endpoint_notice(self.service, name, reason, now, redact=self.redact)
            for name, reason in disabled.items()
        ]
        appended = await self.emit(notices)
        if appended:
            logger.warning("start-up: %d notices emitted that were missing", len(appended))
        return len(appended)

    # -- internals ---------------------------------------------------------------------
    def _kick(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all(), name="notices")

    async def _write_all(self) -> None:
        while self._deliveries or self._endpoints:
            ids, self._deliveries = self._deliveries[:500], self._deliveries[500:]
            endpoints, self._endpoints = self._endpoints, []
            try:
                rows = await self.store.get_deliveries(ids)
                notices = await self._delivery_notices(rows)
                notices += [
                    endpoint_notice(self.service, name, reason, now, redact=self.redact)
                    for name, reason, now in endpoints
                ]
                await self.emit(notices)
            except StoreError as exc:
                # the ledger keeps the outcome: the next start's sweep emits these
                logger.error(
                    "cannot record %d notices (the next start will): %s",
                    len(ids) + len(endpoints),
                    exc,
                )
            except Exception:
                logger.exception("building notices failed")

    async def _delivery_notices(
        self, rows: Iterable[Delivery], *, told: bool = True
    ) -> list[CloudEvent]:
        """Notices for settled rows; ``told``: log the ones that are not notices (no loops)."""
        rows = list(rows)
        if not rows:
            return []
        found = await self.store.get_events(sorted({row.event_id for row in rows}))
        events = {stored.event.id: stored.event for stored in found}
        waiting = await self._dependents(rows)
        notices: list[CloudEvent] = []
        for row in rows:
            event = events.get(row.event_id)
            notice = delivery_notice(
                self.service,
                row,
                event,
                endpoint=self._endpoint(row),
                redact=self.redact,
                dependents=waiting.get(row.id, ()),
            )
            if notice is not None:
                notices.append(notice)
            elif told and event is not None and row.status in _DELIVERY_TYPES:
                logger.warning(
                    "delivery %s (rule %s) for %s %s is %s: not reported as an event "
                    "(a delivery for a billnotify event never is: no loops): %s",
                    row.id,
                    row.rule,
                    event.type,
                    event.id,
                    row.status.value,
                    self.redact(row.last_error or ""),
                    extra={"delivery_id": row.id, "event_id": event.id, "rule": row.rule},
                )
        return notices

    async def _dependents(self, rows: Sequence[Delivery]) -> dict[str, list[Delivery]]:
        """Delivery id -> its chained dependents that are ``waiting`` or ``skipped`` (read
        only when a rule chains actions after a row's action)."""
        wanted = {
            delivery_id(row.rule, index, row.event_id): row.id
            for row in rows
            for index in self._after.get((row.rule, row.action_index), ())
        }
        if not wanted:
            return {}
        found: dict[str, list[Delivery]] = {}
        for dependent in await self.store.get_deliveries(list(wanted)):
            if dependent.status in (DeliveryStatus.WAITING, DeliveryStatus.SKIPPED):
                found.setdefault(wanted[dependent.id], []).append(dependent)
        return found

    def _endpoint(self, row: Delivery) -> str | None:
        rule = self._rules.get(row.rule)
        if rule is None or not 0 <= row.action_index < len(rule.actions):
            return None
        action = rule.actions[row.action_index]
        return action.endpoint if isinstance(action, WebhookAction) else None


def _log(event: CloudEvent) -> None:
    """One line per notice; its ids are fields of JSON log lines."""
    data = event.data
    extra: dict[str, Any] = {"event_id": event.id, "event_type": event.type}
    if "delivery" in data:
        extra["delivery_id"] = data["delivery"]
    for key in ("rule", "endpoint", "resource"):
        if data.get(key):
            extra[key] = data[key]
    if event.type in (SOURCE_FAILING, SOURCE_RECOVERED):
        extra["source"] = data["source"]
        what = f"source {data['source']}/{data['resource']}"
        detail = f"{data['failures']} failed polls since {data['since']}: {data['error']}"
    elif event.type == ENDPOINT_DISABLED:
        what = f"webhook endpoint {data['endpoint']}"
        detail = data["reason"]
    else:
        about = data["event"]
        if "source" in about:
            extra["source"] = about["source"]
        what = (
            f"delivery {data['delivery']} (rule {data['rule']}, "
            f"{data['target'] or data['action']}) for {about.get('type', 'event')} {about['id']}"
        )
        detail = f"after {data['attempts']} attempts: {data['error']}"
        if data.get("dependents"):
            ids = ", ".join(d["delivery"] for d in data["dependents"])
            detail += f"; the chained deliveries after it do not run: {ids}"
    logger.log(
        _LEVELS.get(event.type, logging.ERROR),
        "%s: %s: %s [%s]",
        event.type,
        what,
        detail,
        event.id,
        extra=extra,
    )
