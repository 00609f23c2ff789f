"""The PostgreSQL store: the whole durable state in one database, for one or more
processes.

- ``postgres_schema.py``: versioned migrations, applied under an advisory lock;
- ``postgres_base.py``: the pool, errors, ``LISTEN``/``NOTIFY`` of appends;
- ``postgres_log.py``: snapshots, cursors, the event log, positions;
- ``postgres_ledger.py``: deliveries recorded, due, attempted, recovered;
- ``postgres_deliveries.py``: deliveries read and settled, endpoints;
- ``postgres_operators.py``: what operators did by hand;
- ``postgres_sessions.py``: the console's sessions (every process accepts each one);
- ``postgres_groups.py``: grouped rules' members and flushes;
- ``postgres_holds.py``: deliveries deferred, rate limits' turns (under a lock);
- ``postgres_leases.py``: instances' heartbeats and leases.

It keeps the SQLite store's semantics call for call (the store contract); what several
processes add is safe here: claims that never overlap, fenced writes, each dead
instance's ``sending`` rows recovered once, wake-ups by ``LISTEN``/``NOTIFY``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from billnotify.store.postgres_chains import ChainTables
from billnotify.store.postgres_groups import GroupTables
from billnotify.store.postgres_holds import HoldTables
from billnotify.store.postgres_leases import LeaseTables
from billnotify.store.postgres_ledger import LedgerTables
from billnotify.store.postgres_log import LogTables
from billnotify.store.postgres_operators import OperatorTables
from billnotify.store.postgres_sessions import SessionTables

if TYPE_CHECKING:
    from billnotify.store.base import Store


class PgStore(
    LedgerTables,
    OperatorTables,
    SessionTables,
    ChainTables,
    GroupTables,
    HoldTables,
    LeaseTables,
    LogTables,
):
    """:class:`~billnotify.store.base.Store` on a PostgreSQL database (asyncpg).

    Args:
        url: ``postgresql://USER@HOST:PORT/DB``; the password comes from
            ``PGPASSWORD`` / ``~/.pgpass`` or ``password``.
        password: an explicit password (never logged, never in an error).
        instance: this process's name (default ``hostname-pid``).
        timeout: seconds to connect, and at most per statement.
    """

    async def __aenter__(self) -> PgStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


if TYPE_CHECKING:
    _: Store = PgStore("postgresql://localhost/billnotify")
