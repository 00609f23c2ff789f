"""The pipe between a :class:`~billnotify.store.process.ProcessStore` and its child.

A call is one pickled frame ``(number, method name, args, kwargs)`` on the child's stdin;
its reply one frame ``(number, ok, result or exception)`` on the child's stdout. Calls
are pipelined: many may be in flight, and the child starts them in arrival order.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pickle
import sys
from pathlib import Path
from typing import Any

from billnotify.errors import StoreError

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


class Channel:
    """The child process serving a store file, and the calls in flight to it.

    Args:
        path: the database file the child opens.
        instance: the name the child's store records on the deliveries it starts.
    """

    def __init__(self, path: str | Path, instance: str) -> None:
        self.path = path
        self.instance = instance
        self._child: asyncio.subprocess.Process | None = None
        self._replies: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._numbers = itertools.count()
        self._gone: str | None = None

    @property
    def pid(self) -> int | None:
        """The child's process id, while it runs."""
        return self._child.pid if self._child is not None else None

    async def start(self) -> None:
        """Start the child (``python -m billnotify.store.child PATH INSTANCE``)."""
        self._gone = None
        # the child imports what this process imports, however it found billnotify
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self._child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "billnotify.store.child",
            str(self.path),
            self.instance,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        self._replies = asyncio.create_task(self._read_replies(), name="store-replies")

    async def stop(self) -> None:
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

    async def call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run the store's method ``name`` in the child; its result, or its exception.

        Raises:
            StoreError: the store is not open, or the child has ended.
        """
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
