"""The PostgreSQL store's connections: a pool, the schema, and one listening connection.

Every write is one transaction on a connection of the pool (asyncpg), committed before
the call returns. Appends to the event log send ``NOTIFY billnotify_appended`` in their
transaction, and changes that make deliveries due ``NOTIFY billnotify_due``, so a
notification goes out only if its transaction commits; one connection per store listens
on both channels and wakes :attr:`PgBase.appended` / :attr:`PgBase.due_changed` when
another process (or another store on the same database) wrote. The listener reconnects
after an outage and wakes the waiters then too, since notifications sent meanwhile are
lost. A write fenced by a lease (``fence=``) reads the lease row ``FOR SHARE`` in its
transaction: the lease cannot change hands until the write has committed.

Every asyncpg or socket error is wrapped into :class:`~billnotify.errors.StoreError`
where it enters, naming ``host:port/database`` only: the URL's password (if any) and an
explicit password never appear in an error or a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg

from billnotify.errors import StoreError
from billnotify.store.postgres_schema import migrate
from billnotify.store.records import Lease, default_instance, fenced

logger = logging.getLogger(__name__)

CHANNEL = "billnotify_appended"
"""The ``LISTEN``/``NOTIFY`` channel of appends; the payload is the appending store's token."""
DUE_CHANNEL = "billnotify_due"
"""The channel of changes that make deliveries due; the payload is the writing store's token."""

_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, asyncio.TimeoutError)
"""What asyncpg raises when the server, the network or a statement fails."""

_RELISTEN = 1.0
"""Seconds between attempts to bring the listening connection back."""


def where(url: str) -> str:
    """``host:port/database`` of a ``postgresql://`` URL: what errors may name.

    Raises:
        StoreError: ``url`` is not a ``postgresql://`` (or ``postgres://``) URL.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise StoreError("the state URL must start with postgresql://")
    try:
        host, port = parts.hostname or "localhost", parts.port or 5432
    except ValueError as exc:
        raise StoreError(f"the state URL has an invalid port: {exc}") from None
    return f"{host}:{port}/{unquote(parts.path.lstrip('/')) or parts.username or ''}"


def now() -> datetime:
    """The database rows' wall-clock time (aware, UTC)."""
    return datetime.now(UTC)


def affected(status: str) -> int:
    """The row count of a command tag (``INSERT 0 3``, ``UPDATE 2``)."""
    return int(status.rsplit(" ", 1)[-1])


class PgBase:
    """The pool, the schema and the listener; the tables live in subclasses.

    Args:
        url: ``postgresql://USER@HOST:PORT/DB`` (libpq form).
        password: the password, if not from ``PGPASSWORD`` / ``~/.pgpass`` (which asyncpg
            reads itself).
        instance: this process's name, recorded on the deliveries it starts.
        timeout: seconds to connect, and at most per statement.
    """

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        instance: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.where = where(url)
        self.instance = instance or default_instance()
        self.appended = asyncio.Condition()
        self.due_changed = asyncio.Condition()
        self._url = url
        self._password = password
        self._timeout = timeout
        self._token = uuid.uuid4().hex
        self._pool: Any = None
        self._order = asyncio.Lock()
        self._listener: asyncio.Task[None] | None = None
        self._wakes: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------
    async def open(self) -> None:
        """Connect, bring the schema up to date and start listening for appends.

        Raises:
            StoreError: the server cannot be reached, refuses the login, or holds a
                schema newer than this code.
        """
        with self._wrapped("cannot open"):
            self._pool = await asyncpg.create_pool(
                self._url,
                password=self._password,
                min_size=1,
                max_size=1,  # calls run one at a time (see _connection)
                timeout=self._timeout,
                command_timeout=self._timeout,
            )
        try:
            async with self._connection("cannot open") as conn:
                found, version = await migrate(conn)
        except ValueError as exc:
            await self.close()
            raise StoreError(f"cannot open state store {self.where}: {exc}") from None
        except BaseException:
            await self.close()
            raise
        if found != version:
            logger.info("state store %s: schema %d -> %d", self.where, found, version)
        ready = asyncio.Event()
        self._listener = asyncio.create_task(self._listen(ready), name="billnotify-pg-listen")
        await ready.wait()

    async def close(self) -> None:
        """Stop listening and close the pool's connections."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        pool, self._pool = self._pool, None
        if pool is not None:
            with contextlib.suppress(*_ERRORS):
                await asyncio.wait_for(pool.close(), self._timeout)

    async def ping(self) -> None:
        """Write to the store to prove it is writable.

        Raises:
            StoreError: the server cannot be reached or refuses the write.
        """
        async with self._transaction() as conn:
            await conn.execute(
                "INSERT INTO meta (key, value) VALUES ('ping', $1) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                now().isoformat(),
            )

    # -- connections -----------------------------------------------------------------
    @contextlib.contextmanager
    def _wrapped(self, doing: str) -> Iterator[None]:
        """Turn asyncpg's and the socket's errors into ``StoreError`` naming the server."""
        try:
            yield
        except _ERRORS as exc:
            message = str(exc) or type(exc).__name__
            if self._password:
                message = message.replace(self._password, "***")
            raise StoreError(f"state store {self.where}: {doing}: {message}") from None

    @contextlib.asynccontextmanager
    async def _connection(self, doing: str = "read failed") -> AsyncIterator[Any]:
        """A connection of the pool, errors wrapped; one call at a time, in the order
        of the calls (the store contract: a read made after a write sees it, as with
        SQLite's one thread). Several processes still run side by side."""
        async with self._order:
            if self._pool is None:
                raise StoreError(f"the state store {self.where} is not open")
            with self._wrapped(doing):
                async with self._pool.acquire() as conn:
                    yield conn

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Any]:
        """A connection in a transaction: committed when the block ends, rolled back if
        it raises; errors wrapped."""
        async with self._connection("write failed") as conn, conn.transaction():
            yield conn

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        """The rows of one read."""
        async with self._connection() as conn:
            rows: list[Any] = await conn.fetch(sql, *args)
            return rows

    async def _fetchval(self, sql: str, *args: Any) -> Any:
        """The first column of the first row of one read."""
        async with self._connection() as conn:
            return await conn.fetchval(sql, *args)

    # -- writes from elsewhere --------------------------------------------------------
    async def _notify_local(self) -> None:
        """Wake this process's readers of the log."""
        await self._wake_local(self.appended)

    @staticmethod
    async def _wake_local(waiting: asyncio.Condition) -> None:
        async with waiting:
            waiting.notify_all()

    async def _notify(self, conn: Any, channel: str = CHANNEL) -> None:
        """In a writing transaction: tell the other stores, once it commits."""
        await conn.execute("SELECT pg_notify($1, $2)", channel, self._token)

    def _heard(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        if payload != self._token:
            self._wake(self.due_changed if channel == DUE_CHANNEL else self.appended)

    def _wake(self, *waiting: asyncio.Condition) -> None:
        for condition in waiting:
            task = asyncio.create_task(self._wake_local(condition))
            self._wakes.add(task)
            task.add_done_callback(self._wakes.discard)

    @staticmethod
    async def _check_fence(conn: Any, fence: Lease | None) -> None:
        """In a write: raise ``FencedError`` unless ``fence`` (if any) still names its
        lease's holder and epoch; the row stays locked (``FOR SHARE``) until commit, so
        the lease cannot change hands before the write is in."""
        if fence is not None and not await conn.fetchval(
            "SELECT TRUE FROM leases WHERE name = $1 AND holder = $2 AND epoch = $3 FOR SHARE",
            fence.name,
            fence.holder,
            fence.epoch,
        ):
            raise fenced(fence)

    async def _listen(self, ready: asyncio.Event) -> None:
        """Hold one listening connection; bring it back after an outage."""
        while True:
            try:
                conn = await asyncpg.connect(
                    self._url, password=self._password, timeout=self._timeout
                )
            except _ERRORS as exc:
                logger.warning("state store %s: cannot listen: %s", self.where, exc)
            else:
                try:
                    await self._hold(conn, ready)
                except _ERRORS as exc:
                    logger.warning("state store %s: listening failed: %s", self.where, exc)
                finally:
                    with contextlib.suppress(*_ERRORS):
                        await asyncio.wait_for(conn.close(), self._timeout)
            ready.set()
            await asyncio.sleep(_RELISTEN)

    async def _hold(self, conn: Any, ready: asyncio.Event) -> None:
        """Listen on ``conn`` until the server or the network drops it."""
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        await conn.add_listener(CHANNEL, self._heard)
        await conn.add_listener(DUE_CHANNEL, self._heard)
        if ready.is_set():
            # writes made while nobody listened went unheard
            self._wake(self.appended, self.due_changed)
        ready.set()
        await lost.wait()
        logger.warning("state store %s: listening connection lost", self.where)

    @staticmethod
    async def _set_position(conn: Any, consumer: str, seq: int) -> None:
        await conn.execute(
            "INSERT INTO positions (consumer, seq) VALUES ($1, $2) "
            "ON CONFLICT (consumer) DO UPDATE SET seq = excluded.seq",
            consumer,
            seq,
        )
