"""The delivery worker's concurrency: a fixed pool of slots fed from a queue (SPEC §4.1).

Each of ``size`` slots is one long-lived task that takes the next started delivery and
runs its attempt, then the next: no task per delivery, and a slot that frees takes its
successor at once when one is queued. A delivery handed to the pool has its ``sending``
committed; the pool never decides what is started, only who runs it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable

from billnotify.deliveries.due import Job

logger = logging.getLogger(__name__)


class Slots:
    """``size`` slots running attempts, and the queue of started jobs waiting for one.

    Args:
        size: how many attempts run at once.
        attempt: runs one job's attempt (never raises but for cancellation).
        on_take: called as a slot takes a job (before its attempt begins).
        on_free: called as a slot finishes an attempt.

    Attributes:
        busy: ids of the jobs whose attempt holds a slot.
    """

    def __init__(
        self,
        size: int,
        attempt: Callable[[Job], Awaitable[None]],
        *,
        on_take: Callable[[Job], None],
        on_free: Callable[[], None],
    ) -> None:
        self.size = size
        self.busy: set[str] = set()
        self._attempt = attempt
        self._on_take = on_take
        self._on_free = on_free
        self._queue: collections.deque[Job] = collections.deque()
        self._idle: collections.deque[asyncio.Future[Job]] = collections.deque()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def waiting(self) -> int:
        """Started jobs waiting for a slot."""
        return len(self._queue)

    @property
    def free(self) -> int:
        """Slots that no job, running or waiting, will occupy."""
        return self.size - len(self.busy) - len(self._queue)

    def waiting_ids(self) -> set[str]:
        """The ids of the jobs waiting for a slot."""
        return {job.delivery.id for job in self._queue}

    def open(self) -> None:
        """Start the slots (once)."""
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._run(), name=f"delivery-slot-{n}")
                for n in range(self.size)
            ]

    async def close(self) -> None:
        """Cancel the slots: attempts under way are cut off; queued jobs stay queued."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._idle.clear()

    def put(self, job: Job) -> None:
        """Hand a started job to an idle slot, or queue it for the next one that frees."""
        while self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():
                self._take(job)
                waiter.set_result(job)
                return
        self._queue.append(job)

    def _take(self, job: Job) -> None:
        self.busy.add(job.delivery.id)
        self._on_take(job)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._queue:
                job = self._queue.popleft()
                self._take(job)
            else:
                waiter: asyncio.Future[Job] = loop.create_future()
                self._idle.append(waiter)
                job = await waiter
            try:
                await self._attempt(job)
            except Exception:  # a bug: the slot must survive it
                logger.exception("delivery %s: attempt failed", job.delivery.id)
            self.busy.discard(job.delivery.id)
            self._on_free()
