"""A private PostgreSQL server for the benchmarks: the test suite's, imported by path.

``tests/pg.py`` holds the one copy of the ``initdb`` + ``pg_ctl`` logic (a temp folder,
a free loopback port, trust authentication, ``fsync`` off, run as ``postgres`` when we
are root). The benchmarks load it from there rather than keeping a second copy.

``unavailable()``   why no server can be started here (None when one can)
``private()``       a server for a ``with`` block; ``.database()`` gives a fresh URL
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

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
