"""The SQLite store in a process of its own, for the running service.

:class:`SqliteStore` keeps its connection on a thread, which still shares the
interpreter lock with the event loop: the store's work and its share of the lock slowed
the delivery path beside it by about a third (``docs/performance.md``).
:class:`ProcessStore` runs the very same :class:`SqliteStore` in a child interpreter
(``python -m billnotify.store.child PATH``) and calls it over the child's stdin and
stdout (``store/channel.py``). Each method is written out and names the
:class:`SqliteStore` method it runs, so mypy checks its arguments and result. A commit
makes its rows here and the events it returns are the caller's own; events read are
parsed here from their JSON: what crosses is strings and numbers, cheap to pickle.

The pipe is hand-written (about 130 lines) rather than a library: it pipelines calls
in order over one pipe, with no socket or port, and the child ends with its stdin when
the service dies however it dies; ``multiprocessing`` connections block the loop and
its managers run one call at a time, and RPC libraries need a socket and a server.

What stays the same: every call is one store call, run in the order the calls were made
(the child starts them in arrival order, and its store runs them in that order, on the
child's loop: ``SqliteStore(on_loop=True)``, no thread there),
and a write has committed before its caller resumes. What the child adds:

- it ignores SIGINT and SIGTERM (a signal to the whole process group is the parent's to
  handle, which may still record outcomes while it drains), and ends when its stdin
  closes: after the parent closes the store, or dies;
- a child that ends early fails every call in flight and every later one with a
  :class:`~billnotify.errors.StoreError`.

What it keeps here: the log entries its own commits appended (``store/log_tail.py``).
The publisher and the rule handler read each event right after it was committed;
:meth:`ProcessStore.read_log` answers them from that tail, without a trip to the child
(so even once the child has ended), whenever the tail holds the entry after the
position asked for. It stops at the tail's end, where another process may have
appended more: a follower asks again from there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar

from billnotify.deliveries.base import DeliveryStatus, Outcome
from billnotify.errors import StoreError
from billnotify.store.channel import Channel
from billnotify.store.group_records import DueGroup, GroupFlush, GroupMember
from billnotify.store.log_tail import LogTail
from billnotify.store.records import (
    DUE_STATUSES,
    AttemptEnd,
    ChainMove,
    ConsoleSession,
    Delivery,
    DueBatch,
    Instance,
    Lease,
    LogEntry,
    NewDelivery,
    OperatorAction,
    Snapshot,
    SnapshotWrite,
    StoredEvent,
    default_instance,
)
from billnotify.store.sqlite import SqliteStore
from billnotify.store.sqlite_log import (
    EventRow,
    announce,
    commit_rows_of,
    parse_log,
    salted_body,
)

if TYPE_CHECKING:
    from billnotify.events import CloudEvent
    from billnotify.store.base import Store

P = ParamSpec("P")
T = TypeVar("T")


def _appended(
    logged: Sequence[EventRow], placed: Sequence[tuple[int, int, str]]
) -> Iterator[LogEntry]:
    """The log entries a commit of ``logged`` appended, as the store reads them back.

    An event placed under a salted id (a new occurrence) was logged with the body the
    child made of it (:func:`~billnotify.store.sqlite_log.salted_body`, here as there).
    """
    for n, seq, id_ in placed:
        logged_id, _entity, _object, type_, source_name, subject, _time, body = logged[n]
        if id_ != logged_id:
            body = salted_body(body, id_)
        yield LogEntry(seq, id_, type_, source_name, subject, body)


class ProcessStore:
    """:class:`~billnotify.store.base.Store` on a SQLite file, served by a child process
    (see the module docstring).

    Args:
        path: the database file (created with its folder if missing).
        instance: this process's name, recorded on the deliveries it starts (default
            ``hostname-pid``).
    """

    def __init__(self, path: str | Path, instance: str | None = None) -> None:
        self.path = path
        self.instance = instance or default_instance()
        self.appended = asyncio.Condition()
        self.due_changed = asyncio.Condition()
        self._channel = Channel(path, self.instance)
        self._tail = LogTail()

    async def __aenter__(self) -> ProcessStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(
        self,
        method: Callable[Concatenate[SqliteStore, P], Awaitable[T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run :class:`SqliteStore`'s ``method`` in the child, in the order of calls."""
        result: T = await self._channel.call(method.__name__, args, kwargs)
        return result

    async def _wake(self, waiting: asyncio.Condition, when: object = True) -> None:
        """Notify ``waiting`` (here, where its waiters are) if ``when`` is true."""
        if when:
            async with waiting:
                waiting.notify_all()

    # -- lifecycle -------------------------------------------------------------------
    async def open(self) -> None:
        """Start the child and wait until it has opened the file."""
        if str(self.path) == ":memory:":
            raise StoreError("a store in a process of its own needs a file, not ':memory:'")
        self._tail.clear()  # the file may have changed while the store was closed
        await self._channel.start()
        try:
            await self.ping()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Let the child finish what was asked of it, then end it."""
        self._tail.clear()
        await self._channel.stop()

    async def ping(self) -> None:
        """Prove the store is writable, with room to go on."""
        await self._call(SqliteStore.ping)

    # -- snapshots and cursors -------------------------------------------------------
    async def get_snapshots(
        self, source: str, entity: str, ids: Sequence[str]
    ) -> dict[str, Snapshot]:
        """The stored snapshots of ``ids`` (their rows cross the pipe, parsed here)."""
        rows = await self._call(SqliteStore.snapshot_rows, source, entity, list(ids))
        return {snap.id: snap for snap in map(SqliteStore._snapshot, rows)}

    async def due_snapshots(
        self, source: str, entity: str, now: datetime, limit: int = 500
    ) -> list[Snapshot]:
        """Snapshots whose time-based check is due."""
        return await self._call(SqliteStore.due_snapshots, source, entity, now, limit)

    async def count_snapshots(self, source: str, entity: str | None = None) -> int:
        """How many records of a source (and entity) are tracked."""
        return await self._call(SqliteStore.count_snapshots, source, entity)

    async def iter_snapshots(
        self, source: str, entity: str, after_id: str = "", limit: int = 500
    ) -> list[Snapshot]:
        """A page of snapshots ordered by id."""
        return await self._call(SqliteStore.iter_snapshots, source, entity, after_id, limit)

    async def dirty_snapshots(self, limit: int = 500) -> list[Snapshot]:
        """Snapshots whose retained state has not been published since they changed."""
        rows = await self._call(SqliteStore.dirty_snapshot_rows, limit)
        return [SqliteStore._snapshot(row) for row in rows]

    async def clear_dirty(self, snapshots: Sequence[Snapshot]) -> None:
        """Unmark published snapshots unless they were rewritten meanwhile (their keys
        cross the pipe, not their records)."""
        keys = [(s.source, s.entity, s.id, s.version) for s in snapshots]
        await self._call(SqliteStore.clear_dirty_keys, keys)

    async def get_cursor(self, source: str, resource: str) -> str | None:
        """A resource's poll cursor."""
        return await self._call(SqliteStore.get_cursor, source, resource)

    async def commit(
        self,
        source: str,
        writes: Sequence[SnapshotWrite],
        events: Sequence[CloudEvent],
        cursor: tuple[str, str] | None = None,
        fence: Lease | None = None,
    ) -> list[StoredEvent]:
        """Snapshots, events and cursor in one transaction (rows made here); what it
        appends joins the tail of the log kept here."""
        snapshots, logged = commit_rows_of(writes, events)
        try:
            placed = await self._call(
                SqliteStore.commit_rows, source, snapshots, logged, cursor, fence
            )
        except BaseException:
            self._tail.clear()  # committed or not, and under which seqs, is unknown here
            raise
        self._tail.extend(_appended(logged, placed))
        return await announce(self.appended, events, placed)

    # -- the event log ---------------------------------------------------------------
    async def read_events(self, after_seq: int, limit: int = 500) -> list[StoredEvent]:
        """Events after ``after_seq``, in order (parsed here)."""
        return parse_log((e.seq, e.json) for e in await self.read_log(after_seq, limit))

    async def read_log(self, after_seq: int, limit: int = 500) -> list[LogEntry]:
        """Events after ``after_seq`` as logged, in order: from the tail kept here when it
        holds the entry after ``after_seq`` (then perhaps fewer than the store holds)."""
        held = self._tail.read(after_seq, limit)
        if held is not None:
            return held
        return await self._call(SqliteStore.read_log, after_seq, limit)

    async def list_events(
        self,
        *,
        since: datetime | None = None,
        type_glob: str | None = None,
        limit: int = 1000,
    ) -> list[StoredEvent]:
        """Events recorded since ``since`` whose type matches ``type_glob``."""
        return await self._call(
            SqliteStore.list_events, since=since, type_glob=type_glob, limit=limit
        )

    async def get_events(self, ids: Sequence[str]) -> list[StoredEvent]:
        """Events by id, in log order."""
        return await self._call(SqliteStore.get_events, list(ids))

    async def last_seq(self) -> int:
        """The newest seq, 0 when empty."""
        return await self._call(SqliteStore.last_seq)

    async def get_position(self, consumer: str) -> int:
        """A consumer's position in the log."""
        return await self._call(SqliteStore.get_position, consumer)

    async def set_position(self, consumer: str, seq: int, fence: Lease | None = None) -> None:
        """Move a consumer's position (unless fenced off)."""
        await self._call(SqliteStore.set_position, consumer, seq, fence)

    # -- the ledger as the rule handler and the worker drive it ----------------------
    async def record_deliveries(
        self,
        deliveries: Sequence[NewDelivery],
        consumer: str,
        position: int,
        now: datetime,
        rendered: Mapping[str, str] | None = None,
    ) -> int:
        """Insert new deliveries and advance ``consumer`` in one transaction."""
        inserted = await self._call(
            SqliteStore.record_deliveries, deliveries, consumer, position, now, rendered
        )
        await self._wake(self.due_changed, inserted)
        return inserted

    async def get_rendered(self, delivery_id: str) -> str | None:
        """What a dry-run delivery would have sent (JSON), if recorded."""
        return await self._call(SqliteStore.get_rendered, delivery_id)

    async def due_deliveries(
        self, now: datetime, limit: int = 100, exclude: Collection[str] = ()
    ) -> list[Delivery]:
        """Deliveries whose next attempt is due, except those in ``exclude``."""
        return await self._call(SqliteStore.due_deliveries, now, limit, list(exclude))

    async def read_due(
        self, now: datetime, limit: int = 100, exclude: Collection[str] = ()
    ) -> DueBatch:
        """Due deliveries with their events' JSON, and the disabled endpoints."""
        return await self._call(SqliteStore.read_due, now, limit, exclude)

    async def next_due_at(self) -> datetime | None:
        """When the next delivery is due."""
        return await self._call(SqliteStore.next_due_at)

    async def start_attempt(self, delivery_id: str, now: datetime) -> int:
        """Mark ``sending`` and open attempt N (committed before the request)."""
        return await self._call(SqliteStore.start_attempt, delivery_id, now)

    async def start_attempts(self, delivery_ids: Sequence[str], now: datetime) -> dict[str, int]:
        """Start every still-due delivery of ``delivery_ids`` in one transaction."""
        return await self._call(SqliteStore.start_attempts, delivery_ids, now)

    async def finish_attempt(
        self,
        delivery_id: str,
        number: int,
        *,
        now: datetime,
        outcome: Outcome,
        status: DeliveryStatus,
        next_attempt_at: datetime | None = None,
        status_code: int | None = None,
        error: str | None = None,
    ) -> None:
        """Close an attempt and set the delivery's status."""
        end = AttemptEnd(
            delivery_id, number, now, outcome, status, next_attempt_at, status_code, error
        )
        await self.finish_attempts([end])

    async def finish_attempts(self, ends: Sequence[AttemptEnd]) -> None:
        """Close several attempts and set their deliveries' status in one transaction."""
        await self._call(SqliteStore.finish_attempts, ends)
        await self._wake(self.due_changed, any(e.status in DUE_STATUSES for e in ends))

    async def recover_in_flight(
        self,
        now: datetime,
        *,
        instance: str | None = None,
        live: Collection[str] | None = None,
    ) -> tuple[int, int]:
        """``sending`` rows of a process that died: exactly-once -> uncertain, others
        -> due (see the protocol for which)."""
        recovered = await self._call(
            SqliteStore.recover_in_flight,
            now,
            instance=instance,
            live=None if live is None else list(live),
        )
        await self._wake(self.due_changed, recovered[1])
        return recovered

    # -- the ledger as operators, metrics and reconciliation read it -----------------
    async def list_deliveries(
        self, statuses: Sequence[DeliveryStatus] | None = None, limit: int = 1000
    ) -> list[Delivery]:
        """Ledger rows, newest first."""
        return await self._call(SqliteStore.list_deliveries, statuses and list(statuses), limit)

    async def get_delivery(self, delivery_id: str) -> Delivery | None:
        """One delivery with its attempts."""
        return await self._call(SqliteStore.get_delivery, delivery_id)

    async def set_delivery_status(
        self,
        delivery_id: str,
        status: DeliveryStatus,
        *,
        now: datetime,
        next_attempt_at: datetime | None = None,
        note: str | None = None,
        error: str | None = None,
    ) -> bool:
        """Change a delivery's status without an attempt."""
        changed = await self._call(
            SqliteStore.set_delivery_status,
            delivery_id,
            status,
            now=now,
            next_attempt_at=next_attempt_at,
            note=note,
            error=error,
        )
        await self._wake(self.due_changed, changed and status in DUE_STATUSES)
        return changed

    async def count_deliveries(self) -> dict[tuple[str, str], int]:
        """(action_type, status) -> count."""
        return await self._call(SqliteStore.count_deliveries)

    async def oldest_pending_at(self) -> datetime | None:
        """Creation time of the oldest delivery not yet settled."""
        return await self._call(SqliteStore.oldest_pending_at)

    async def get_deliveries(self, ids: Sequence[str]) -> list[Delivery]:
        """Deliveries by id, without their attempt history (unknown ids are absent)."""
        return await self._call(SqliteStore.get_deliveries, list(ids))

    async def settled_since(
        self, statuses: Sequence[DeliveryStatus], since: datetime, limit: int = 10_000
    ) -> list[Delivery]:
        """Deliveries in ``statuses`` whose row changed at or after ``since``, oldest first."""
        return await self._call(SqliteStore.settled_since, list(statuses), since, limit)

    # -- endpoints -------------------------------------------------------------------
    async def disable_endpoint(self, name: str, reason: str, now: datetime) -> None:
        """Mark a webhook endpoint disabled."""
        await self._call(SqliteStore.disable_endpoint, name, reason, now)

    async def disabled_endpoints(self) -> dict[str, str]:
        """Disabled endpoints and why."""
        return await self._call(SqliteStore.disabled_endpoints)

    async def enable_endpoint(self, name: str) -> None:
        """Re-enable a disabled endpoint."""
        await self._call(SqliteStore.enable_endpoint, name)

    # -- operator actions ------------------------------------------------------------
    async def record_operator_action(self, action: OperatorAction) -> None:
        """Keep one operator action."""
        await self._call(SqliteStore.record_operator_action, action)

    async def operator_actions(
        self, subject: str | None = None, limit: int = 100
    ) -> list[OperatorAction]:
        """Operator actions, newest first (``subject``: only those done to it)."""
        return await self._call(SqliteStore.operator_actions, subject, limit)

    # -- console sessions ------------------------------------------------------------
    async def add_console_session(self, session: ConsoleSession) -> None:
        """Keep a new session (replacing one kept under the same key)."""
        await self._call(SqliteStore.add_console_session, session)

    async def get_console_session(self, key: str) -> ConsoleSession | None:
        """The session kept under ``key``."""
        return await self._call(SqliteStore.get_console_session, key)

    async def touch_console_session(
        self, key: str, now: datetime, flash: str | None = None
    ) -> bool:
        """Mark a session seen at ``now`` (and set its flash); False when it is gone."""
        return await self._call(SqliteStore.touch_console_session, key, now, flash)

    async def drop_console_session(self, key: str) -> bool:
        """End a session; False when it was gone."""
        return await self._call(SqliteStore.drop_console_session, key)

    async def prune_console_sessions(self, now: datetime, seen_before: datetime, keep: int) -> int:
        """Drop ended, idle and surplus sessions; returns how many went."""
        return await self._call(SqliteStore.prune_console_sessions, now, seen_before, keep)

    # -- chained actions -------------------------------------------------------------
    async def keep_result(self, delivery_id: str, result: str, now: datetime) -> None:
        """Keep a delivery's answer (JSON), replacing an older one."""
        await self._call(SqliteStore.keep_result, delivery_id, result, now)

    async def get_results(self, ids: Sequence[str]) -> dict[str, str]:
        """Delivery id -> the answer kept."""
        return await self._call(SqliteStore.get_results, list(ids))

    async def chained_deliveries(
        self, limit: int = 500, after: tuple[datetime, str] | None = None
    ) -> list[Delivery]:
        """Deliveries ``waiting`` or ``skipped``, oldest first (past ``after``)."""
        return await self._call(SqliteStore.chained_deliveries, limit, after)

    async def move_chained(self, moves: Sequence[ChainMove], now: datetime) -> list[str]:
        """Apply the moves whose delivery is still in an expected status."""
        moved = await self._call(SqliteStore.move_chained, list(moves), now)
        pending = {m.id for m in moves if m.status is DeliveryStatus.PENDING}
        await self._wake(self.due_changed, pending.intersection(moved))
        return moved

    # -- grouped rules ---------------------------------------------------------------
    async def add_group_members(self, members: Sequence[GroupMember], now: datetime) -> int:
        """Collect members (each (rule, event) once), opening the groups they start."""
        return await self._call(SqliteStore.add_group_members, list(members), now)

    async def due_groups(
        self, now: datetime, limit: int = 100, members_limit: int = 1000
    ) -> list[DueGroup]:
        """Groups whose flush time has come, with their unflushed members."""
        return await self._call(SqliteStore.due_groups, now, limit, members_limit)

    async def next_group_flush_at(self) -> datetime | None:
        """When the next group flushes."""
        return await self._call(SqliteStore.next_group_flush_at)

    async def flush_group(self, flush: GroupFlush, now: datetime) -> int:
        """Write one flush (or close the group); returns how many deliveries were new."""
        inserted = await self._call(SqliteStore.flush_group, flush, now)
        await self._wake(self.due_changed, inserted)
        return inserted

    async def get_digest(self, flush_id: str) -> str | None:
        """The digest (JSON) a flush's deliveries carry."""
        return await self._call(SqliteStore.get_digest, flush_id)

    async def count_groups(self) -> tuple[int, int]:
        """Open groups, and members not flushed yet."""
        return await self._call(SqliteStore.count_groups)

    # -- holds -----------------------------------------------------------------------
    async def defer_delivery(
        self, delivery_id: str, until: datetime, now: datetime, note: str
    ) -> bool:
        """Make a still-due delivery due at ``until``, without an attempt."""
        return await self._call(SqliteStore.defer_delivery, delivery_id, until, now, note)

    async def take_turn(
        self, key: str, holder: str, now: datetime, limit: int, period: timedelta
    ) -> datetime | None:
        """``holder``'s turn under rate limit ``key``: None to go now, else when."""
        return await self._call(SqliteStore.take_turn, key, holder, now, limit, period)

    # -- leases ----------------------------------------------------------------------
    async def heartbeat(
        self, instance: str, now: datetime, info: Mapping[str, str] | None = None
    ) -> None:
        """Record that ``instance`` is alive at ``now``."""
        await self._call(SqliteStore.heartbeat, instance, now, None if info is None else dict(info))

    async def instances(self, now: datetime, ttl: timedelta) -> list[Instance]:
        """The instances heard from within ``ttl``, by name."""
        return await self._call(SqliteStore.instances, now, ttl)

    async def acquire(
        self, name: str, instance: str, now: datetime, ttl: timedelta
    ) -> Lease | None:
        """Take or renew lease ``name``; None while another instance holds it."""
        return await self._call(SqliteStore.acquire, name, instance, now, ttl)

    async def release(self, name: str, instance: str) -> None:
        """Let lease ``name`` lapse now if ``instance`` holds it."""
        await self._call(SqliteStore.release, name, instance)

    async def leases(self) -> list[Lease]:
        """Every lease, by name."""
        return await self._call(SqliteStore.leases)


if TYPE_CHECKING:
    _: Store = ProcessStore(":memory:")
