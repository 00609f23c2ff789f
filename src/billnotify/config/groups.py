"""Checks of a grouped rule's ``group_by``, ``group_wait`` and ``group_interval`` (SPEC §7.2).

A rule is grouped when it sets any of the three: its matching events are collected per
group and sent as one digest per flush. What a digest cannot do is a config error, named
by its TOML path: an ``invoice_action`` (it acts on one invoice, not on a list of
events) and an email's ``attach`` (the PDFs of one invoice).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

GROUP_ROOTS = ("event", "object", "previous", "source")
"""Where a ``group_by`` path may start: the names of the template context it reads."""

DEFAULT_GROUP_WAIT = timedelta(seconds=30)
"""How long a new group collects events before its first flush, by default."""

DEFAULT_GROUP_INTERVAL = timedelta(minutes=5)
"""The least time between two flushes of a group, by default."""

_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")


def path_problem(path: str) -> str | None:
    """Why a ``group_by`` path is not valid, or None.

    A path is dotted names into the template context: ``source``,
    ``object.billingTaskType``, ``event.data.object.customerId``, ``previous.status``.
    """
    if not _PATH.match(path):
        return f"{path!r} is not a dotted path such as 'object.billingTaskType'"
    root, _, rest = path.partition(".")
    if root not in GROUP_ROOTS:
        return f"{path!r} must start with one of {', '.join(GROUP_ROOTS)}"
    if root == "source" and rest:
        return f"{path!r}: 'source' is the source's name, it has no fields"
    return None


def group_problems(
    group_by: Sequence[str] | None,
    group_wait: timedelta | None,
    group_interval: timedelta | None,
    actions: Sequence[Any],
) -> list[tuple[tuple[str | int, ...], str]]:
    """Every problem of a grouped rule as (location in the rule, message)."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    for index, path in enumerate(group_by or ()):
        problem = path_problem(path)
        if problem is not None:
            problems.append((("group_by", index), problem))
    if group_wait is not None and group_wait < timedelta(0):
        problems.append((("group_wait",), "must not be negative"))
    if group_interval is not None and group_interval < timedelta(seconds=1):
        problems.append((("group_interval",), "must be at least 1s"))
    for index, action in enumerate(actions):
        kind = getattr(action, "type", "")
        if kind == "invoice_action":
            problems.append(
                (
                    ("actions", index, "type"),
                    "an invoice_action acts on one invoice; a grouped rule sends digests "
                    "(use a rule without group_by for it)",
                )
            )
        elif kind == "email" and getattr(action, "attach", None):
            problems.append(
                (
                    ("actions", index, "attach"),
                    "a digest email cannot attach the PDFs of one invoice",
                )
            )
    return problems
