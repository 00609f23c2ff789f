"""The SQLite store's thread: the one thread that touches the connection.

Writes queued one behind the other share a transaction (group commit): each is still
all-or-nothing, and none of their callers resumes before the shared ``COMMIT``. While
the event loop is busy the thread mostly waits for the interpreter lock, once per
statement; fewer transactions is fewer ``BEGIN``/``COMMIT`` and fewer waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

_GROUP = 64
"""Writes committed together, at most."""
_IDLE = 1.0
"""Seconds without a call after a write before the thread checkpoints the WAL."""


@dataclass(slots=True)
class _Call:
    """One call for the store's thread.

    Attributes:
        fn: what to run; a write's ``fn`` takes the connection and runs inside a
            transaction that it may share with the writes queued next to it.
        db: the connection, for a write (None: a plain call).
    """

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    fn: Callable[..., Any]
    db: sqlite3.Connection | None = None


class StoreThread(threading.Thread):
    """The one thread that touches the SQLite connection: runs calls in order.

    A call is a queue put one way and a ``call_soon_threadsafe`` back, lighter than an
    executor's futures, which matters at one call per transaction. Calls run in the order
    they were made, and their callers resume in that order too; a call whose caller was
    cancelled before it began is skipped.
    """

    def __init__(self, on_idle: Callable[[], bool] | None = None) -> None:
        super().__init__(name="billnotify-store", daemon=True)
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._on_idle = on_idle
        self._wrote = False

    def call(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Queue ``fn``; the future resolves on the caller's loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put(_Call(loop, future, fn))
        return future

    def write(
        self, db: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]
    ) -> asyncio.Future[T]:
        """Queue ``work`` to run in a transaction (see the module docstring)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put(_Call(loop, future, work, db))
        return future

    def stop(self) -> None:
        """Finish the calls already queued, then end."""
        self._calls.put(None)

    def run(self) -> None:
        item = self._next()
        while item is not None:
            if item.db is None:
                _settle_all([_run_call(item)])
                item = self._next()
                continue
            group, item = self._writes_after(item)
            db = group[0].db
            assert db is not None
            _settle_all(_transact(db, group))
            self._wrote = True
            if item is _NOTHING:
                item = self._next()

    def _next(self) -> _Call | None:
        """The next call; after writes, ``on_idle`` runs once none came for a while
        (and again after each such while, until it says it is done)."""
        while self._wrote and self._on_idle is not None:
            try:
                return self._calls.get(timeout=_IDLE)
            except queue.Empty:
                self._wrote = not self._on_idle()
        return self._calls.get()

    def _writes_after(self, first: _Call) -> tuple[list[_Call], Any]:
        """``first`` and the writes queued right behind it; then the next call (or
        ``_NOTHING`` when the queue ran dry)."""
        group = [first]
        while len(group) < _GROUP:
            try:
                item = self._calls.get_nowait()
            except queue.Empty:
                return group, _NOTHING
            if item is None or item.db is not first.db:
                return group, item
            group.append(item)
        return group, _NOTHING


_NOTHING: Any = object()

_Done = tuple[_Call, Any, BaseException | None]
"""A call, its result and its error."""


def _run_call(call: _Call) -> _Done:
    if call.future.cancelled():  # a read of the future's state only: no one waits
        return call, None, None
    try:
        return call, call.fn(), None
    except BaseException as exc:
        return call, None, exc


def _transact(db: sqlite3.Connection, group: list[_Call]) -> list[_Done]:
    """Run the writes of ``group`` in one transaction; if one fails, each alone."""
    live = [call for call in group if not call.future.cancelled()]
    if not live:
        return []
    try:
        db.execute("BEGIN IMMEDIATE")
        results = [call.fn(db) for call in live]
        db.execute("COMMIT")
    except BaseException as exc:
        if db.in_transaction:
            # a failed rollback (the disk is full) must not end the thread: SQLite rolls
            # back a transaction whose journal it cannot write when the next one begins
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        if len(live) == 1:
            return [(live[0], None, exc)]
        return [outcome for call in live for outcome in _transact(db, [call])]
    return [(call, result, None) for call, result in zip(live, results, strict=True)]


def _settle_all(outcomes: list[_Done]) -> None:
    """Hand results back to their loops, in order (one wake-up per loop)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Done]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].loop, []).append(outcome)
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the caller's loop is closed: no one waits
            loop.call_soon_threadsafe(_settle, settled)


def _settle(outcomes: list[_Done]) -> None:
    for call, result, error in outcomes:
        if call.future.cancelled():
            continue
        if error is not None:
            call.future.set_exception(error)
        else:
            call.future.set_result(result)


class LoopRunner:
    """:class:`StoreThread`'s calls run on the event loop's own thread instead: for a
    process that does nothing but the store (the store's child, ``store/child.py``).

    There a thread only costs: each result crosses back to the loop with a wake-up
    (``call_soon_threadsafe``, a write to the loop's self-pipe and a ``select``), and the
    two threads hand the interpreter lock to each other once per statement, for nothing
    the loop could do meanwhile but read the next calls. Here the calls made in one turn
    of the loop are run together in a callback of the next (writes queued together still
    share a transaction), and their futures are settled in order on the spot. The same
    interface as :class:`StoreThread`; ``on_idle`` runs on the loop after a write once no
    call came for :data:`_IDLE` seconds.
    """

    def __init__(self, on_idle: Callable[[], bool] | None = None) -> None:
        self._calls: list[_Call] = []
        self._on_idle = on_idle
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Nothing to start: calls run on the loop of whoever makes them."""

    def call(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Queue ``fn``; it runs in the loop's next turn."""
        return self._queue(fn, None)

    def write(
        self, db: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]
    ) -> asyncio.Future[T]:
        """Queue ``work`` to run in a transaction (see the module docstring)."""
        return self._queue(work, db)

    def stop(self) -> None:
        """No more idle work; calls already queued still run."""
        self._on_idle = None
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _queue(self, fn: Callable[..., Any], db: sqlite3.Connection | None) -> asyncio.Future[Any]:
        loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._calls:
            loop.call_soon(self._run)
        self._calls.append(_Call(loop, future, fn, db))
        return future

    def _run(self) -> None:
        calls, self._calls = self._calls, []
        wrote = False
        at = 0
        while at < len(calls):
            item = calls[at]
            if item.db is None:
                _settle([_run_call(item)])
                at += 1
                continue
            end = at + 1
            while end < len(calls) and end - at < _GROUP and calls[end].db is item.db:
                end += 1
            _settle(_transact(item.db, calls[at:end]))
            wrote = True
            at = end
        assert self._loop is not None
        self._last = self._loop.time()
        if wrote and self._on_idle is not None and self._idle_timer is None:
            self._idle_timer = self._loop.call_later(_IDLE, self._idle)

    def _idle(self) -> None:
        self._idle_timer = None
        if self._on_idle is None or self._loop is None:
            return
        quiet = self._loop.time() - self._last
        if self._calls or quiet < _IDLE:  # a call came meanwhile: wait from the last
            self._idle_timer = self._loop.call_later(max(_IDLE - quiet, 0.05), self._idle)
        elif not self._on_idle():
            self._idle_timer = self._loop.call_later(_IDLE, self._idle)
