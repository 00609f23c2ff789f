"""The garbage collector's settings while the service runs.

Deliveries in flight hold many small objects for a few milliseconds each (requests,
futures, jobs). With CPython's default first-generation threshold (700 net
allocations) the collector runs every few dozen deliveries, finds most of those objects
still alive, and promotes them to older generations that it then scans again: measured
on the ``ledger`` benchmark, 25-45 µs of every delivery (10-15 % of its cost) went to
collections that freed almost nothing. A threshold of :data:`GEN0_THRESHOLD` lets the
objects of an attempt die by reference counting first, so a collection finds little to
scan; what cyclic garbage there is waits a little longer (at most that many objects).

What start-up built (config, templates, clients, modules) lives as long as the process:
frozen, the collector's full passes no longer walk it.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

GEN0_THRESHOLD = 20_000
"""Net allocations of container objects between two first-generation collections."""


@contextlib.contextmanager
def tuned_collector() -> Iterator[None]:
    """Freeze what exists now and raise the first-generation threshold, until exit.

    On exit the previous thresholds come back and the frozen objects are thawed, so a
    process that runs the service more than once (tests) does not keep them all.
    """
    previous = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(max(GEN0_THRESHOLD, previous[0]), *previous[1:])
    try:
        yield
    finally:
        gc.set_threshold(*previous)
        gc.unfreeze()
