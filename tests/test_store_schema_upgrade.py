"""A SQLite state of schema 1 opens under schema 2: deliveries gain ``claimed_by`` and the
leases tables appear, rows kept; a ``sending`` row of before counts as a dead instance's."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from billnotify.deliveries.base import DeliveryStatus
from billnotify.store import NewDelivery, SqliteStore
from billnotify.store.schema import SCHEMA_VERSION

NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


def _as_schema_1(path: Path) -> None:
    """Turn a state into what billnotify with schema 1 left (rows kept)."""
    with sqlite3.connect(path) as db:
        db.executescript(
            "ALTER TABLE deliveries DROP COLUMN claimed_by; DROP TABLE leases; "
            "DROP TABLE instances; UPDATE meta SET value = '1' WHERE key = 'schema_version';"
        )
    db.close()


def _columns(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        found = {row[1] for row in db.execute("PRAGMA table_info(deliveries)")}
    db.close()
    return found


async def test_a_schema_1_state_is_upgraded_and_its_rows_in_flight_recovered(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    row = NewDelivery("r", 0, "invoice_action", "evt_1", 1, exactly_once=True)
    async with SqliteStore(path, "old") as store:
        await store.record_deliveries([row], "rules", 1, NOW)
        await store.start_attempt(row.id, NOW)  # then the process died
    _as_schema_1(path)
    assert "claimed_by" not in _columns(path)

    async with SqliteStore(path, "new") as store:
        assert "claimed_by" in _columns(path)
        assert await store.recover_in_flight(NOW, live=["new"]) == (1, 0)  # no claimant: dead
        got = await store.get_delivery(row.id)
        assert got is not None and got.status is DeliveryStatus.UNCERTAIN
        lease = await store.acquire("rules", "new", NOW, timedelta(seconds=15))
        assert lease is not None and lease.epoch == 1
    with sqlite3.connect(path) as db:
        (version,) = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    db.close()
    assert int(version) == SCHEMA_VERSION
    async with SqliteStore(path, "again") as store:  # an upgraded state opens as it is
        assert await store.get_position("rules") == 1
