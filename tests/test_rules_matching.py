"""rules.matching: which (rule, action) pairs an event triggers; pure, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from billnotify.config.loader import parse_config
from billnotify.config.models import Config
from billnotify.events import CloudEvent, build_event
from billnotify.rules.matching import effective_dry_run, match_event, selects
from billnotify.templating import TemplateRenderer

NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


def _event(
    type_: str = "invoice.status_changed",
    source: str = "acme",
    obj: dict[str, Any] | None = None,
    **data: Any,
) -> CloudEvent:
    entity = type_.partition(".")[0]
    return build_event(
        source=source,
        entity=entity,
        object_id="7",
        type_=type_,
        key="k",
        time=NOW,
        data={"object": obj or {"id": "7", "status": ["Approved"]}, **data},
    )


def _config(*rules: dict[str, Any], dry_run: bool = False) -> Config:
    return parse_config(
        {
            "service": {"dry_run": dry_run},
            "sources": [
                {
                    "name": n,
                    "kind": "billing_platform",
                    "base_url": "https://x.example",
                    "api_key": "k",
                }
                for n in ("acme", "metering")
            ],
            "webhooks": [{"name": "ops", "url": "https://ops.example.com/h", "secret": "x" * 20}],
            "rules": list(rules),
        },
        base_dir=Path("."),
    )


HOOK = {"type": "webhook", "endpoint": "ops"}
MAIL = {"type": "invoice_action", "action": "email"}


@pytest.fixture
def evaluate(tmp_path: Path):
    return TemplateRenderer(tmp_path).evaluate


def test_globs_select_rules_and_every_action_is_a_match(evaluate) -> None:
    config = _config(
        {"name": "a", "on": ["invoice.*"], "actions": [HOOK, MAIL]},
        {"name": "b", "on": ["billing_task.*"], "actions": [HOOK]},
        {"name": "c", "on": ["*"], "actions": [HOOK]},
    )
    matches = match_event(config.rules, _event(), evaluate)
    assert [(m.rule.name, m.action_index, m.action.type) for m in matches] == [
        ("a", 0, "webhook"),
        ("a", 1, "invoice_action"),
        ("c", 0, "webhook"),
    ]
    assert all(m.error is None for m in matches)


def test_disabled_rules_and_other_sources_do_not_match(evaluate) -> None:
    config = _config(
        {"name": "off", "on": ["*"], "enabled": False, "actions": [HOOK]},
        {"name": "other", "on": ["*"], "sources": ["metering"], "actions": [HOOK]},
        {"name": "mine", "on": ["*"], "sources": ["acme"], "actions": [HOOK]},
    )
    event = _event()
    assert [m.rule.name for m in match_event(config.rules, event, evaluate)] == ["mine"]
    assert not selects(config.rules[0], event)
    assert selects(config.rules[1], _event(source="metering"))


def test_when_sees_the_template_context(evaluate) -> None:
    config = _config(
        {
            "name": "approved",
            "on": ["invoice.status_changed"],
            "when": "'Approved' in event.data.added and object.id == '7' and source == 'acme'",
            "actions": [MAIL],
        },
        {"name": "named", "on": ["*"], "when": "rule.name == 'named'", "actions": [HOOK]},
    )
    hit = _event(added=["Approved"])
    miss = _event(added=["Emailed"])
    assert [m.rule.name for m in match_event(config.rules, hit, evaluate)] == [
        "approved",
        "named",
    ]
    assert [m.rule.name for m in match_event(config.rules, miss, evaluate)] == ["named"]


def test_a_failing_when_matches_every_action_with_the_error(evaluate) -> None:
    config = _config(
        {"name": "broken", "on": ["*"], "when": "event.data.nope.deeper", "actions": [HOOK, MAIL]},
    )
    matches = match_event(config.rules, _event(), evaluate)
    assert [m.action_index for m in matches] == [0, 1]
    assert all(m.error and "nope" in m.error for m in matches)


def test_an_evaluator_that_raises_anything_is_contained() -> None:
    def boom(expression: str, context: dict[str, Any]) -> bool:
        raise RuntimeError("bad")

    config = _config({"name": "r", "on": ["*"], "when": "x", "actions": [HOOK]})
    (match,) = match_event(config.rules, _event(), boom)
    assert match.error is not None and "RuntimeError: bad" in match.error


def test_dry_run_global_rule_or_action(evaluate) -> None:
    config = _config(
        {"name": "plain", "on": ["*"], "actions": [HOOK]},
        {"name": "rule", "on": ["*"], "dry_run": True, "actions": [HOOK]},
        {"name": "action", "on": ["*"], "actions": [{**HOOK, "dry_run": True}]},
    )
    plain, rule, action = config.rules
    assert not effective_dry_run(False, plain, plain.actions[0])
    assert effective_dry_run(True, plain, plain.actions[0])
    assert effective_dry_run(False, rule, rule.actions[0])
    assert effective_dry_run(False, action, action.actions[0])
