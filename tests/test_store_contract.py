"""The store contract (``store_contract*.py``) run against every backend.

A backend is one entry in :data:`BACKENDS`: a factory of an unopened store given the
test's temp folder. PostgreSQL gets a fresh database of the session's private server
(``tests/pg.py``); its tests are skipped where PostgreSQL is not installed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

import pg
from billnotify.store import MemoryStore, ProcessStore, SqliteStore, Store
from billnotify.store.postgres import PgStore
from store_contract import EventLogContract, LifecycleContract, SnapshotsContract
from store_contract_chains import ChainsContract
from store_contract_groups import GroupsContract
from store_contract_holds import HoldsContract
from store_contract_leases import (
    INSTANCE,
    DueWakeUpContract,
    FencingContract,
    LeasesContract,
    RecoveryContract,
)
from store_contract_ledger import DeliveriesContract, EndpointsContract, LedgerContract
from store_contract_operators import OperatorLogContract
from store_contract_sessions import ConsoleSessionsContract

BACKENDS: dict[str, Callable[[Path], Store]] = {
    "memory": lambda folder: MemoryStore(INSTANCE),
    "sqlite": lambda folder: SqliteStore(folder / "state.db", INSTANCE),
    "process": lambda folder: ProcessStore(folder / "state.db", INSTANCE),
    "postgres": lambda folder: PgStore(pg.shared().database(), instance=INSTANCE),
}


@pytest.fixture(params=list(BACKENDS))
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """An open, empty store of each backend."""
    store = BACKENDS[request.param](tmp_path)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


class TestLifecycle(LifecycleContract):
    pass


class TestSnapshots(SnapshotsContract):
    pass


class TestEventLog(EventLogContract):
    pass


class TestLedger(LedgerContract):
    pass


class TestDeliveries(DeliveriesContract):
    pass


class TestEndpoints(EndpointsContract):
    pass


class TestOperatorLog(OperatorLogContract):
    pass


class TestChains(ChainsContract):
    pass


class TestConsoleSessions(ConsoleSessionsContract):
    pass


class TestLeases(LeasesContract):
    pass


class TestFencing(FencingContract):
    pass


class TestRecovery(RecoveryContract):
    pass


class TestDueWakeUp(DueWakeUpContract):
    pass


class TestGroups(GroupsContract):
    pass


class TestHolds(HoldsContract):
    pass
