"""``billnotify render`` for a grouped rule: what its next digest would send.

A grouped rule sends digests, so its preview is a digest of sample events:

- ``render RULE --sample N`` takes the newest N events of the log that the rule matches
  (its ``on``, ``sources`` and ``when``), in the group of the newest one, as a flush of
  that group would carry them;
- ``render RULE --event FILE [--sample N]`` makes a digest of the event in FILE, N times
  (default once; each copy gets its own id), for a rule whose events the log does not
  hold yet.

Stdout is the JSON of what each action would send (as for any rule); what the digest
holds is said on stderr.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path

from billnotify.actions.base import ActionExecutor
from billnotify.cli.commands import RenderReport, render_report
from billnotify.config.models import Config, Rule
from billnotify.events import CloudEvent
from billnotify.rules.engine import Evaluator
from billnotify.rules.groups import digest_of
from billnotify.rules.matching import evaluate_when, selects
from billnotify.store.base import EventLog

EXIT_FAILURE = 1

SCAN = 5000
"""The newest events of each ``on`` type read from the log to find samples."""


def copies(event: CloudEvent, count: int) -> list[CloudEvent]:
    """``count`` copies of ``event``, each with its own id (``<id>-1``, ``<id>-2``, ...)."""
    if count <= 1:
        return [event]
    return [event.model_copy(update={"id": f"{event.id}-{n}"}) for n in range(1, count + 1)]


def fires(rule: Rule, event: CloudEvent, renderer: Evaluator) -> bool:
    """Whether the rule would collect ``event`` (a failing ``when`` counts as not)."""
    if not selects(rule, event):
        return False
    applies, error = evaluate_when(rule, event, renderer.evaluate)
    return applies and error is None


async def matching_events(
    store: EventLog, rule: Rule, renderer: Evaluator, count: int
) -> list[CloudEvent]:
    """The newest ``count`` events of the log the rule would collect, oldest first."""
    found: dict[int, CloudEvent] = {}
    for glob in rule.on:
        for stored in await store.list_events(type_glob=glob, limit=SCAN):
            if stored.seq not in found and fires(rule, stored.event, renderer):
                found[stored.seq] = stored.event
    return [found[seq] for seq in sorted(found)][-count:]


async def digest_report(
    config: Config,
    renderer: Evaluator,
    executors: Mapping[str, ActionExecutor],
    rule: Rule,
    events: Sequence[CloudEvent],
) -> tuple[CloudEvent, RenderReport]:
    """What each action of a grouped rule would send for a digest of ``events``."""
    digest = digest_of(rule, events)
    report = await render_report(config, renderer, executors, rule.name, digest)
    firing = [e for e in events if fires(rule, e, renderer)]
    not_firing = None if firing else "the rule collects none of the sample events (type or 'when')"
    return digest, replace(report, not_firing=not_firing)


async def render_digest(
    config: Config, rule: Rule, event_file: Path | None, sample: int | None
) -> int:
    """``billnotify render`` of a grouped rule; returns the exit status."""
    from billnotify.components import build_actions, build_store

    count = 1 if sample is None else sample
    if count < 1:
        print("billnotify: --sample must be at least 1", file=sys.stderr)
        return EXIT_FAILURE
    actions = build_actions(config)
    try:
        if event_file is not None:
            try:
                event = CloudEvent.from_json(event_file.read_bytes())
            except (OSError, ValueError) as exc:
                print(f"billnotify: cannot read event {event_file}: {exc}", file=sys.stderr)
                return EXIT_FAILURE
            events = copies(event, count)
        else:
            store = build_store(config)
            await store.open()
            try:
                events = await matching_events(store, rule, actions.renderer, count)
            finally:
                await store.close()
            if not events:
                print(
                    f"billnotify: the log holds no event rule {rule.name!r} collects; "
                    "preview with --event FILE [--sample N]",
                    file=sys.stderr,
                )
                return EXIT_FAILURE
        digest, report = await digest_report(
            config, actions.renderer, actions.executors, rule, events
        )
    finally:
        await actions.close()
    print(json.dumps([asdict(r) for r in report.rendered], indent=2, default=str))
    print(
        f"billnotify: a digest of {digest.data['count']} events, group "
        f"{json.dumps(digest.data['group'])}",
        file=sys.stderr,
    )
    for error in report.errors:
        print(f"billnotify: template error: {error}", file=sys.stderr)
    if report.not_firing:
        print(f"billnotify: rule {rule.name!r}: {report.not_firing}", file=sys.stderr)
    return report.exit_code
