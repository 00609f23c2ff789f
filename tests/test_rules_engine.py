"""RuleHandler: the event log -> recorded deliveries, in order, with its position."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from billnotify.actions.base import Rendered
from billnotify.components import rule_settings
from billnotify.config.loader import parse_config
from billnotify.config.models import Action, Config, Rule
from billnotify.deliveries.base import AttemptResult, DeliveryStatus
from billnotify.errors import TemplateError
from billnotify.events import CloudEvent, build_event
from billnotify.rules.engine import RuleHandler
from billnotify.store import SqliteStore, delivery_id
from billnotify.templating import TemplateRenderer

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


class Executor:
    def __init__(self, action_type: str, once: bool = False, render_error: bool = False) -> None:
        self.action_type = action_type
        self.once = once
        self.render_error = render_error

    def exactly_once(self, action: Action) -> bool:
        return self.once

    def target(self, action: Action, event: CloudEvent) -> str:
        return f"{self.action_type} for {event.subject}"

    async def render(self, action: Action, event: CloudEvent, rule: Rule) -> Rendered:
        if self.render_error:
            raise TemplateError("task_failed.txt.j2: 'x' is undefined")
        return Rendered(self.action_type, self.target(action, event), {"body": event.id})

    async def execute(self, *args: Any, **kw: Any) -> AttemptResult:
        raise AssertionError("the rule handler never sends")

    async def close(self) -> None:
        pass


def _config(rules: list[dict[str, Any]], **service: Any) -> Config:
    return parse_config(
        {
            "service": service,
            "sources": [
                {"name": "acme", "kind": "billing_platform", "base_url": "http://x", "api_key": "k"}
            ],
            "webhooks": [{"name": "ops", "url": "https://ops.example.com/h", "secret": "s" * 20}],
            "rules": rules,
        },
        base_dir=Path("."),
    )


HOOK = {"type": "webhook", "endpoint": "ops"}
MAIL = {"type": "invoice_action", "action": "email"}
RULES = [
    {"name": "tasks", "on": ["billing_task.*"], "actions": [HOOK]},
    {
        "name": "approved",
        "on": ["invoice.status_changed"],
        "when": "'Approved' in event.data.added",
        "actions": [MAIL, HOOK],
    },
]


def _event(n: int, type_: str = "billing_task.created", **data: Any) -> CloudEvent:
    entity = type_.partition(".")[0]
    return build_event(
        source="acme",
        entity=entity,
        object_id=str(n),
        type_=type_,
        key=str(n),
        time=T0,
        data={"object": {"id": str(n)}, **data},
    )


def _handler(store: SqliteStore, config: Config, tmp: Path, **kw: Any) -> RuleHandler:
    executors = {"webhook": Executor("webhook"), "invoice_action": Executor("invoice_action", True)}
    executors.update(kw.pop("executors", {}))
    return RuleHandler(
        rule_settings(config), store, TemplateRenderer(tmp), executors, lambda: T0, **kw
    )


async def test_deliveries_follow_the_log_and_the_position_moves_with_them(
    store: SqliteStore, tmp_path: Path
) -> None:
    events = [
        _event(1),
        _event(2, "invoice.status_changed", added=["Approved"]),
        _event(3, "invoice.status_changed", added=["Emailed"]),
        _event(4),
    ]
    await store.commit("acme", [], events)
    handler = _handler(store, _config(RULES), tmp_path, batch_size=2)
    assert await handler.process_batch() == 2
    assert await store.get_position("rules") == 2
    assert await handler.catch_up() == 2
    assert await store.get_position("rules") == 4
    rows = sorted(await store.list_deliveries(), key=lambda d: (d.event_seq, d.action_index))
    assert [(d.event_seq, d.rule, d.action_index, d.action_type) for d in rows] == [
        (1, "tasks", 0, "webhook"),
        (2, "approved", 0, "invoice_action"),
        (2, "approved", 1, "webhook"),
        (4, "tasks", 0, "webhook"),
    ]
    assert {d.status for d in rows} == {DeliveryStatus.PENDING}
    mail = rows[1]
    assert mail.id == delivery_id("approved", 0, events[1].id)
    assert mail.exactly_once and not rows[0].exactly_once
    assert mail.target == "invoice_action for invoices/2"
    assert handler.events_processed == 4 and handler.deliveries_recorded == 4


async def test_without_rules_the_position_moves_to_the_end_of_the_log_unread(
    store: SqliteStore, tmp_path: Path
) -> None:
    reads: list[int] = []
    read_log = store.read_log

    async def counted(after_seq: int, limit: int = 500) -> Any:
        reads.append(after_seq)
        return await read_log(after_seq, limit)

    store.read_log = counted  # type: ignore[method-assign]
    await store.commit("acme", [], [_event(n) for n in range(1, 6)])
    handler = _handler(store, _config([]), tmp_path, batch_size=2)
    assert await handler.catch_up() == 5
    assert await store.get_position("rules") == 5
    assert await handler.catch_up() == 0
    await store.commit("acme", [], [_event(6)])
    assert await handler.process_batch() == 1
    assert await store.get_position("rules") == 6
    assert reads == [] and await store.list_deliveries() == []
    assert handler.events_processed == 6


async def test_reading_the_log_again_records_nothing_twice(
    store: SqliteStore, tmp_path: Path
) -> None:
    await store.commit("acme", [], [_event(1), _event(2)])
    handler = _handler(store, _config(RULES), tmp_path)
    await handler.catch_up()
    await store.set_position("rules", 0)  # as if the position write had been lost
    await handler.catch_up()
    assert len(await store.list_deliveries()) == 2
    assert handler.deliveries_recorded == 2


async def test_a_failing_when_is_recorded_dead_with_its_error(
    store: SqliteStore, tmp_path: Path
) -> None:
    rules = [{"name": "broken", "on": ["*"], "when": "event.data.nope == 1", "actions": [HOOK]}]
    await store.commit("acme", [], [_event(1)])
    await _handler(store, _config(rules), tmp_path).catch_up()
    (row,) = await store.list_deliveries()
    assert row.status is DeliveryStatus.DEAD and row.attempts == 0
    assert row.last_error is not None and "nope" in row.last_error
    assert await store.get_position("rules") == 1


async def test_a_missing_executor_is_a_dead_delivery(store: SqliteStore, tmp_path: Path) -> None:
    await store.commit("acme", [], [_event(1)])
    handler = RuleHandler(
        rule_settings(_config(RULES)), store, TemplateRenderer(tmp_path), {}, lambda: T0
    )
    await handler.catch_up()
    (row,) = await store.list_deliveries()
    assert row.status is DeliveryStatus.DEAD and "no executor" in (row.last_error or "")


async def test_dry_run_records_what_would_be_sent(store: SqliteStore, tmp_path: Path) -> None:
    rules = [
        {"name": "rule-dry", "on": ["*"], "dry_run": True, "actions": [HOOK]},
        {"name": "action-dry", "on": ["*"], "actions": [{**MAIL, "dry_run": True}]},
        {"name": "live", "on": ["*"], "actions": [HOOK]},
    ]
    await store.commit("acme", [], [_event(1)])
    await _handler(store, _config(rules), tmp_path).catch_up()
    rows = {d.rule: d for d in await store.list_deliveries()}
    assert rows["rule-dry"].status is DeliveryStatus.DRY_RUN
    assert rows["action-dry"].status is DeliveryStatus.DRY_RUN
    assert rows["live"].status is DeliveryStatus.PENDING
    rendered = json.loads(await store.get_rendered(rows["rule-dry"].id) or "{}")
    assert rendered == {
        "action_type": "webhook",
        "target": "webhook for billing_tasks/1",
        "summary": {"body": _event(1).id},
    }
    assert await store.get_rendered(rows["live"].id) is None


async def test_a_dry_run_that_cannot_render_keeps_the_error(
    store: SqliteStore, tmp_path: Path
) -> None:
    await store.commit("acme", [], [_event(1)])
    handler = _handler(
        store,
        _config(RULES, dry_run=True),
        tmp_path,
        executors={"webhook": Executor("webhook", render_error=True)},
    )
    await handler.catch_up()
    (row,) = await store.list_deliveries()
    assert row.status is DeliveryStatus.DRY_RUN
    assert "undefined" in (row.last_error or "")


async def test_the_handler_wakes_on_append_without_polling(
    store: SqliteStore, tmp_path: Path
) -> None:
    recorded = asyncio.Event()
    handler = _handler(store, _config(RULES), tmp_path, idle_timeout=60, on_recorded=recorded.set)
    task = asyncio.create_task(handler.run())
    try:
        await asyncio.sleep(0.05)  # idle now, with a 60 s fallback
        await store.commit("acme", [], [_event(1)])
        await asyncio.wait_for(recorded.wait(), 5)
        recorded.clear()
        await store.commit("acme", [], [_event(2)])
        await asyncio.wait_for(recorded.wait(), 5)
        assert await store.get_position("rules") == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_events_appended_by_another_process_are_found_by_the_fallback(
    store: SqliteStore, tmp_path: Path
) -> None:
    handler = _handler(store, _config(RULES), tmp_path, idle_timeout=0.1)
    task = asyncio.create_task(handler.run())
    try:
        await asyncio.sleep(0.05)
        async with SqliteStore(tmp_path / "state.db") as other:  # no shared condition
            await other.commit("acme", [], [_event(1)])
        async with asyncio.timeout(5):
            while await store.get_position("rules") < 1:
                await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert len(await store.list_deliveries()) == 1
