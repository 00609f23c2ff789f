"""The PostgreSQL store: the whole durable state in one database, for one or more
processes.

- ``postgres_schema.py``: versioned migrations, applied under an advisory lock;
- ``postgres_base.py``: the pool, errors, ``LISTEN``/``NOTIFY`` of appends;
- ``postgres_log.py``: snapshots, cursors, the event log, positions;
- ``postgres_ledger.py``: deliveries, attempts, endpoints.

It keeps the SQLite store's semantics call for call; what several processes need
beyond that (leases with fencing, recovery of a dead instance's ``sending`` rows)
comes next.
"""

from __future__ import annotations

from billnotify.store.postgres_ledger import LedgerTables
from billnotify.store.postgres_log import LogTables


class PgStore(LedgerTables, LogTables):
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
