"""What ``billnotify deliveries``, ``render`` and ``replay --to rules`` do (SPEC §6).

``cli.py`` parses the arguments and prints; these functions do the work against the
store, so they are testable without a subprocess.

Statuses for ``deliveries --status``:

- any :class:`~billnotify.store.base.DeliveryStatus` value (``pending``, ``sending``,
  ``succeeded``, ``retry_scheduled``, ``dead``, ``uncertain``, ``dry_run``, ``muted``);
- ``failed``: every delivery whose last attempt failed and that is not settled
  successfully, i.e. ``retry_scheduled`` **and** ``dead`` (``dead`` alone lists only
  the given-up ones).

Replaying events to the rules records the deliveries the *current* rules call for.
Delivery ids are deterministic (rule, action, event), so by default a replay only
creates deliveries that do not exist yet (a rule added after the event, an event that
was skipped): an event already delivered is never sent again. ``force=True`` also sets
existing settled deliveries (succeeded, dead, uncertain, muted, dry_run) back to pending with
the **same id** (so webhook consumers can de-duplicate on ``webhook-id``); that re-sends
customer-facing actions too, which is what forcing means.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from billnotify.actions.base import ActionExecutor, Rendered
from billnotify.chain_results import chain_results
from billnotify.config.models import Config, Rule
from billnotify.deliveries.base import DeliveryStatus
from billnotify.deliveries.chain import sample_results
from billnotify.deliveries.mute import SENT_ANYWAY
from billnotify.digests import is_digest, is_flush_id
from billnotify.events import CloudEvent, format_time
from billnotify.rules.engine import Evaluator, Planned, RuleHandler
from billnotify.rules.groups import digest_of
from billnotify.rules.matching import evaluate_when, selects
from billnotify.store.base import Store
from billnotify.store.records import Delivery, OperatorAction, StoredEvent

logger = logging.getLogger(__name__)

FAILED = (DeliveryStatus.RETRY_SCHEDULED, DeliveryStatus.DEAD)
"""What ``--status failed`` lists."""
RETRYABLE = frozenset(
    {
        DeliveryStatus.DEAD,
        DeliveryStatus.RETRY_SCHEDULED,
        DeliveryStatus.UNCERTAIN,
        DeliveryStatus.MUTED,
    }
)
"""Statuses ``deliveries retry`` accepts."""
REPLAY_CONSUMER = "replay"
"""The log position replays record under (the rule handler's own stays untouched)."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class CommandResult:
    """The outcome of an operator command for one delivery."""

    id: str
    ok: bool
    message: str


@dataclass(frozen=True)
class ReplayResult:
    """What a replay to the rules did.

    Attributes:
        created: deliveries recorded for the first time.
        reset: existing deliveries set back to pending (``force`` only).
        unchanged: deliveries that already existed and were left alone.
    """

    created: int
    reset: int
    unchanged: int

    def __str__(self) -> str:
        return f"to rules: {self.created} new, {self.reset} reset, {self.unchanged} unchanged"


def statuses_for(name: str | None) -> list[DeliveryStatus] | None:
    """The statuses a ``--status`` value stands for (None: all).

    Raises:
        ValueError: an unknown status name.
    """
    if name is None or name in ("", "all"):
        return None
    if name == "failed":
        return list(FAILED)
    try:
        return [DeliveryStatus(name)]
    except ValueError:
        valid = ", ".join(["failed", *(s.value for s in DeliveryStatus)])
        raise ValueError(f"unknown delivery status {name!r} (one of: {valid})") from None


async def list_deliveries(store: Store, status: str | None, limit: int = 1000) -> list[Delivery]:
    """Ledger rows for ``billnotify deliveries [--status S]``, newest first."""
    return await store.list_deliveries(statuses_for(status), limit=limit)


def cli_operator() -> str:
    """Who an operator action from the command line is recorded as: ``cli:<os user>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):  # no user name for this uid (a bare container)
        return f"cli:uid-{os.getuid()}"


async def _recorded(
    store: Store, now: datetime, who: str, action: str, reason: str, result: CommandResult
) -> CommandResult:
    """Keep an operator action on record (SPEC §7.4), whether or not it did anything."""
    await store.record_operator_action(
        OperatorAction(now, who, action, result.id, reason, result.message)
    )
    return result


async def retry_deliveries(
    store: Store, ids: Iterable[str], now: datetime, *, who: str = "", reason: str = ""
) -> list[CommandResult]:
    """``deliveries retry ID...``: dead, failed, uncertain or muted deliveries -> pending
    now.

    Retrying an ``uncertain`` delivery is the operator's word that it was not sent (as
    ``resolve --not-sent``). Retrying a ``muted`` one sends it now, inside its rule's mute
    window too (:data:`~billnotify.deliveries.mute.SENT_ANYWAY`): an explicit retry
    means "send it", not "wait for the window's end". A retried delivery keeps its attempt count: if it fails
    again after its retry schedule is used up, it is dead again after one attempt.
    Each retry is recorded as done by ``who`` (default :func:`cli_operator`) for ``reason``.
    """
    who = who or cli_operator()
    results: list[CommandResult] = []
    for delivery_id in ids:
        result = await _retry(store, delivery_id, now, reason)
        results.append(await _recorded(store, now, who, "retry", reason, result))
    return results


async def _retry(store: Store, delivery_id: str, now: datetime, reason: str) -> CommandResult:
    delivery = await store.get_delivery(delivery_id)
    if delivery is None:
        return CommandResult(delivery_id, False, "no such delivery")
    if delivery.status not in RETRYABLE:
        message = (
            f"is {delivery.status.value}; only dead, failed, uncertain or muted can be retried"
        )
        return CommandResult(delivery_id, False, message)
    muted = delivery.status is DeliveryStatus.MUTED
    what = SENT_ANYWAY if muted else f"operator retry (was {delivery.status.value})"
    await store.set_delivery_status(
        delivery_id, DeliveryStatus.PENDING, now=now, next_attempt_at=now, note=_note(what, reason)
    )
    sent = " (sent now, whatever mute window covers it)" if muted else ""
    return CommandResult(delivery_id, True, f"{delivery.status.value} -> pending{sent}")


def _note(what: str, reason: str) -> str:
    return f"{what}: {reason}" if reason else what


async def resolve_delivery(
    store: Store,
    delivery_id: str,
    sent: bool,
    now: datetime,
    *,
    who: str = "",
    reason: str = "",
) -> CommandResult:
    """``deliveries resolve ID --sent|--not-sent`` for an ``uncertain`` delivery.

    ``sent=True`` settles it as succeeded; ``sent=False`` makes it pending (sent again).
    Recorded as done by ``who`` (default :func:`cli_operator`) for ``reason``.
    """
    result = await _resolve(store, delivery_id, sent, now, reason)
    action = "resolve_sent" if sent else "resolve_not_sent"
    return await _recorded(store, now, who or cli_operator(), action, reason, result)


async def _resolve(
    store: Store, delivery_id: str, sent: bool, now: datetime, reason: str
) -> CommandResult:
    delivery = await store.get_delivery(delivery_id)
    if delivery is None:
        return CommandResult(delivery_id, False, "no such delivery")
    if delivery.status is not DeliveryStatus.UNCERTAIN:
        return CommandResult(
            delivery_id, False, f"is {delivery.status.value}; only uncertain can be resolved"
        )
    if sent:
        await store.set_delivery_status(
            delivery_id, DeliveryStatus.SUCCEEDED, now=now, note=_note("operator: sent", reason)
        )
        return CommandResult(delivery_id, True, "uncertain -> succeeded")
    await store.set_delivery_status(
        delivery_id,
        DeliveryStatus.PENDING,
        now=now,
        next_attempt_at=now,
        note=_note("operator: not sent", reason),
    )
    return CommandResult(delivery_id, True, "uncertain -> pending")


async def enable_endpoint(
    store: Store, name: str, now: datetime, *, who: str = "", reason: str = ""
) -> CommandResult:
    """Re-enable a webhook endpoint that a ``410 Gone`` disabled; recorded as the others."""
    disabled = await store.disabled_endpoints()
    if name not in disabled:
        result = CommandResult(name, False, "is not disabled")
    else:
        await store.enable_endpoint(name)
        result = CommandResult(name, True, f"enabled (was disabled: {disabled[name]})")
    return await _recorded(store, now, who or cli_operator(), "enable_endpoint", reason, result)


async def record_replay(
    store: Store,
    events: Sequence[StoredEvent],
    message: str,
    now: datetime,
    *,
    who: str = "",
    reason: str = "",
) -> None:
    """Keep a replay on record, once per event replayed; ``message`` says what it did."""
    for stored in events:
        ok = CommandResult(stored.event.id, True, message)
        await _recorded(store, now, who or cli_operator(), "replay", reason, ok)


def rule_fires(
    config: Config, renderer: Evaluator, rule_name: str, event: CloudEvent
) -> str | None:
    """Why a rule would not fire for an event (None: it would).

    Raises:
        KeyError: no rule has that name.
    """
    rule = _rule_named(config, rule_name)
    if not selects(rule, event):
        return _not_selected(rule, event)
    applies, error = evaluate_when(rule, event, renderer.evaluate)
    if error is not None:
        return error
    return None if applies else f"when {rule.when!r} is false"


def _not_selected(rule: Rule, event: CloudEvent) -> str:
    if not rule.enabled:
        return "the rule is disabled"
    if not rule.matches(event.type):
        return f"the event's type {event.type!r} matches none of on = {rule.on}"
    return f"source {event.source_name!r} is not in {rule.sources}"


RENDER_OK, RENDER_FAILED, RENDER_NOT_FIRING = 0, 1, 3
"""``billnotify render`` exits 0 when the rule fires and every action renders, 1 when a
template fails (``when`` or an action), 3 when all renders but the rule would not fire
for the event."""


@dataclass(frozen=True)
class RenderReport:
    """What ``billnotify render`` shows, and its exit status.

    Attributes:
        rendered: what each action would send (an ``error`` summary when it cannot).
        errors: template failures, each with its TOML path.
        not_firing: why the rule would not fire for the event, or None when it would.
    """

    rendered: list[Rendered]
    errors: list[str]
    not_firing: str | None

    @property
    def exit_code(self) -> int:
        """:data:`RENDER_FAILED`, :data:`RENDER_NOT_FIRING` or :data:`RENDER_OK`."""
        if self.errors:
            return RENDER_FAILED
        return RENDER_NOT_FIRING if self.not_firing else RENDER_OK


async def render_report(
    config: Config,
    renderer: Evaluator,
    executors: Mapping[str, ActionExecutor],
    rule_name: str,
    event: CloudEvent,
) -> RenderReport:
    """:func:`render_rule` plus whether the rule would fire and what failed.

    Raises:
        KeyError: no rule has that name.
    """
    rule = _rule_named(config, rule_name)
    where = f"rules[{config.rules.index(rule)}]"
    rendered = await render_rule(config, renderer, executors, rule_name, event)
    errors = [
        f"{where}.actions[{a}] ({r.action_type}): {r.summary['error']}"
        for a, r in enumerate(rendered)
        if "error" in r.summary
    ]
    not_firing = None
    if not selects(rule, event):
        not_firing = _not_selected(rule, event)
    else:
        applies, error = evaluate_when(rule, event, renderer.evaluate)
        if error is not None:
            errors.insert(0, f"{where}.when: {error}")
        elif not applies:
            not_firing = f"when {rule.when!r} is false for this event"
    return RenderReport(rendered, errors, not_firing)


async def render_rule(
    config: Config,
    renderer: Evaluator,
    executors: Mapping[str, ActionExecutor],
    rule_name: str,
    event: CloudEvent,
) -> list[Rendered]:
    """What each action of a rule would send for an event (``billnotify render``).

    Renders whether or not the rule's ``when`` holds (see :func:`rule_fires`). An
    action that cannot render gives a :class:`Rendered` whose summary is ``{"error": ...}``.

    Raises:
        KeyError: no rule has that name.
    """
    del renderer  # the executors hold the template renderer; kept for the CLI's symmetry
    rule = _rule_named(config, rule_name)
    if rule.grouped and not is_digest(event):  # a grouped rule sends digests: of this event
        event = digest_of(rule, [event])
    rendered: list[Rendered] = []
    for index, action in enumerate(rule.actions):
        executor = executors.get(action.type)
        if executor is None:
            error = {"error": f"no executor for {action.type!r} actions (is it configured?)"}
            rendered.append(Rendered(action.type, "", error))
            continue
        try:  # a chained action renders with sample answers of what it runs after
            with chain_results(sample_results(rule, index, event)):
                rendered.append(await executor.render(action, event, rule))
        except Exception as exc:  # shown to the operator, never a crash
            target = executor.target(action, event)
            rendered.append(Rendered(action.type, target, {"error": f"{exc}"}))
    return rendered


async def replay_to_rules(
    handler: RuleHandler, events: Sequence[StoredEvent], *, force: bool = False
) -> ReplayResult:
    """``replay ... --to rules``: record the deliveries the current rules call for.

    See the module docstring for why this never double-sends unless ``force``. The
    running service picks new or reset deliveries up within its poll interval.

    Args:
        handler: the rule handler over the store (its rules decide; built by
            :func:`billnotify.components.build_rule_handler`).
        events: the events to replay.
        force: also set settled deliveries back to pending.
    """
    if not events:
        return ReplayResult(0, 0, 0)
    store, now = handler.store, handler.clock()
    planned: list[Planned] = []
    for stored in events:
        planned.extend(await handler.plan(stored))
    existing: dict[str, Delivery] = {}
    for item in planned:
        found = await store.get_delivery(item.delivery.id)
        if found is not None:
            existing[found.id] = found
    position = max(stored.seq for stored in events)
    created = await handler.record(planned, position, consumer=REPLAY_CONSUMER)
    reset = 0
    if force:
        settled = RETRYABLE | {DeliveryStatus.SUCCEEDED, DeliveryStatus.DRY_RUN}
        for item in planned:
            old = existing.get(item.delivery.id)
            if old is None or old.status not in settled:
                continue
            if item.delivery.status not in (DeliveryStatus.PENDING, DeliveryStatus.WAITING):
                continue  # still dry-run, or its `when` fails: nothing to send
            # a chained action waits again for the one it runs after (sent again too)
            await store.set_delivery_status(
                old.id, item.delivery.status, now=now, next_attempt_at=now, note="forced replay"
            )
            reset += 1
    logger.info("replay of %d events: %d new deliveries, %d reset", len(events), created, reset)
    return ReplayResult(created, reset, len(existing) - reset)


async def digest_shown(store: Store, delivery: Delivery) -> dict[str, Any] | None:
    """What ``deliveries show`` prints of a grouped rule's delivery (its event is a
    digest, ``grp_…``, never in the log): the flush id, its group, how many events it
    carries and their ids, oldest first. None for a delivery of one event."""
    if not is_flush_id(delivery.event_id):
        return None
    text = await store.get_digest(delivery.event_id)
    if text is None:
        return {"id": delivery.event_id, "missing": True}
    data = json.loads(text).get("data") or {}
    events = data.get("events") or []
    return {
        "id": delivery.event_id,
        "group": data.get("group") or {},
        "count": data.get("count", len(events)),
        "events": [e.get("id") for e in events],
    }


def format_deliveries(deliveries: Sequence[Delivery], *, error_width: int = 60) -> str:
    """A plain-text table of deliveries for the terminal."""
    header = ("ID", "STATUS", "TRIES", "RULE", "ACTION", "TARGET", "NEXT/UPDATED", "LAST ERROR")
    rows = [header]
    for d in deliveries:
        # a delivery waiting (a retry, a mute window, a rate limit's turn): when it is due
        waiting = d.status in (DeliveryStatus.RETRY_SCHEDULED, DeliveryStatus.PENDING)
        when = d.next_attempt_at if waiting and d.next_attempt_at else d.updated_at
        error = " ".join((d.last_error or "").split())
        if len(error) > error_width:
            error = error[: error_width - 3] + "..."
        rows.append(
            (
                d.id,
                d.status.value,
                str(d.attempts),
                d.rule,
                f"{d.action_index}:{d.action_type}",
                d.target,
                format_time(when) if when else "",
                error,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.append(f"({len(deliveries)} deliveries)")
    return "\n".join(lines)


async def status_lines(store: Store, state: str) -> list[str]:
    """``billnotify status``: the event log, each consumer's backlog and the ledger."""
    last = await store.last_seq()
    newest = await store.read_events(last - 1, 1) if last else []
    logged = f"{last} logged" + (f", newest at {newest[0].event.time}" if newest else "")
    behind = []
    for consumer in ("mqtt", "rules"):
        behind.append(f"{consumer} {max(0, last - await store.get_position(consumer))}")
    counts: dict[str, int] = {}
    for (_kind, status), count in (await store.count_deliveries()).items():
        counts[status] = counts.get(status, 0) + count
    ledger = ", ".join(f"{status} {counts[status]}" for status in sorted(counts)) or "none"
    lines = [
        f"state: {state}",
        f"events: {logged}; not yet handled by {', '.join(behind)}",
        f"deliveries: {ledger}",
    ]
    oldest = await store.oldest_pending_at()
    if oldest is not None:
        lines.append(f"oldest unsettled delivery: created {format_time(oldest)}")
    for name, reason in sorted((await store.disabled_endpoints()).items()):
        lines.append(f"endpoint {name} disabled: {reason}")
    return lines


def _rule_named(config: Config, name: str) -> Rule:
    """The configured rule called ``name`` (KeyError when there is none)."""
    for rule in config.rules:
        if rule.name == name:
            return rule
    raise KeyError(name)
