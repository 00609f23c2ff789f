"""Which actions an event triggers: pure functions, no I/O (SPEC §4).

A rule applies to an event when it is enabled, one of its ``on`` globs matches the
event type, its ``sources`` list (if any) names the event's source, and its ``when``
expression (if any) is true. Every action of an applying rule is one :class:`Match`.

A ``when`` that cannot be evaluated must not stop the pipeline, and it must not be
silently dropped either: it yields a match per action carrying the error, which the
rule handler records as a ``dead`` delivery so that ``billnotify deliveries`` shows it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from billnotify.config.models import Action, Rule
from billnotify.events import CloudEvent
from billnotify.templating import build_context

logger = logging.getLogger(__name__)

Evaluate = Callable[[str, dict[str, Any]], bool]
"""Evaluates a Jinja expression against a context (``TemplateRenderer.evaluate``)."""


@dataclass(frozen=True, slots=True)
class Match:
    """One action an event triggers.

    Attributes:
        rule: the rule that applies.
        action_index: the action's position in ``rule.actions`` (part of the delivery id).
        action: the action itself.
        error: why the rule's ``when`` could not be evaluated, if it could not.
    """

    rule: Rule
    action_index: int
    action: Action
    error: str | None = None


def selects(rule: Rule, event: CloudEvent) -> bool:
    """Whether a rule is enabled and its ``on`` globs and ``sources`` admit the event.

    The ``when`` expression is not considered here (see :func:`match_event`).
    """
    return admits(rule, event.type, event.source_name)


def admits(rule: Rule, event_type: str, source: str) -> bool:
    """:func:`selects` for an event known by its type and source name only."""
    if not rule.enabled or not rule.matches(event_type):
        return False
    return not rule.sources or source in rule.sources


def evaluate_when(rule: Rule, event: CloudEvent, evaluate: Evaluate) -> tuple[bool, str | None]:
    """Evaluate a rule's ``when`` for an event.

    Returns:
        ``(applies, error)``: a rule without ``when`` applies; an expression that raised
        gives ``(True, message)`` so the caller can record the failure per action.
    """
    if rule.when is None or not rule.when.strip():
        return True, None
    try:
        return bool(evaluate(rule.when, build_context(event, rule))), None
    except Exception as exc:  # any failure of a user expression is data, not a crash
        return True, f"when {rule.when!r} failed: {type(exc).__name__}: {exc}"


def match_event(rules: Iterable[Rule], event: CloudEvent, evaluate: Evaluate) -> list[Match]:
    """Every (rule, action) the event triggers, in config order.

    Args:
        rules: the configured rules.
        event: the event to match.
        evaluate: evaluates ``when`` expressions.

    Returns:
        One :class:`Match` per action of every applying rule; when a rule's ``when``
        failed to evaluate, each of its actions is a match with ``error`` set.
    """
    matches: list[Match] = []
    for rule in rules:
        if not selects(rule, event):
            continue
        applies, error = evaluate_when(rule, event, evaluate)
        if error is not None:
            logger.warning("rule %s: event %s: %s", rule.name, event.id, error)
        if not applies:
            continue
        matches.extend(
            Match(rule=rule, action_index=index, action=action, error=error)
            for index, action in enumerate(rule.actions)
        )
    return matches


def effective_dry_run(global_dry_run: bool, rule: Rule, action: Action) -> bool:
    """Whether an action only renders: dry-run globally, for the rule or for the action."""
    return global_dry_run or rule.dry_run or bool(action.dry_run)
