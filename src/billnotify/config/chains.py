"""Checks of chained actions: ``id``, ``after`` and ``results.<id>`` (SPEC §7.5).

An action may name itself with ``id``; a later action of the same rule with
``after = "<id>"`` runs only once that one succeeded, and its templates see
``results.<id>``, the answer the first one got. What cannot work is a config error
named by its TOML path: an ``id`` that is not a template name, two actions of a rule
with one ``id``, an ``after`` that names no earlier action of the rule (which also
rules out cycles), and ``after`` in a grouped rule (a digest has no single answer to
wait for).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from billnotify.config.action_templates import action_template_texts

_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
"""An action id is a plain name, so that ``results.<id>`` reads in a template."""

_RESULTS_REF = re.compile(r"\bresults\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_]*)|\[\s*['\"]([^'\"]+)['\"])")
"""``results.link`` or ``results['link']`` in a template's text."""

Problem = tuple[tuple[str | int, ...], str]


def chain_problems(actions: Sequence[Any], *, grouped: bool = False) -> list[Problem]:
    """Every problem of a rule's ``id`` / ``after`` keys as (location in the rule, message)."""
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for index, action in enumerate(actions):
        action_id: str | None = getattr(action, "id", None)
        after: str | None = getattr(action, "after", None)
        where: tuple[str | int, ...] = ("actions", index)
        if action_id is not None:
            if not _ID.match(action_id):
                problems.append(
                    (
                        (*where, "id"),
                        f"{action_id!r} must be a name such as 'link' (letters, digits, '_')",
                    )
                )
            elif action_id in seen:
                problems.append(
                    (
                        (*where, "id"),
                        f"{action_id!r} is already the id of actions[{seen[action_id]}]",
                    )
                )
            else:
                seen[action_id] = index
        if after is None:
            continue
        if grouped:
            problems.append(((*where, "after"), "a grouped rule's actions cannot be chained"))
        elif after == action_id:
            problems.append(((*where, "after"), f"{after!r} is this action's own id"))
        elif after not in seen:
            later = any(getattr(a, "id", None) == after for a in actions[index + 1 :])
            why = "a later action (chains run forward, no cycles)" if later else "no action"
            problems.append(
                (
                    (*where, "after"),
                    f"{after!r} names {why}: it must be the id of an earlier action of this rule",
                )
            )
    return problems


def chain_of(actions: Sequence[Any], index: int) -> list[int]:
    """The indexes of the actions that ``actions[index]`` runs after, nearest first."""
    by_id = {getattr(a, "id", None): i for i, a in enumerate(actions) if getattr(a, "id", None)}
    found: list[int] = []
    after = getattr(actions[index], "after", None)
    while after is not None and after in by_id and by_id[after] not in found:
        found.append(by_id[after])
        after = getattr(actions[by_id[after]], "after", None)
    return found


def results_referenced(texts: Sequence[str]) -> set[str]:
    """The ids a set of template texts reads as ``results.<id>`` (or ``results['id']``)."""
    names: set[str] = set()
    for text in texts:
        for match in _RESULTS_REF.finditer(text):
            names.add(match.group(1) or match.group(2))
    return names


def results_warnings(rules: Sequence[Any], folders: Sequence[Path]) -> list[str]:
    """A warning (with its TOML path) for each action whose templates read
    ``results.<id>`` where ``<id>`` is not an action it runs ``after`` (directly or down
    the chain): that answer is never there, so the template fails when it renders.

    Args:
        rules: the configured rules.
        folders: where template files are looked up, in order.
    """
    warnings: list[str] = []
    for r, rule in enumerate(rules):
        for a, action in enumerate(rule.actions):
            used = results_referenced(action_template_texts(action, folders))
            if not used:
                continue
            reachable = {rule.actions[i].id for i in chain_of(rule.actions, a)}
            for name in sorted(used - reachable):
                warnings.append(
                    f"rules[{r}].actions[{a}]: its templates read results.{name}, but it does "
                    f"not run after an action with id {name!r} (set after = {name!r} or a "
                    "chain leading there); the template will fail"
                )
    return warnings
