"""The worker's waits: each one a timer handle on the loop, never a task per wait.

Tests pass a :data:`CallLater` that moves a fake clock instead of
:func:`call_later`, so every wait of the delivery worker runs on test time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol


class Timer(Protocol):
    """A scheduled callback that can be called off (``asyncio.TimerHandle``)."""

    def cancel(self) -> None:
        """Do not call it."""


CallLater = Callable[[float, Callable[[], object]], Timer]
"""Calls back after a number of seconds (tests pass one that moves a fake clock)."""


def call_later(delay: float, callback: Callable[[], object]) -> Timer:
    """``callback`` after ``delay`` seconds, on the running loop's clock."""
    return asyncio.get_running_loop().call_later(delay, callback)


async def wait_for_event(event: asyncio.Event, delay: float, timer: CallLater) -> None:
    """Until ``event`` is set or ``delay`` seconds pass (a timer handle, no task)."""
    if event.is_set():
        return
    handle = timer(delay, event.set)
    try:
        await event.wait()
    finally:
        handle.cancel()
