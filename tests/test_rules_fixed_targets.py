"""RuleHandler: a rule that needs nothing of its events (a webhook rule without ``when``)
records exactly what planning each parsed event would have recorded."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from billnotify.actions.webhook import WebhookExecutor
from billnotify.components import rule_settings
from billnotify.config.loader import parse_config
from billnotify.config.models import Config
from billnotify.events import CloudEvent, build_event
from billnotify.rules.engine import RuleHandler
from billnotify.store import SqliteStore, StoredEvent
from billnotify.templating import TemplateRenderer

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def _config(**rule: Any) -> Config:
    return parse_config(
        {
            "sources": [
                {"name": "acme", "kind": "billing_platform", "base_url": "http://x", "api_key": "k"}
            ],
            "webhooks": [
                {"name": n, "url": "http://127.0.0.1:9/", "secret": SECRET, "allow_private": True}
                for n in ("ops", "audit")
            ],
            "rules": [
                {
                    "name": "hooks",
                    "on": ["billing_task.*"],
                    "actions": [
                        {"type": "webhook", "endpoint": "ops"},
                        {"type": "webhook", "endpoint": "audit"},
                    ],
                    **rule,
                },
                {
                    "name": "other",
                    "on": ["invoice.*"],
                    "actions": [{"type": "webhook", "endpoint": "ops"}],
                },
            ],
        },
        base_dir=Path("."),
    )


def _event(n: int, entity: str = "billing_task") -> CloudEvent:
    return build_event(
        source="acme",
        entity=entity,
        object_id=str(n),
        type_=f"{entity}.created",
        key=str(n),
        time=T0,
        data={"object": {"id": str(n)}},
    )


async def _recorded(tmp_path: Path, config: Config, name: str) -> list[tuple[Any, ...]]:
    async with SqliteStore(tmp_path / f"{name}.db") as store:
        await store.commit("acme", [], [_event(1), _event(2, "invoice"), _event(3)])
        executors = {"webhook": WebhookExecutor(config.webhooks, TemplateRenderer(tmp_path))}
        handler = RuleHandler(
            rule_settings(config), store, TemplateRenderer(tmp_path), executors, lambda: T0
        )
        assert await handler.catch_up() == 3
        rows = await store.list_deliveries()
        return sorted(
            (
                d.id,
                d.rule,
                d.action_index,
                d.event_id,
                d.event_seq,
                d.exactly_once,
                d.target,
                d.status,
            )
            for d in rows
        )


async def test_a_rule_without_when_records_what_planning_each_event_records(
    tmp_path: Path,
) -> None:
    fixed = await _recorded(tmp_path, _config(), "fixed")
    # an always-true ``when`` makes the handler parse and plan every event
    planned = await _recorded(tmp_path, _config(when="true"), "planned")
    assert fixed == planned
    assert len(fixed) == 5  # two actions for each task event, one for the invoice
    assert {row[6] for row in fixed} == {"ops", "audit"}


async def test_plan_of_a_parsed_event_agrees_with_the_recorded_rows(tmp_path: Path) -> None:
    config = _config()
    async with SqliteStore(tmp_path / "state.db") as store:
        (stored,) = await store.commit("acme", [], [_event(7)])
        executors = {"webhook": WebhookExecutor(config.webhooks, TemplateRenderer(tmp_path))}
        handler = RuleHandler(
            rule_settings(config), store, TemplateRenderer(tmp_path), executors, lambda: T0
        )
        planned = await handler.plan(StoredEvent(stored.seq, stored.event))
        await handler.catch_up()
        recorded = {d.id: d for d in await store.list_deliveries()}
    assert {p.delivery.id for p in planned} == set(recorded)
    for p in planned:
        row = recorded[p.delivery.id]
        assert (row.target, row.exactly_once, row.event_seq) == (
            p.delivery.target,
            p.delivery.exactly_once,
            p.delivery.event_seq,
        )
