"""The garbage collector's settings while the service runs.

Deliveries in flight hold many small objects for a few milliseconds each; a higher
first-generation threshold lets them die by reference counting before a collection
scans and promotes them, and what start-up built is frozen out of full passes. The
measurements are in ``docs/performance.md``.
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
