"""``billnotify state copy``: a SQLite state copied into a PostgreSQL database.

Moving to several instances must not cost a new baseline (every record seen again as
new) nor send anything twice, so everything that makes up the state moves as it is:
events (same ids, ``seq`` and JSON), snapshots (records, marks, versions: the next
event ids depend on them), cursors, consumer positions, deliveries with their attempts
and rendered messages, the answers kept for chained actions, disabled endpoints and
the operator actions on record. Leases and instances are not state: the
processes started on the copy take them. Nor are the console's sessions: operators log
in once more on the copy (a session is worth a login, not a risk of carrying one over).

The source is read in one read transaction (a consistent picture even if something
still writes to it; stop the service first all the same); the target is written in one
transaction, so a failed copy leaves it as it was. A target that already holds state is
refused unless ``force``, which replaces it: copying twice gives the same database.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from billnotify.errors import StoreError
from billnotify.store.postgres_base import where
from billnotify.store.postgres_schema import migrate
from billnotify.store.schema import SCHEMA_VERSION as SQLITE_SCHEMA_VERSION
from billnotify.store.state_file import check_existing, check_marker

_Convert = Callable[[Any], Any]


def _time(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


def _flag(value: int) -> bool:
    return bool(value)


@dataclass(frozen=True)
class _Table:
    """One table as both schemas hold it: its columns, and how a SQLite value becomes
    the PostgreSQL one (absent: as it is)."""

    name: str
    columns: tuple[str, ...]
    convert: dict[str, _Convert]
    order: str
    optional: bool = False
    """Absent from a state that no billnotify since the table came has opened."""

    def rows(self, db: sqlite3.Connection, batch: int = 2000) -> Iterator[tuple[Any, ...]]:
        """The source's rows, converted, read a batch at a time."""
        if (
            self.optional
            and not db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (self.name,)
            ).fetchone()
        ):
            return
        cursor = db.execute(
            f"SELECT {', '.join(self.columns)} FROM {self.name} ORDER BY {self.order}"
        )
        converters = [self.convert.get(column) for column in self.columns]
        while chunk := cursor.fetchmany(batch):
            for row in chunk:
                yield tuple(
                    value if convert is None else convert(value)
                    for value, convert in zip(row, converters, strict=True)
                )


TABLES = (
    _Table(
        "events",
        ("seq", "id", "type", "source", "subject", "time", "recorded_at", "body"),
        {"recorded_at": _time},
        "seq",
    ),
    _Table(
        "snapshots",
        ("source", "entity", "id", "record", "marks", "due_at", "version", "dirty", "updated_at"),
        {"due_at": _time, "dirty": _flag, "updated_at": _time},
        "source, entity, id",
    ),
    _Table("cursors", ("source", "resource", "value", "updated_at"), {"updated_at": _time}, "1, 2"),
    _Table("positions", ("consumer", "seq"), {}, "consumer"),
    _Table(
        "deliveries",
        (
            "id",
            "rule",
            "action_index",
            "action_type",
            "event_id",
            "event_seq",
            "exactly_once",
            "target",
            "status",
            "attempts",
            "next_attempt_at",
            "last_error",
            "last_status_code",
            "created_at",
            "updated_at",
            "rendered",
            "note",
        ),
        {
            "exactly_once": _flag,
            "next_attempt_at": _time,
            "created_at": _time,
            "updated_at": _time,
        },
        "id",
    ),
    _Table(
        "attempts",
        ("delivery_id", "number", "started_at", "finished_at", "outcome", "status_code", "error"),
        {"started_at": _time, "finished_at": _time},
        "delivery_id, number",
    ),
    _Table("endpoints", ("name", "disabled_at", "reason"), {"disabled_at": _time}, "name"),
    _Table(
        "operator_actions",
        ("at", "who", "action", "subject", "reason", "result"),
        {"at": _time},
        "id",
        optional=True,
    ),
    _Table(
        "delivery_results",
        ("delivery_id", "result", "recorded_at"),
        {"recorded_at": _time},
        "delivery_id",
        optional=True,
    ),
    _Table(
        "rule_groups",
        ("rule", "key", "opened_at", "flush_at", "flushes"),
        {"opened_at": _time, "flush_at": _time},
        "rule, key",
        optional=True,
    ),
    _Table(
        "group_members",
        ("rule", "event_id", "key", "event_seq", "flush_id"),
        {},
        "rule, event_id",
        optional=True,
    ),
    _Table(
        "group_flushes",
        ("id", "rule", "key", "digest", "created_at"),
        {"created_at": _time},
        "id",
        optional=True,
    ),
)
"""What a state is, in an order that keeps references (deliveries after events)."""

_PG_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


@dataclass(frozen=True)
class CopyReport:
    """What ``state copy`` copied: table name -> rows (in :data:`TABLES` order)."""

    counts: dict[str, int]

    def __str__(self) -> str:
        return ", ".join(f"{count} {table}" for table, count in self.counts.items())


async def copy_state(
    source: Path,
    target: str,
    *,
    password: str | None = None,
    force: bool = False,
    timeout: float = 60.0,
) -> CopyReport:
    """Copy the SQLite state at ``source`` into the PostgreSQL database ``target``.

    Args:
        source: the SQLite state file.
        target: ``postgresql://USER@HOST:PORT/DB``; its schema is created if missing.
        password: the target's password, if not from ``PGPASSWORD`` / ``~/.pgpass``.
        force: replace what the target already holds.
        timeout: seconds to connect, and at most per statement.

    Raises:
        StoreError: the source is not a billnotify state, the target cannot be reached
            or already holds state (without ``force``). Errors name the file or
            ``host:port/db``, never a password.
    """
    place = where(target)
    db = _open_source(source)
    try:
        try:
            conn = await asyncpg.connect(
                target, password=password, timeout=timeout, command_timeout=timeout
            )
        except _PG_ERRORS as exc:
            raise StoreError(
                f"state store {place}: cannot connect: {_said(exc, password)}"
            ) from None
        try:
            return await _copy(db, conn, place, force)
        except _PG_ERRORS as exc:
            raise StoreError(f"state store {place}: copy failed: {_said(exc, password)}") from None
        finally:
            await conn.close()
    finally:
        db.close()


def _open_source(path: Path) -> sqlite3.Connection:
    if not check_existing(path):
        raise StoreError(f"no state file at {path} to copy")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        check_marker(db, path, SQLITE_SCHEMA_VERSION)
        db.execute("BEGIN")  # one read transaction: every table as of one moment
    except BaseException:
        db.close()
        raise
    return db


async def _copy(db: sqlite3.Connection, conn: Any, place: str, force: bool) -> CopyReport:
    await migrate(conn)
    async with conn.transaction():
        # no other process may write (or start on) the target while it is replaced
        names = ", ".join(table.name for table in TABLES)
        await conn.execute(f"LOCK TABLE {names}, log_head IN EXCLUSIVE MODE")
        held = [
            t.name for t in TABLES if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {t.name})")
        ]
        if held and not force:
            raise StoreError(
                f"state store {place} already holds state ({', '.join(held)}): "
                "copy into an empty database, or pass --force to replace it"
            )
        await conn.execute(f"TRUNCATE {names}")
        counts: dict[str, int] = {}
        for table in TABLES:
            result = await conn.copy_records_to_table(
                table.name, records=table.rows(db), columns=list(table.columns)
            )
            counts[table.name] = int(result.rsplit(" ", 1)[-1])
        await conn.execute("UPDATE log_head SET seq = (SELECT coalesce(max(seq), 0) FROM events)")
    return CopyReport(counts)


def _said(exc: BaseException, password: str | None) -> str:
    message = str(exc) or type(exc).__name__
    return message.replace(password, "***") if password else message
