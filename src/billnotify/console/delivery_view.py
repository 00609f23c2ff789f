"""What a delivery's console page shows beyond its ledger row (SPEC §7.5): the answer
kept with it, and for a chained action the delivery it runs after, so that a ``waiting``
or ``skipped`` one says what it waits for or why it did not run."""

from __future__ import annotations

import json
from dataclasses import dataclass

from billnotify.config.chains import chain_of
from billnotify.config.models import Config
from billnotify.store.base import Store
from billnotify.store.records import Delivery, delivery_id


@dataclass(frozen=True)
class RunsAfter:
    """The action a chained delivery runs after.

    Attributes:
        label: that action's ``id``.
        delivery: its delivery for the same event.
        status: how that delivery stands (None: not recorded).
    """

    label: str
    delivery: str
    status: str | None


async def kept_answer(store: Store, delivery: Delivery) -> str | None:
    """The answer kept with the delivery, as indented JSON (None: nothing kept)."""
    kept = (await store.get_results([delivery.id])).get(delivery.id)
    if kept is None:
        return None
    try:
        return json.dumps(json.loads(kept), indent=2, ensure_ascii=False)
    except ValueError:  # shown as stored rather than not at all
        return kept


async def runs_after(config: Config, store: Store, delivery: Delivery) -> RunsAfter | None:
    """The delivery this one runs after (``after`` in its rule), None for an action that
    runs on its own (or whose rule or action the config no longer has)."""
    rule = next((r for r in config.rules if r.name == delivery.rule), None)
    if rule is None or not 0 <= delivery.action_index < len(rule.actions):
        return None
    chain = chain_of(rule.actions, delivery.action_index)
    if not chain:
        return None
    index = chain[0]
    label = rule.actions[index].id or str(index)
    before = delivery_id(rule.name, index, delivery.event_id)
    found = await store.get_delivery(before)
    return RunsAfter(label, before, found.status.value if found is not None else None)
