"""What a reader of the log pays per event to parse it and to serialise it again.

The publisher and the webhook executor parse each event read from the log and send it
serialised again. Handing them the logged JSON instead would save the serialising at
most: ``events.parse_and_serialise`` against ``events.parse`` (the ratio) is the ceiling
of what such a JSON cache could gain, to weigh against a delivery's whole cost
(``ledger``, ``mqtt``). The event is the benchmarks' failed billing task (489 bytes).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bench import BenchResult
from bench._peers import failed_task_event
from billnotify.events import CloudEvent

EVENTS = 5_000
ROUNDS = 15


def _rates(cases: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Calls/s of each case: the best of :data:`ROUNDS` rounds of :data:`EVENTS` calls,
    the cases taking turns within each round (so that a busy moment hits them all)."""
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(ROUNDS):
        for name, step in cases.items():
            started = time.perf_counter()
            for _ in range(EVENTS):
                step()
            best[name] = min(best[name], time.perf_counter() - started)
    return {name: EVENTS / seconds for name, seconds in best.items()}


async def run() -> list[BenchResult]:
    """Measure events/s parsed, and parsed then serialised again."""
    logged = failed_task_event().to_json()
    rate = _rates(
        {
            "parse": lambda: CloudEvent.from_json(logged),
            "both": lambda: CloudEvent.from_json(logged).to_json(),
        }
    )
    cost = 1e6 / rate["both"] - 1e6 / rate["parse"]
    notes = f"{EVENTS} events of {len(logged)} bytes, best of {ROUNDS}"
    return [
        BenchResult.versus(
            "events.parse_and_serialise",
            rate["both"],
            "events/s",
            rate["parse"],
            notes + f"; baseline = parse only; serialising adds {cost:.1f} µs/event",
        ),
    ]
