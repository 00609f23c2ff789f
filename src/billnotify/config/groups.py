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
from typing import Annotated, Any

from pydantic import AfterValidator

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


def check_path(path: str) -> str:
    """A ``group_by`` entry, checked (a field validator: each bad entry is reported)."""
    problem = path_problem(path)
    if problem is not None:
        raise ValueError(problem)
    return path


def check_wait(value: timedelta | None) -> timedelta | None:
    """``group_wait``: zero or more."""
    if value is not None and value < timedelta(0):
        raise ValueError("must not be negative")
    return value


def check_interval(value: timedelta | None) -> timedelta | None:
    """``group_interval``: at least a second."""
    if value is not None and value < timedelta(seconds=1):
        raise ValueError("must be at least 1s")
    return value


GroupPath = Annotated[str, AfterValidator(check_path)]
"""A ``group_by`` entry: a dotted path into the template context."""


def group_problems(actions: Sequence[Any]) -> list[tuple[tuple[str | int, ...], str, Any]]:
    """What a grouped rule's actions cannot do, as (location in the rule, message, value)."""
    problems: list[tuple[tuple[str | int, ...], str, Any]] = []
    for index, action in enumerate(actions):
        kind = getattr(action, "type", "")
        if kind == "invoice_action":
            problems.append(
                (
                    ("actions", index, "type"),
                    "an invoice_action acts on one invoice; a grouped rule sends digests "
                    "(use a rule without group_by for it)",
                    kind,
                )
            )
        elif kind == "email" and getattr(action, "attach", None):
            problems.append(
                (
                    ("actions", index, "attach"),
                    "a digest email cannot attach the PDFs of one invoice",
                    list(getattr(action, "attach", [])),
                )
            )
    return problems
