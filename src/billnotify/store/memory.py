"""Every store protocol in memory: for tests, demos, and as the contract's reference.

:class:`MemoryStore` keeps the semantics of the SQLite store (``tests/store_contract.py``
holds every backend to them): unique event ids and increasing positions, snapshot
versions and dirty marks, the ledger's statuses and attempts, what is due and in which
order. Records are kept as JSON, as a database keeps them, so changing a value read
from the store never changes the store. Nothing is durable: the data lives as long as
the object (and outlives :meth:`~MemoryStore.close`, as a file would).

- ``memory_log.py``: snapshots, cursors, the event log, positions;
- ``memory_ledger.py``: deliveries, attempts, endpoints;
- ``memory_operators.py``: what operators did by hand;
- ``memory_sessions.py``: the console's sessions;
- ``memory_groups.py``: grouped rules' members and flushes;
- ``memory_holds.py``: deliveries deferred, rate limits' turns;
- ``memory_leases.py``: instances' heartbeats and leases.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from billnotify.store.base import Store
from billnotify.store.memory_chains import ChainTables
from billnotify.store.memory_groups import GroupTables
from billnotify.store.memory_holds import HoldTables
from billnotify.store.memory_leases import LeaseTables
from billnotify.store.memory_log import LogTables
from billnotify.store.memory_operators import OperatorTables
from billnotify.store.memory_sessions import SessionTables


class MemoryStore(
    ChainTables,
    GroupTables,
    HoldTables,
    OperatorTables,
    SessionTables,
    LeaseTables,
    LogTables,
):
    """:class:`~billnotify.store.base.Store` in memory (see the module docstring).

    Args:
        instance: this process's name, recorded on the deliveries it starts (default
            ``hostname-pid``).
    """

    async def __aenter__(self) -> MemoryStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


if TYPE_CHECKING:
    _: Store = MemoryStore()
