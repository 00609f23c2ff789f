"""rules.commands: what `deliveries`, `render` and `replay --to rules` do to the ledger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from billnotify.actions.base import Rendered
from billnotify.cli.commands import (
    RENDER_FAILED,
    RENDER_NOT_FIRING,
    RENDER_OK,
    format_deliveries,
    list_deliveries,
    render_report,
    render_rule,
    replay_to_rules,
    resolve_delivery,
    retry_deliveries,
    rule_fires,
    status_lines,
    statuses_for,
)
from billnotify.components import build_actions, build_rule_handler, rule_settings
from billnotify.config.loader import parse_config
from billnotify.config.models import Action, Config, Rule
from billnotify.deliveries.base import AttemptResult, DeliveryStatus, Outcome
from billnotify.errors import TemplateError
from billnotify.events import CloudEvent, build_event
from billnotify.rules.engine import RuleHandler
from billnotify.store import SqliteStore
from billnotify.templating import TemplateRenderer

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


class Executor:
    def __init__(self, action_type: str, once: bool = False) -> None:
        self.action_type = action_type
        self.once = once

    def exactly_once(self, action: Action) -> bool:
        return self.once

    def target(self, action: Action, event: CloudEvent) -> str:
        return f"{self.action_type}:{event.object_id}"

    async def render(self, action: Action, event: CloudEvent, rule: Rule) -> Rendered:
        if event.data.get("broken"):
            raise TemplateError("'broken' cannot render")
        return Rendered(self.action_type, self.target(action, event), {"id": event.id})

    async def execute(self, *args: Any, **kw: Any) -> AttemptResult:
        return AttemptResult(Outcome.SUCCESS, 200)

    async def close(self) -> None:
        pass


EXECUTORS: dict[str, Any] = {
    "webhook": Executor("webhook"),
    "invoice_action": Executor("invoice_action", once=True),
}


def _config(rules: list[dict[str, Any]] | None = None) -> Config:
    return parse_config(
        {
            "sources": [
                {"name": "acme", "kind": "billing_platform", "base_url": "http://x", "api_key": "k"}
            ],
            "webhooks": [{"name": "ops", "url": "https://ops.example.com/h", "secret": "s" * 20}],
            "rules": rules
            or [
                {
                    "name": "both",
                    "on": ["invoice.*"],
                    "when": "object.id != '99'",
                    "actions": [
                        {"type": "invoice_action", "action": "email"},
                        {"type": "webhook", "endpoint": "ops"},
                    ],
                }
            ],
        },
        base_dir=Path("."),
    )


def _event(n: int, **data: Any) -> CloudEvent:
    return build_event(
        source="acme",
        entity="invoice",
        object_id=str(n),
        type_="invoice.created",
        key=str(n),
        time=T0,
        data={"object": {"id": str(n)}, **data},
    )


def _replayer(config: Config, store: SqliteStore) -> RuleHandler:
    renderer = TemplateRenderer(config.template_folders)
    return RuleHandler(rule_settings(config), store, renderer, EXECUTORS, lambda: T0)


async def _seed(store: SqliteStore, tmp: Path, *events: CloudEvent) -> RuleHandler:
    await store.commit("acme", [], list(events))
    handler = RuleHandler(
        rule_settings(_config()), store, TemplateRenderer(tmp), EXECUTORS, lambda: T0
    )
    await handler.catch_up()
    return handler


async def _set(store: SqliteStore, delivery_id: str, status: DeliveryStatus) -> None:
    number = await store.start_attempt(delivery_id, T0)
    await store.finish_attempt(
        delivery_id,
        number,
        now=T0,
        outcome=Outcome.PERMANENT,
        status=status,
        next_attempt_at=T0 + timedelta(hours=1)
        if status is DeliveryStatus.RETRY_SCHEDULED
        else None,
        error="HTTP 503" if status is not DeliveryStatus.SUCCEEDED else None,
    )


def test_status_names() -> None:
    assert statuses_for(None) is None
    assert statuses_for("failed") == [DeliveryStatus.RETRY_SCHEDULED, DeliveryStatus.DEAD]
    assert statuses_for("uncertain") == [DeliveryStatus.UNCERTAIN]
    with pytest.raises(ValueError, match="failed, pending"):
        statuses_for("broken")


async def test_list_retry_and_resolve(store: SqliteStore, tmp_path: Path) -> None:
    await _seed(store, tmp_path, _event(1), _event(2))
    rows = {(d.event_id, d.action_type): d.id for d in await store.list_deliveries()}
    mail1, hook1 = rows[(_event(1).id, "invoice_action")], rows[(_event(1).id, "webhook")]
    mail2, hook2 = rows[(_event(2).id, "invoice_action")], rows[(_event(2).id, "webhook")]
    await _set(store, mail1, DeliveryStatus.UNCERTAIN)
    await _set(store, hook1, DeliveryStatus.DEAD)
    await _set(store, hook2, DeliveryStatus.RETRY_SCHEDULED)
    await _set(store, mail2, DeliveryStatus.SUCCEEDED)

    assert {d.id for d in await list_deliveries(store, "failed")} == {hook1, hook2}
    assert {d.id for d in await list_deliveries(store, "dead")} == {hook1}
    assert {d.id for d in await list_deliveries(store, "uncertain")} == {mail1}
    assert len(await list_deliveries(store, None)) == 4

    now = T0 + timedelta(minutes=1)
    results = await retry_deliveries(store, [hook1, hook2, mail2, "dlv_nope"], now)
    assert [(r.ok, r.message) for r in results] == [
        (True, "dead -> pending"),
        (True, "retry_scheduled -> pending"),
        (False, "is succeeded; only dead, failed, uncertain or muted can be retried"),
        (False, "no such delivery"),
    ]
    retried = await store.get_delivery(hook1)
    assert retried is not None and retried.status is DeliveryStatus.PENDING
    assert [d.id for d in await store.due_deliveries(now)] != []

    assert not (await resolve_delivery(store, hook1, True, now)).ok  # not uncertain
    assert (await resolve_delivery(store, mail1, True, now)).message == "uncertain -> succeeded"
    resolved = await store.get_delivery(mail1)
    assert resolved is not None and resolved.status is DeliveryStatus.SUCCEEDED


async def test_resolve_not_sent_makes_it_due_again(store: SqliteStore, tmp_path: Path) -> None:
    await _seed(store, tmp_path, _event(1))
    (mail,) = [d for d in await store.list_deliveries() if d.exactly_once]
    await _set(store, mail.id, DeliveryStatus.UNCERTAIN)
    result = await resolve_delivery(store, mail.id, False, T0)
    assert result.ok and result.message == "uncertain -> pending"
    assert mail.id in {d.id for d in await store.due_deliveries(T0)}


async def test_replay_creates_only_missing_deliveries_unless_forced(
    store: SqliteStore, tmp_path: Path
) -> None:
    await _seed(store, tmp_path, _event(1))
    (mail,) = [d for d in await store.list_deliveries() if d.exactly_once]
    await _set(store, mail.id, DeliveryStatus.SUCCEEDED)
    stored = await store.get_events([_event(1).id])

    result = await replay_to_rules(_replayer(_config(), store), stored)
    assert (result.created, result.reset, result.unchanged) == (0, 0, 2)
    again = await store.get_delivery(mail.id)
    assert again is not None and again.status is DeliveryStatus.SUCCEEDED
    assert await store.get_position("rules") == 1  # the handler's own position is untouched

    # a rule added later: replay records its deliveries only
    wider = _config(
        [
            *(r.model_dump(by_alias=True, exclude_none=True) for r in _config().rules),
            {"name": "late", "on": ["*"], "actions": [{"type": "webhook", "endpoint": "ops"}]},
        ]
    )
    result = await replay_to_rules(_replayer(wider, store), stored)
    assert (result.created, result.reset) == (1, 0)

    actions = build_actions(_config())  # real executors, as ``billnotify replay`` has them
    try:
        handler = build_rule_handler(_config(), store, actions)
        forced = await replay_to_rules(handler, stored, force=True)
    finally:
        await actions.close()
    assert forced.reset == 1  # the succeeded email; the pending webhook is left alone
    reset = await store.get_delivery(mail.id)
    assert reset is not None and reset.status is DeliveryStatus.PENDING


async def test_render_rule_and_rule_fires(tmp_path: Path) -> None:
    config, renderer = _config(), TemplateRenderer(tmp_path)
    rendered = await render_rule(config, renderer, EXECUTORS, "both", _event(5))
    assert rendered == [
        Rendered("invoice_action", "invoice_action:5", {"id": _event(5).id}),
        Rendered("webhook", "webhook:5", {"id": _event(5).id}),
    ]
    broken = await render_rule(config, renderer, EXECUTORS, "both", _event(5, broken=True))
    assert all("cannot render" in r.summary["error"] for r in broken)
    with pytest.raises(KeyError):
        await render_rule(config, renderer, EXECUTORS, "nope", _event(5))

    assert rule_fires(config, renderer, "both", _event(5)) is None
    assert "is false" in (rule_fires(config, renderer, "both", _event(99)) or "")


async def test_render_report_says_what_failed_and_whether_the_rule_fires(tmp_path: Path) -> None:
    config, renderer = _config(), TemplateRenderer(tmp_path)
    fires = await render_report(config, renderer, EXECUTORS, "both", _event(5))
    assert (fires.exit_code, fires.errors, fires.not_firing) == (RENDER_OK, [], None)

    broken = await render_report(config, renderer, EXECUTORS, "both", _event(5, broken=True))
    assert broken.exit_code == RENDER_FAILED
    assert broken.errors == [
        "rules[0].actions[0] (invoice_action): 'broken' cannot render",
        "rules[0].actions[1] (webhook): 'broken' cannot render",
    ]

    quiet = await render_report(config, renderer, EXECUTORS, "both", _event(99))
    assert quiet.exit_code == RENDER_NOT_FIRING
    assert quiet.not_firing == "when \"object.id != '99'\" is false for this event"
    assert len(quiet.rendered) == 2  # what it would send all the same

    other = _event(5).model_copy(update={"type": "billing_task.created"})
    skipped = await render_report(config, renderer, EXECUTORS, "both", other)
    assert skipped.exit_code == RENDER_NOT_FIRING
    assert skipped.not_firing == (
        "the event's type 'billing_task.created' matches none of on = ['invoice.*']"
    )

    failing_when = _config([{**_RULE, "when": "object.nope.deeper"}])
    failed = await render_report(failing_when, renderer, EXECUTORS, "both", _event(5))
    assert failed.exit_code == RENDER_FAILED
    assert failed.errors[0].startswith("rules[0].when: when 'object.nope.deeper' failed")


_RULE: dict[str, Any] = {
    "name": "both",
    "on": ["invoice.*"],
    "actions": [
        {"type": "invoice_action", "action": "email"},
        {"type": "webhook", "endpoint": "ops"},
    ],
}


async def test_status_lines(store: SqliteStore, tmp_path: Path) -> None:
    assert await status_lines(store, "state.db") == [
        "state: state.db",
        "events: 0 logged; not yet handled by mqtt 0, rules 0",
        "deliveries: none",
    ]
    await _seed(store, tmp_path, _event(1), _event(2))
    lines = await status_lines(store, "state.db")
    assert (
        lines[1]
        == f"events: 2 logged, newest at {_event(2).time}; not yet handled by mqtt 2, rules 0"
    )
    assert lines[2] == "deliveries: pending 4"
    assert lines[3].startswith("oldest unsettled delivery: created 2026-11-21T10:00:00")


async def test_format_deliveries(store: SqliteStore, tmp_path: Path) -> None:
    await _seed(store, tmp_path, _event(1))
    rows = await store.list_deliveries()
    await _set(store, rows[0].id, DeliveryStatus.DEAD)
    text = format_deliveries(await store.list_deliveries())
    lines = text.splitlines()
    assert lines[0].split() == [
        "ID",
        "STATUS",
        "TRIES",
        "RULE",
        "ACTION",
        "TARGET",
        "NEXT/UPDATED",
        "LAST",
        "ERROR",
    ]
    assert any(rows[0].id in line and "dead" in line and "HTTP 503" in line for line in lines)
    assert lines[-1] == "(2 deliveries)"
