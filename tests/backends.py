"""Every store backend, for tests that hold all of them to the same behaviour.

A backend is one entry in :data:`BACKENDS`: a factory of an unopened store given the
test's temp folder. PostgreSQL gets a fresh database of the session's private server
(``tests/pg.py``); its tests are skipped where PostgreSQL is not installed. A test
that asks for the ``backend`` fixture (``conftest.py``) runs against each.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pg
from billnotify.store import MemoryStore, ProcessStore, SqliteStore, Store
from billnotify.store.postgres import PgStore

INSTANCE = "contract"

BACKENDS: dict[str, Callable[[Path], Store]] = {
    "memory": lambda folder: MemoryStore(INSTANCE),
    "sqlite": lambda folder: SqliteStore(folder / "state.db", INSTANCE),
    "process": lambda folder: ProcessStore(folder / "state.db", INSTANCE),
    "postgres": lambda folder: PgStore(pg.shared().database(), instance=INSTANCE),
}
