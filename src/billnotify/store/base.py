"""The store's protocols: a few narrow seams, one per stage that needs durable state.

Everything durable lives behind them: the last-seen snapshot of every record, poll
cursors, the append-only event log, each consumer's position in it, the delivery ledger,
disabled endpoints, the console's sessions, and the leases of the processes sharing
the store. :class:`Store` combines them for the composition root. Backends:
``store/memory.py`` (in memory, for tests), ``store/sqlite.py`` (the default),
``store/process.py`` (SQLite in a child process, as the service runs it) and
``store/postgres.py`` (one database, any number of processes); the values they trade
in are in ``store/records.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from billnotify.deliveries.base import DeliveryStatus, Outcome
from billnotify.store.group_records import DueGroup, GroupFlush, GroupMember
from billnotify.store.records import (
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
)

if TYPE_CHECKING:
    from billnotify.events import CloudEvent


class Lifecycle(Protocol):
    """Opening, closing and probing a store."""

    async def open(self) -> None:
        """Create or migrate the schema."""

    async def close(self) -> None:
        """Release the database."""

    async def ping(self) -> None:
        """Prove the store is writable; raise ``StoreError`` if not."""


class Snapshots(Protocol):
    """What detection needs: the last-seen record of each object and each poll cursor.

    :meth:`commit` is the one write of a poll: snapshots, events and cursor together.
    """

    async def get_snapshots(
        self, source: str, entity: str, ids: Sequence[str]
    ) -> dict[str, Snapshot]:
        """The stored snapshots of ``ids`` (missing ones are absent)."""

    async def due_snapshots(
        self, source: str, entity: str, now: datetime, limit: int = 500
    ) -> list[Snapshot]:
        """Snapshots whose ``due_at`` has come (time-based checks)."""

    async def count_snapshots(self, source: str, entity: str | None = None) -> int:
        """How many records are tracked."""

    async def iter_snapshots(
        self, source: str, entity: str, after_id: str = "", limit: int = 500
    ) -> list[Snapshot]:
        """A page of snapshots ordered by id (for re-publishing retained state)."""

    async def dirty_snapshots(self, limit: int = 500) -> list[Snapshot]:
        """Snapshots written since their retained MQTT state was last published.

        Every snapshot write marks the row dirty (baseline records included), so the
        publisher can keep ``{prefix}/state/...`` current across broker outages.
        """

    async def clear_dirty(self, snapshots: Sequence[Snapshot]) -> None:
        """Unmark snapshots whose state was published (only if not rewritten since)."""

    async def get_cursor(self, source: str, resource: str) -> str | None:
        """The poll cursor of a source's resource, None before the first sync."""

    async def commit(
        self,
        source: str,
        writes: Sequence[SnapshotWrite],
        events: Sequence[CloudEvent],
        cursor: tuple[str, str] | None = None,
        fence: Lease | None = None,
    ) -> list[StoredEvent]:
        """Write snapshots, append events and advance a cursor in ONE transaction.

        Events whose id is already in the log are skipped (the log never holds a
        duplicate); the appended ones are returned with their ``seq``.

        Raises:
            FencedError: ``fence`` is given and its lease is no longer held by
                ``fence.holder`` at ``fence.epoch`` (checked in the same transaction);
                nothing was written.
        """


class EventLog(Protocol):
    """The append-only event log and each consumer's position in it."""

    appended: asyncio.Condition
    """Notified after events are appended (publisher and rule handlers wait on it)."""

    async def read_events(self, after_seq: int, limit: int = 500) -> list[StoredEvent]:
        """Events with ``seq > after_seq``, in order: at most ``limit``, and maybe fewer
        while more follow (a store may answer from the entries it holds at hand); only an
        empty answer says there are none. Readers go on from the last seq they got."""

    async def read_log(self, after_seq: int, limit: int = 500) -> list[LogEntry]:
        """:meth:`read_events` as logged: envelope and JSON, for a reader that parses
        an event only when (and just while) it needs it."""

    async def list_events(
        self,
        *,
        since: datetime | None = None,
        type_glob: str | None = None,
        limit: int = 1000,
    ) -> list[StoredEvent]:
        """Events for ``billnotify events`` (oldest first)."""

    async def get_events(self, ids: Sequence[str]) -> list[StoredEvent]:
        """Events by id, in log order."""

    async def last_seq(self) -> int:
        """The newest event's seq (0 for an empty log)."""

    async def get_position(self, consumer: str) -> int:
        """How far a consumer (``mqtt``, ``rules``) has processed the log."""

    async def set_position(self, consumer: str, seq: int, fence: Lease | None = None) -> None:
        """Advance a consumer's position.

        Raises:
            FencedError: as :meth:`Snapshots.commit`; the position did not move.
        """


class Ledger(Protocol):
    """The delivery ledger as the rule handler and the worker drive it: record, read
    what is due, open and close attempts."""

    due_changed: asyncio.Condition
    """Notified when work may have become due: deliveries recorded, a delivery made
    ``pending`` / ``retry_scheduled`` (a retry, an operator, a recovery). Idle delivery
    workers wait on it instead of polling the table. On PostgreSQL it is notified for
    the changes of every process on the database (``LISTEN billnotify_due``), and
    also when the listening connection comes back (changes meanwhile went unheard);
    on SQLite and in memory for this store's own changes."""

    async def record_deliveries(
        self,
        deliveries: Sequence[NewDelivery],
        consumer: str,
        position: int,
        now: datetime,
        rendered: Mapping[str, str] | None = None,
    ) -> int:
        """Insert deliveries (ignoring ones already recorded) and move ``consumer`` to
        ``position``, in one transaction. Returns how many were new.

        ``rendered`` maps delivery ids to the JSON of what would be sent (dry runs).
        """

    async def get_rendered(self, delivery_id: str) -> str | None:
        """What a dry-run delivery would have sent (JSON), if recorded."""

    async def due_deliveries(
        self, now: datetime, limit: int = 100, exclude: Collection[str] = ()
    ) -> list[Delivery]:
        """Pending / retry_scheduled deliveries whose time has come, oldest first,
        leaving out the ids in ``exclude`` (ones the caller already holds)."""

    async def read_due(
        self, now: datetime, limit: int = 100, exclude: Collection[str] = ()
    ) -> DueBatch:
        """:meth:`due_deliveries` with the JSON of their events, and
        :meth:`disabled_endpoints`, read together (one trip to the database)."""

    async def next_due_at(self) -> datetime | None:
        """When the next pending or scheduled delivery is due."""

    async def start_attempt(self, delivery_id: str, now: datetime) -> int:
        """Mark a delivery ``sending`` and open an attempt; returns its number.

        Committed before the request goes out: a crash after this leaves the
        delivery ``sending``, which :meth:`recover_in_flight` resolves.
        """

    async def start_attempts(self, delivery_ids: Sequence[str], now: datetime) -> dict[str, int]:
        """:meth:`start_attempt` for several deliveries in ONE transaction.

        Only deliveries still due (``pending`` or ``retry_scheduled``, with
        ``next_attempt_at <= now``) are started: one settled, started or rescheduled
        meanwhile is left alone. The transaction commits before any of their requests
        goes out.

        Returns:
            delivery id -> attempt number, for the deliveries started.
        """

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
        """Record how an attempt ended and the delivery's new status."""

    async def finish_attempts(self, ends: Sequence[AttemptEnd]) -> None:
        """:meth:`finish_attempt` for several attempts in ONE transaction."""

    async def recover_in_flight(
        self,
        now: datetime,
        *,
        instance: str | None = None,
        live: Collection[str] | None = None,
    ) -> tuple[int, int]:
        """``sending`` rows left by a process that died: they become ``uncertain``
        (exactly-once) or due again (at-least-once), and their open attempts end
        ``uncertain``. Returns (uncertain, rescheduled).

        Without ``instance`` and ``live`` (one process on the store, at start-up) every
        ``sending`` row is recovered. With them, only the rows started by ``instance``
        (this process's previous life under the same name) or by an instance not in
        ``live`` (a dead one; rows of no recorded instance count as dead): a running
        instance sweeps with ``live`` alone, never recovering its own rows in flight.
        Each row is recovered once, even by several processes sweeping at once.
        """


class Deliveries(Protocol):
    """The ledger as operators, metrics and reconciliation read and settle it."""

    async def list_deliveries(
        self, statuses: Sequence[DeliveryStatus] | None = None, limit: int = 1000
    ) -> list[Delivery]:
        """Ledger rows, newest first, optionally filtered by status."""

    async def get_delivery(self, delivery_id: str) -> Delivery | None:
        """One delivery with its attempt history."""

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
        """Settle or reschedule without an attempt (operator retry/resolve, reconciler,
        a rule that cannot run). ``error`` replaces ``last_error`` when given.
        Returns False if the id is unknown."""

    async def count_deliveries(self) -> dict[tuple[str, str], int]:
        """(action_type, status) -> count, for metrics."""

    async def oldest_pending_at(self) -> datetime | None:
        """Creation time of the oldest pending / scheduled / sending delivery."""

    async def get_deliveries(self, ids: Sequence[str]) -> list[Delivery]:
        """Deliveries by id, without their attempt history (unknown ids are absent)."""

    async def settled_since(
        self, statuses: Sequence[DeliveryStatus], since: datetime, limit: int = 10_000
    ) -> list[Delivery]:
        """Deliveries in ``statuses`` whose row changed at or after ``since``, oldest first
        (the start-up sweep of notices a crash may have lost)."""


class Endpoints(Protocol):
    """Webhook endpoints disabled by a ``410 Gone``."""

    async def disable_endpoint(self, name: str, reason: str, now: datetime) -> None:
        """Mark a webhook endpoint disabled (it answered 410 Gone)."""

    async def disabled_endpoints(self) -> dict[str, str]:
        """Disabled endpoint name -> reason."""

    async def enable_endpoint(self, name: str) -> None:
        """Re-enable an endpoint."""


class OperatorLog(Protocol):
    """What operators did by hand (retry, resolve, re-enable, replay), for the record."""

    async def record_operator_action(self, action: OperatorAction) -> None:
        """Keep one operator action (never changed or dropped afterwards)."""

    async def operator_actions(
        self, subject: str | None = None, limit: int = 100
    ) -> list[OperatorAction]:
        """Operator actions, newest first; only those done to ``subject`` when given."""


class ConsoleSessions(Protocol):
    """The console's logins (SPEC §7.4), kept where every process on the store sees them:
    a restart logs nobody out, and any instance behind a load balancer accepts a session
    another one opened. Found by the hash of the cookie, never by the cookie itself;
    when a session has timed out is the console's to say (``console/auth.py``)."""

    async def add_console_session(self, session: ConsoleSession) -> None:
        """Keep a new session (a key already kept is replaced)."""

    async def get_console_session(self, key: str) -> ConsoleSession | None:
        """The session kept under ``key``, None when there is none."""

    async def touch_console_session(
        self, key: str, now: datetime, flash: str | None = None
    ) -> bool:
        """Mark a session seen at ``now`` (and replace its flash when given); False when
        there is no such session (logged out meanwhile, by any process)."""

    async def drop_console_session(self, key: str) -> bool:
        """End a session (logout, time out, token changed); False when it was gone."""

    async def prune_console_sessions(self, now: datetime, seen_before: datetime, keep: int) -> int:
        """Drop the sessions that have ended (``expires_at <= now``), those not seen
        since ``seen_before``, and all but the ``keep`` seen last. Returns how many went."""


class Chains(Protocol):
    """Chained actions (SPEC §7.5): the answers kept with deliveries, and the deliveries
    that wait for a predecessor (``waiting``) or were skipped because of one."""

    async def keep_result(self, delivery_id: str, result: str, now: datetime) -> None:
        """Keep what an attempt of the delivery was answered (JSON), replacing an older
        answer; committed before the attempt's success is."""

    async def get_results(self, ids: Sequence[str]) -> dict[str, str]:
        """Delivery id -> the answer kept (JSON); ids without one are absent."""

    async def chained_deliveries(
        self, limit: int = 500, after: tuple[datetime, str] | None = None
    ) -> list[Delivery]:
        """Deliveries ``waiting`` or ``skipped`` by (``created_at``, ``id``), oldest first,
        without attempt history; ``after``: only those past that (created_at, id), for
        paging."""

    async def move_chained(self, moves: Sequence[ChainMove], now: datetime) -> list[str]:
        """Apply each move whose delivery is still in one of its ``expect`` statuses, in
        ONE transaction (a delivery made ``pending`` is due at ``now``, and its note is
        the move's). Returns the ids moved."""


class Digests(Protocol):
    """The digests grouped rules' deliveries carry (what the delivery worker reads)."""

    async def get_digest(self, flush_id: str) -> str | None:
        """The digest (JSON) a flush's deliveries carry, None for an unknown flush."""


class Groups(Digests, Protocol):
    """Grouped rules (SPEC §7.2): the events collected per group, and each group's flushes.

    Collecting is idempotent per (rule, event), so a batch read again after a crash adds
    nothing; a flush writes its digest, marks its members, records its deliveries and
    moves the group's next flush in ONE transaction, so a crash neither loses nor
    repeats one.
    """

    async def add_group_members(self, members: Sequence[GroupMember], now: datetime) -> int:
        """Collect members (each (rule, event) once); a member of a group that is not
        open opens it, due at the member's ``flush_at``. Returns how many were new."""

    async def due_groups(
        self, now: datetime, limit: int = 100, members_limit: int = 1000
    ) -> list[DueGroup]:
        """Groups whose flush time has come (soonest first), each with at most
        ``members_limit`` of its members not flushed yet, oldest first."""

    async def next_group_flush_at(self) -> datetime | None:
        """When the next group is due to flush (None: no group is open)."""

    async def count_groups(self) -> tuple[int, int]:
        """(open groups, members waiting for their group's next flush): two counts, for
        ``/metrics``, without reading the members."""

    async def flush_group(self, flush: GroupFlush, now: datetime) -> int:
        """Write a flush in one transaction (see :class:`GroupFlush`), or, when its
        ``id`` is None, close the group unless members arrived meanwhile. Returns how
        many of its deliveries were new."""


class Holds(Protocol):
    """Deliveries held back without an attempt (SPEC §7.2): a mute window defers them,
    a rate limit gives each its turn, the same turns for every process on the store."""

    async def defer_delivery(
        self, delivery_id: str, until: datetime, now: datetime, note: str
    ) -> bool:
        """Make a delivery that is due (``pending`` / ``retry_scheduled``, its time come)
        due at ``until`` instead, its note saying why; no attempt is opened or counted.
        Returns False, changing nothing, when it is not due any more (started, settled or
        deferred meanwhile)."""

    async def take_turn(
        self, key: str, holder: str, now: datetime, limit: int, period: timedelta
    ) -> datetime | None:
        """Take ``holder``'s turn under rate limit ``key`` (``limit`` per ``period``),
        atomically for every process on the store: None when it may go now (the turn is
        taken at ``now``), else when its turn comes (kept for ``holder``: asked again
        then, it goes). :func:`billnotify.deliveries.turns.plan_turn` places turns."""


class Leases(Protocol):
    """Which live process holds which role, for several processes on one store.

    A single-process store (SQLite, memory) implements it too, with the same rules, so
    the stages run one code path whatever the backend.
    """

    async def heartbeat(
        self, instance: str, now: datetime, info: Mapping[str, str] | None = None
    ) -> None:
        """Record that ``instance`` is alive at ``now`` (with what it says of itself)."""

    async def instances(self, now: datetime, ttl: timedelta) -> list[Instance]:
        """The instances whose last heartbeat is younger than ``ttl``, by name."""

    async def acquire(
        self, name: str, instance: str, now: datetime, ttl: timedelta
    ) -> Lease | None:
        """Take lease ``name`` for ``instance``, or renew it if it already holds it.

        Taken when free, lapsed (``expires_at <= now``) or held by ``instance``; the
        epoch grows by one when it changes hands. Returns the lease held, or None when
        another instance holds it and it has not lapsed. Atomic: of several instances
        acquiring at once, one gets it.
        """

    async def release(self, name: str, instance: str) -> None:
        """Give up lease ``name`` if ``instance`` holds it (a clean shutdown): it lapses
        at once, its holder and epoch stay as they were."""

    async def leases(self) -> list[Lease]:
        """Every lease, lapsed or not, by name."""


class Store(
    Lifecycle,
    Snapshots,
    EventLog,
    Ledger,
    Deliveries,
    Endpoints,
    OperatorLog,
    ConsoleSessions,
    Chains,
    Groups,
    Holds,
    Leases,
    Protocol,
):
    """The whole durable state, as the composition root opens it.

    Every method is a coroutine; every write commits before returning. Each stage
    depends only on the narrow protocol it uses (:class:`Snapshots` for sources,
    :class:`EventLog` for the publisher, :class:`Ledger` for the rule handler and the
    worker, :class:`Deliveries`, :class:`Endpoints` and :class:`OperatorLog` for
    operators, :class:`ConsoleSessions` for the console, :class:`Leases` for the
    processes sharing the store).
    """
