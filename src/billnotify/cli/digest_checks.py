"""``billnotify check`` warnings for templates that read the wrong context: a grouped
rule's template reading ``object`` / ``previous`` (empty in a digest), or another rule's
template reading ``events`` / ``group`` / ``count`` (only a digest has them).

Either renders into a failed delivery at send time (templates are ``StrictUndefined``),
so ``check`` says so beforehand, with the action's TOML path. The names a template reads
come from its syntax tree (``jinja2.meta``), not from rendering it with made-up data.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta

from billnotify.config.action_templates import action_template_texts

SINGLE_ONLY = frozenset({"object", "previous", "changed"})
"""Names of one event's context that a digest leaves empty."""

DIGEST_ONLY = frozenset({"events", "group", "count"})
"""Names only a digest's context has."""


def digest_template_warnings(rules: Sequence[Any], folders: Sequence[Path]) -> list[str]:
    """One warning per action whose templates read names its rule's context lacks."""
    env = jinja2.Environment()
    warnings: list[str] = []
    for r, rule in enumerate(rules):
        for a, action in enumerate(rule.actions):
            names = _names(env, action_template_texts(action, folders))
            if (
                rule.grouped
                and (wrong := sorted(names & SINGLE_ONLY))
                and not (names & DIGEST_ONLY)
            ):
                warnings.append(
                    f"rules[{r}].actions[{a}]: its templates read {', '.join(wrong)}, empty "
                    "in a digest of a grouped rule (use events, group, count; e.g. "
                    "template = 'task_failed_digest'); they will fail when they render"
                )
            elif not rule.grouped and (wrong := sorted(names & DIGEST_ONLY)):
                warnings.append(
                    f"rules[{r}].actions[{a}]: its templates read {', '.join(wrong)}, which "
                    "only a grouped rule's digest has (set group_by on the rule); they will "
                    "fail when they render"
                )
    return warnings


def _names(env: jinja2.Environment, texts: Iterable[str]) -> set[str]:
    names: set[str] = set()
    for text in texts:
        try:
            names |= meta.find_undeclared_variables(env.parse(text))
        except jinja2.TemplateSyntaxError:
            continue  # reported as an error by the template check
    return names
