"""The store contract (``store_contract*.py``) run against every backend
(``tests/backends.py``)."""

from __future__ import annotations

from store_contract import EventLogContract, LifecycleContract, SnapshotsContract
from store_contract_chains import ChainsContract
from store_contract_groups import GroupsContract
from store_contract_holds import HoldsContract
from store_contract_leases import (
    DueWakeUpContract,
    FencingContract,
    LeasesContract,
    RecoveryContract,
)
from store_contract_ledger import DeliveriesContract, EndpointsContract, LedgerContract
from store_contract_operators import OperatorLogContract
from store_contract_sessions import ConsoleSessionsContract


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
