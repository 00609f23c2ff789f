"""Group commit of attempt outcomes for the delivery worker (SPEC §4.1).

An attempt's outcome must be committed before the worker counts the delivery as
settled. Committing each one in its own transaction would make the store the
bottleneck; :class:`OutcomeWriter` commits the outcomes that arrive close together in one
:meth:`~billnotify.store.base.Ledger.finish_attempts` transaction instead, and tells each
writer once the commit that holds its outcome is over.

A commit that fails for the store's sake (a full disk) is tried again until it holds,
since the outcome is known and only its record is missing; once the worker flushes
(shutting down) a failure is final, and the next start recovers the ``sending`` rows.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable

from billnotify.errors import StoreError
from billnotify.store.base import Ledger
from billnotify.store.records import AttemptEnd

logger = logging.getLogger(__name__)

Committed = Callable[[BaseException | None], object]
"""Called once the outcome's transaction is over: with None, or with why it failed."""


class OutcomeWriter:
    """Group commit of attempt outcomes.

    :meth:`put` queues an outcome and returns at once; its callback runs once a
    transaction holding it has committed (or failed). :meth:`write` waits for that
    instead. At most one commit runs at a time; outcomes queued meanwhile wait for it and
    then go together in the next one, so the batch grows with the load and an idle worker
    adds no delay.
    """

    def __init__(self, store: Ledger, max_batch: int = 500) -> None:
        self._store = store
        self._max_batch = max_batch
        self._queue: list[tuple[AttemptEnd, Committed]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._patient = True
        """Whether a commit the store failed is tried again (until :meth:`flush`)."""

    def put(self, end: AttemptEnd, then: Committed) -> None:
        """Queue ``end`` for the next commit; ``then`` is called once it is over."""
        self._queue.append((end, then))
        if self._flusher is None or self._flusher.done():
            # a context of its own: it outlives the attempt that happened to start it, and
            # must not log under that attempt's delivery id
            self._flusher = asyncio.create_task(
                self._commit_all(), name="delivery-outcomes", context=contextvars.Context()
            )

    async def write(self, end: AttemptEnd) -> None:
        """Commit ``end``; raises the store's error if its transaction failed.

        A caller cancelled while waiting does not withdraw the outcome: it is still
        committed (:meth:`flush` waits for that).
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.put(end, lambda error: _resolve(future, error))
        await future

    async def flush(self) -> None:
        """Wait until every outcome queued so far is committed (or failed: from now on
        a commit the store fails is not tried again)."""
        self._patient = False
        while self._flusher is not None and not self._flusher.done():
            await asyncio.wait({self._flusher})  # neither cancels it nor raises

    async def _commit_all(self) -> None:
        failures = 0
        while self._queue:
            batch = self._queue[: self._max_batch]
            error: BaseException | None = None
            try:
                await self._store.finish_attempts([end for end, _ in batch])
            except StoreError as exc:
                if self._patient:
                    failures += 1
                    if failures == 1:
                        logger.error("cannot record delivery outcomes: %s; retrying", exc)
                    await asyncio.sleep(min(5.0, 0.1 * 2**failures))
                    continue
                error = exc
            except Exception as exc:
                error = exc
            if failures and error is None:
                logger.info("delivery outcomes recorded again after %d failures", failures)
            failures = 0
            del self._queue[: len(batch)]
            for _, then in batch:
                try:
                    then(error)
                except Exception:
                    logger.exception("handling a committed delivery outcome failed")


def _resolve(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(None)
