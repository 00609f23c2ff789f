"""A private PostgreSQL server for the benchmarks: the test suite's, imported by path.

``tests/pg.py`` holds the one copy of the ``initdb`` + ``pg_ctl`` logic (a temp folder,
a free loopback port, trust authentication, ``fsync`` off, run as ``postgres`` when we
are root). The benchmarks load it from there rather than keeping a second copy.

``unavailable()``   why no server can be started here (None when one can)
``private()``       a server for a ``with`` block; ``.database()`` gives a fresh URL
``stores_of()``     openers of a fresh store of each backend ``billnotify run`` has
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from types import ModuleType
from typing import Any

from billnotify.store import ProcessStore
from billnotify.store.base import Store

Opener = Callable[[], AbstractAsyncContextManager[Store]]
"""Opens a fresh, empty store."""

TESTS = Path(__file__).resolve().parents[1] / "tests"


def _pg() -> ModuleType:
    if str(TESTS) not in sys.path:
        sys.path.append(str(TESTS))  # tests/pg.py imports its neighbour ``servers``
    return importlib.import_module("pg")


def unavailable() -> str | None:
    """Why a private PostgreSQL server cannot be started here, or None when it can."""
    reason: str | None = _pg().available()
    return reason


@contextlib.contextmanager
def private() -> Iterator[Any]:
    """A private server (``tests/pg.py``'s ``PostgresServer``), stopped and removed after."""
    server = _pg().PostgresServer().init()
    try:
        yield server
    finally:
        server.close()


@contextlib.asynccontextmanager
async def _sqlite() -> AsyncIterator[Store]:
    with tempfile.TemporaryDirectory(prefix="bench-state-") as folder:
        async with ProcessStore(Path(folder) / "state.db") as store:  # as `billnotify run`
            yield store


def stores_of(server: Any | None) -> dict[str, Opener]:
    """``sqlite``: SQLite in its own process; ``postgres`` (when ``server`` is given): a
    :class:`PgStore` on a fresh database of ``server`` each time."""
    stores: dict[str, Opener] = {"sqlite": _sqlite}
    if server is not None:
        from billnotify.store.postgres import PgStore  # asyncpg only where it is used

        stores["postgres"] = lambda: PgStore(server.database())
    return stores
