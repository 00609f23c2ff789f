"""``python -m billnotify.store.child PATH [INSTANCE]``: the process a :class:`ProcessStore`
talks to.

It opens a :class:`~billnotify.store.sqlite.SqliteStore` on ``PATH`` (recording
``INSTANCE`` on the deliveries it starts) and serves calls
framed on stdin (see :mod:`billnotify.store.channel`), one reply per call on stdout, until
stdin closes; then it finishes the calls it has and closes the store. SIGINT and SIGTERM
are ignored: stopping is the parent's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import signal
import sys
from typing import Any

from billnotify.collector import tuned_collector
from billnotify.errors import StoreError
from billnotify.store.channel import frame, read_frame
from billnotify.store.sqlite import SqliteStore

PIPE_BYTES = 1 << 20
"""Pipe capacity asked for (Linux's default cap for an unprivileged process: 1 MiB)."""


def _widen_pipes() -> None:
    """Both pipes to :data:`PIPE_BYTES` where the system allows (Linux): a commit or a
    page of snapshots is a frame of a few hundred KiB, which the default 64 KiB pipe
    takes in many partial writes, each a wake-up of both processes."""
    setpipe = getattr(fcntl, "F_SETPIPE_SZ", None)
    for stream in (sys.stdin, sys.stdout):
        with contextlib.suppress(OSError, ValueError, TypeError):
            if setpipe is not None:
                fcntl.fcntl(stream.fileno(), setpipe, PIPE_BYTES)


async def serve(path: str, instance: str | None = None) -> None:
    """Serve the store at ``path`` over this process's stdin and stdout."""
    _widen_pipes()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**31 - 1)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, sys.stdout.buffer
    )
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    # this process does nothing but the store: its SQLite runs on the loop's thread
    store = SqliteStore(path, instance, on_loop=True)

    async def handle(number: int, name: str, args: tuple[Any, ...], kwargs: Any) -> None:
        try:
            if name.startswith("_"):
                raise StoreError(f"not a store method: {name}")
            reply = frame((number, True, await getattr(store, name)(*args, **kwargs)))
        except Exception as exc:
            try:
                reply = frame((number, False, exc))
            except Exception:  # an error that does not pickle: its words do
                reply = frame((number, False, StoreError(f"{name}: {exc}")))
        writer.write(reply)

    try:
        await store.open()
    except Exception as exc:  # the answer to the parent's first call, which waits for it
        number, _, _, _ = await read_frame(reader)
        writer.write(frame((number, False, exc)))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        return
    tasks: set[asyncio.Task[None]] = set()
    try:
        while True:
            try:
                number, name, args, kwargs = await read_frame(reader)
            except asyncio.IncompleteReadError:
                break  # the parent closed the store, or died
            # started in arrival order: each queues its statements before the next runs
            task = asyncio.create_task(handle(number, name, args, kwargs))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        with contextlib.suppress(ConnectionError):  # a parent that died reads no more
            await writer.drain()
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> int:
    """Serve the store at ``argv[0]`` (as instance ``argv[1]``) until stdin closes."""
    args = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with tuned_collector():
        asyncio.run(serve(args[0], args[1] if len(args) > 1 else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
