"""What a chained action's templates see as ``results`` (SPEC §7.5).

``results.<id>`` is the answer the action with that ``id`` got (the platform's JSON for
an invoice action), for every action the one being rendered runs ``after``, directly
or down the chain. The delivery worker (and ``render`` / dry runs, with sample
answers) sets them around one attempt; :func:`~billnotify.templating.build_context`
reads them, so no executor needs to know about chains. A context variable, not an
argument, because each attempt runs in its own task: two attempts never see each
other's answers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

_RESULTS: ContextVar[Mapping[str, Any]] = ContextVar(
    "billnotify_results", default=MappingProxyType({})
)


@contextlib.contextmanager
def chain_results(results: Mapping[str, Any]) -> Iterator[None]:
    """Let the templates rendered inside the block see ``results`` (action id -> answer)."""
    token = _RESULTS.set(MappingProxyType(dict(results)))
    try:
        yield
    finally:
        _RESULTS.reset(token)


def current_results() -> dict[str, Any]:
    """The ``results`` of the template context being built (empty outside a chain)."""
    return dict(_RESULTS.get())
