"""Group commit of attempt outcomes for the delivery worker (SPEC §4.1).

An attempt's outcome must be committed before the worker counts the delivery as
settled. Committing each one in its own transaction would make the store the
bottleneck; :class:`OutcomeWriter` commits the outcomes that arrive close together in one
:meth:`~billnotify.store.base.Store.finish_attempts` transaction instead, and each writer
still waits for the commit that holds its outcome.
"""

from __future__ import annotations

import asyncio

from billnotify.store.base import AttemptEnd, Store


class OutcomeWriter:
    """Group commit of attempt outcomes.

    :meth:`write` returns once a transaction holding its outcome has committed. At most
    one commit runs at a time; outcomes written meanwhile wait for it and then go
    together in the next one, so the batch grows with the load and an idle worker adds
    no delay.
    """

    def __init__(self, store: Store, max_batch: int = 500) -> None:
        self._store = store
        self._max_batch = max_batch
        self._queue: list[tuple[AttemptEnd, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def write(self, end: AttemptEnd) -> None:
        """Commit ``end``; raises the store's error if its transaction failed.

        A caller cancelled while waiting does not withdraw the outcome: it is still
        committed (:meth:`flush` waits for that).
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((end, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._commit_all(), name="delivery-outcomes")
        await future

    async def flush(self) -> None:
        """Wait until every outcome written so far is committed (or failed)."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.wait({self._flusher})  # neither cancels it nor raises

    async def _commit_all(self) -> None:
        while self._queue:
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            try:
                await self._store.finish_attempts([end for end, _ in batch])
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)
