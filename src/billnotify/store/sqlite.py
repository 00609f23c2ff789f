"""The default state store: one SQLite file in WAL mode, on a thread of its own.

The connection lives on one thread; every store call is a single trip to it. A write is
one ``BEGIN IMMEDIATE ... COMMIT`` transaction run whole in that trip, so "snapshot
update + event append + cursor advance" either all happen or none do, whatever kills the
process, and a read (a trip of its own) never sees the inside of a transaction. One trip
per transaction, not one per statement, keeps a busy event loop from stretching a
transaction (and everything queued behind it) by a loop iteration per statement; that
is why the store runs its own thread rather than aiosqlite's statement-per-trip one.

- ``sqlite_thread.py``: the thread and its group commit;
- ``sqlite_base.py``: the connection, transactions, reads;
- ``sqlite_log.py``: snapshots, cursors, the event log, positions (:class:`Snapshots`,
  :class:`EventLog`);
- ``sqlite_ledger.py``: deliveries recorded, due, attempted (:class:`Ledger`);
- ``sqlite_deliveries.py``: deliveries read and settled, endpoints (:class:`Deliveries`,
  :class:`Endpoints`);
- ``sqlite_operators.py``: what operators did by hand (:class:`OperatorLog`);
- ``sqlite_sessions.py``: the console's sessions (:class:`ConsoleSessions`);
- ``sqlite_chains.py``: answers kept, chained deliveries moved on (:class:`Chains`);
- ``sqlite_groups.py``: grouped rules' members and flushes (:class:`Groups`);
- ``sqlite_holds.py``: deliveries deferred, rate limits' turns (:class:`Holds`);
- ``sqlite_leases.py``: instances' heartbeats and leases (:class:`Leases`).
"""

from __future__ import annotations

from billnotify.store.sqlite_chains import ChainTables
from billnotify.store.sqlite_deliveries import DeliveryTables
from billnotify.store.sqlite_groups import GroupTables
from billnotify.store.sqlite_holds import HoldTables
from billnotify.store.sqlite_leases import LeaseTables
from billnotify.store.sqlite_ledger import LedgerTables
from billnotify.store.sqlite_log import LogTables
from billnotify.store.sqlite_operators import OperatorTables
from billnotify.store.sqlite_sessions import SessionTables


class SqliteStore(
    LedgerTables,
    DeliveryTables,
    OperatorTables,
    SessionTables,
    ChainTables,
    GroupTables,
    HoldTables,
    LeaseTables,
    LogTables,
):
    """:class:`~billnotify.store.base.Store` on a SQLite file.

    Args:
        path: the database file (created with its folder if missing), or ``":memory:"``.
        instance: this process's name, recorded on the deliveries it starts (default
            ``hostname-pid``).
    """

    async def __aenter__(self) -> SqliteStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
