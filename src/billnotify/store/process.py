"""The SQLite store in a process of its own, for the running service.

:class:`SqliteStore` keeps its connection on a thread, which still shares the
interpreter lock with the event loop and slowed the loop beside it on the delivery path
(measured in ``docs/performance.md``). :class:`ProcessStore` runs the very same
:class:`SqliteStore` in a child interpreter (``python -m billnotify.store.child PATH``)
and talks to it with pickled frames, one per call on the child's stdin, one reply on its
stdout. Writes run whole in the child (:data:`REMOTE`); reads run their statements
there and make their objects here, so that what crosses is rows: strings and numbers,
cheap to pickle.

What stays the same: every call is one store call, run in the order the calls were made
(the child starts them in arrival order, and its store thread runs them in that order),
and a write has committed before its caller resumes. What the child adds:

- it ignores SIGINT and SIGTERM (a signal to the whole process group is the parent's to
  handle, which may still record outcomes while it drains), and ends when its stdin
  closes: after the parent closes the store, or dies;
- a child that ends early fails every call in flight and every later one with a
  :class:`~billnotify.errors.StoreError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import pickle
import sys
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any

from billnotify.errors import StoreError
from billnotify.store.sqlite import SqliteStore

logger = logging.getLogger(__name__)

_HEADER = 4
"""Bytes of the big-endian length in front of each frame."""


def frame(value: Any) -> bytes:
    """``value`` pickled, behind its length."""
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return len(data).to_bytes(_HEADER, "big") + data


async def read_frame(reader: asyncio.StreamReader) -> Any:
    """The next value :func:`frame` wrote (raises IncompleteReadError at the end)."""
    size = int.from_bytes(await reader.readexactly(_HEADER), "big")
    return pickle.loads(await reader.readexactly(size))


class ProcessStore(SqliteStore):
    """:class:`SqliteStore`, served by a child process (see the module docstring).

    Args:
        path: the database file (created with its folder if missing).
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self._child: asyncio.subprocess.Process | None = None
        self._replies: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._numbers = itertools.count()
        self._gone: str | None = None

    async def open(self) -> None:
        """Start the child and wait until it has opened the file."""
        if str(self.path) == ":memory:":
            raise StoreError("a store in a process of its own needs a file, not ':memory:'")
        self._gone = None
        # the child imports what this process imports, however it found billnotify
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self._child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "billnotify.store.child",
            str(self.path),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        self._replies = asyncio.create_task(self._read_replies(), name="store-replies")
        try:
            await self._remote("ping", (), {})
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Let the child finish what was asked of it, then end it."""
        child, self._child = self._child, None
        if child is None:
            return
        assert child.stdin is not None
        with contextlib.suppress(ConnectionError):
            child.stdin.close()
        try:
            await asyncio.wait_for(child.wait(), 30.0)
        except TimeoutError:
            logger.error("the store process did not end within 30s; killing it")
            child.kill()
            await child.wait()
        if self._replies is not None:
            await self._replies  # ends on the child's EOF, failing what still waits
            self._replies = None

    async def _fetch(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read, run in the child: the methods that only read run here."""
        rows: list[tuple[Any, ...]] = await self._remote("_fetch", (sql, tuple(params)), {})
        return rows

    async def _remote(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        child = self._child
        if child is None:
            raise StoreError("the state store is not open")
        if self._gone is not None:
            raise StoreError(self._gone)
        number = next(self._numbers)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[number] = future
        assert child.stdin is not None
        try:
            child.stdin.write(frame((number, name, args, kwargs)))
        except (ConnectionError, RuntimeError) as exc:
            self._waiting.pop(number, None)
            raise StoreError(f"the store process is gone: {exc}") from None
        return await future

    async def _read_replies(self) -> None:
        child = self._child
        assert child is not None and child.stdout is not None
        try:
            while True:
                number, ok, value = await read_frame(child.stdout)
                future = self._waiting.pop(number, None)
                if future is None or future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            code = child.returncode
            self._gone = "the store process ended" + (f" (status {code})" if code else "")
            waiting, self._waiting = self._waiting, {}
            for future in waiting.values():
                if not future.done():
                    future.set_exception(StoreError(self._gone))


def _forwarder(name: str) -> Callable[..., Coroutine[Any, Any, Any]]:
    @functools.wraps(getattr(SqliteStore, name))
    async def forward(self: ProcessStore, *args: Any, **kwargs: Any) -> Any:
        return await self._remote(name, args, kwargs)

    return forward


REMOTE = frozenset(
    {
        "ping",
        "clear_dirty",
        "commit_rows",
        "read_log",
        "set_position",
        "record_deliveries",
        "read_due",
        "start_attempt",
        "start_attempts",
        "finish_attempts",
        "recover_in_flight",
        "set_delivery_status",
        "disable_endpoint",
        "enable_endpoint",
    }
)
"""The methods of :class:`SqliteStore` that run whole in the child: every one that writes,
or reads through more than :meth:`SqliteStore._fetch`. The others run here, their
statements in the child (:meth:`ProcessStore._fetch`), and make their objects here, so
that only rows cross between the processes."""

for _name in REMOTE:
    setattr(ProcessStore, _name, _forwarder(_name))
