"""A window of publishes awaiting the broker's acknowledgement, kept in log order.

Publishing one message at a time costs a network round trip per event; the window
keeps up to ``size`` publishes in flight and reports how far the log is *safely*
published: the highest ``seq`` such that it and every earlier one were acknowledged.
That is the only position the publisher may store, so a crash or an outage re-sends
at most the window, never skips an event.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable

Publish = Callable[[], Awaitable[None]]
"""A factory of one publish (a future, or a coroutine run as a task), called once a slot
is free."""


class WindowStalled(TimeoutError):
    """No publish in a full window was acknowledged for ``stall_timeout`` seconds."""


class InflightWindow:
    """Up to ``size`` concurrent publishes; acknowledgements tracked in submit order.

    The first failure is remembered and re-raised by the next :meth:`submit`,
    :meth:`advance` or :meth:`drain`: one lost connection fails every later publish
    too, and the caller reconnects and resumes from :attr:`acked`.

    Individual publishes carry no timeout of their own (a timer per message costs as
    much as the publish); instead waiting for a slot, or for the window to drain,
    gives up with :class:`WindowStalled` after ``stall_timeout`` seconds without an
    acknowledgement.

    A full window takes new publishes again once a quarter of it is free, not at each
    acknowledgement: a publisher woken per acknowledgement sent one message per turn of
    the event loop, each with its wake-up and its write to the connection.

    Args:
        size: the most publishes in flight.
        acked: the position to report before anything is acknowledged.
        on_ack: called once per acknowledged publish (for counters).
        stall_timeout: how long a full window may go without any acknowledgement.
    """

    def __init__(
        self,
        size: int,
        acked: int = 0,
        on_ack: Callable[[], None] | None = None,
        stall_timeout: float = 60.0,
    ) -> None:
        self._on_ack = on_ack
        self._stall_timeout = stall_timeout
        self._free = size
        self._refill = max(1, size // 4)
        self._room = asyncio.Event()
        """Set when a full window has :attr:`_refill` free slots again."""
        self._last_ack = time.monotonic()
        self._pending: deque[tuple[int | None, asyncio.Future[None]]] = deque()
        self._failure: BaseException | None = None
        self.acked = acked
        """Highest seq acknowledged together with everything submitted before it."""

    def __len__(self) -> int:
        return len(self._pending)

    async def submit(self, seq: int | None, publish: Publish) -> asyncio.Future[None]:
        """Start ``publish()`` once a slot is free.

        Args:
            seq: the event's log position, or None for a publish that does not move
                the position (retained state).
            publish: a factory of the publish coroutine, called only once a slot
                is free, so that publishes leave in submit order.

        Returns:
            The publish's future.
        """
        while self._free == 0:
            await self._room_again()
        self._raise_failure()
        self._free -= 1
        future = asyncio.ensure_future(publish())
        future.add_done_callback(self._finished)
        self._pending.append((seq, future))
        return future

    async def _room_again(self) -> None:
        """Until a quarter of the window is free; raises :class:`WindowStalled` after
        ``stall_timeout`` seconds without an acknowledgement."""
        while self._free < self._refill:
            self._room.clear()
            try:
                async with asyncio.timeout(self._stall_timeout):
                    await self._room.wait()
            except TimeoutError:
                if time.monotonic() - self._last_ack >= self._stall_timeout:
                    raise WindowStalled(
                        f"no acknowledgement for {self._stall_timeout:g}s"
                        f" with {len(self)} in flight"
                    ) from None

    def _finished(self, future: asyncio.Future[None]) -> None:
        self._free += 1
        if self._free >= self._refill:
            self._room.set()
        if future.cancelled():
            return
        self._last_ack = time.monotonic()  # an answer, good or bad: the broker is there
        exc = future.exception()  # retrieved for every one, so none is reported unhandled
        if exc is None:
            if self._on_ack is not None:
                self._on_ack()
        elif self._failure is None:
            self._failure = exc

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def advance(self) -> int:
        """Drop acknowledged publishes from the head and return :attr:`acked`.

        Raises:
            Exception: the first publish that failed.
        """
        self._raise_failure()
        return self.settle()

    def settle(self) -> int:
        """Like :meth:`advance`, but stop quietly at the first failed publish.

        For after a failure: what was acknowledged before it still counts.
        """
        pending = self._pending
        while pending:
            seq, future = pending[0]
            if not future.done() or future.cancelled() or future.exception() is not None:
                break
            pending.popleft()
            if seq is not None:
                self.acked = seq
        return self.acked

    async def wait(self, futures: Iterable[asyncio.Future[None]]) -> None:
        """Wait until ``futures`` are done; raise the window's first failure."""
        todo = [future for future in futures if not future.done()]
        if todo:
            _done, pending = await asyncio.wait(todo, timeout=self._stall_timeout)
            self._raise_failure()
            if pending:
                raise WindowStalled(
                    f"{len(pending)} publishes unacknowledged after {self._stall_timeout:g}s"
                )
        self._raise_failure()

    async def drain(self) -> int:
        """Wait for every publish in flight; return :attr:`acked`."""
        await self.wait([future for _seq, future in self._pending])
        return self.advance()

    async def close(self) -> None:
        """Abandon every publish in flight (the connection is gone)."""
        futures = [future for _seq, future in self._pending]
        self._pending.clear()
        for future in futures:
            future.cancel()
        if futures:
            await asyncio.gather(*futures, return_exceptions=True)
