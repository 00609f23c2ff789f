"""The ledger's partial index of unsettled deliveries, and stores made before it."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from billnotify.deliveries.base import DeliveryStatus
from billnotify.store import NewDelivery, SqliteStore
from billnotify.store.sqlite_deliveries import _ACTIVE, _DUE

NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)

_OLD_INDEXES = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta (key, value) VALUES ('schema_version', '1');
CREATE TABLE deliveries (
    id TEXT PRIMARY KEY, rule TEXT NOT NULL, action_index INTEGER NOT NULL,
    action_type TEXT NOT NULL, event_id TEXT NOT NULL, event_seq INTEGER NOT NULL,
    exactly_once INTEGER NOT NULL, target TEXT NOT NULL DEFAULT '', status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL, last_error TEXT,
    last_status_code INTEGER, created_at REAL NOT NULL, updated_at REAL NOT NULL,
    rendered TEXT, note TEXT
);
CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at);
CREATE INDEX deliveries_event ON deliveries (event_id);
"""


def _rows(count: int) -> list[NewDelivery]:
    return [NewDelivery("r", 0, "webhook", f"evt_{n}", n, exactly_once=False) for n in range(count)]


def _indexes(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()
    return {name for (name,) in rows if not name.startswith("sqlite_autoindex")}


def test_the_index_conditions_name_the_statuses_as_they_are_stored() -> None:
    unsettled = [DeliveryStatus.PENDING, DeliveryStatus.RETRY_SCHEDULED, DeliveryStatus.SENDING]
    assert "status IN (" + ", ".join(f"'{s.value}'" for s in unsettled) + ")" == _ACTIVE
    assert "status IN (" + ", ".join(f"'{s.value}'" for s in unsettled[:2]) + ")" == _DUE


async def test_a_store_made_before_gets_the_new_index_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.executescript(_OLD_INDEXES)
        db.execute(
            "INSERT INTO deliveries (id, rule, action_index, action_type, event_id, event_seq, "
            "exactly_once, status, next_attempt_at, created_at, updated_at) "
            "VALUES ('dlv_old', 'r', 0, 'webhook', 'evt_old', 1, 0, 'pending', ?, ?, ?)",
            (NOW.timestamp(),) * 3,
        )
    async with SqliteStore(path) as store:
        due = await store.due_deliveries(NOW)
        assert [d.id for d in due] == ["dlv_old"]
    async with SqliteStore(tmp_path / "new.db"):
        pass
    upgraded, fresh = _indexes(path), _indexes(tmp_path / "new.db")
    assert "deliveries_active" in upgraded
    assert not {"deliveries_due", "deliveries_event"} & upgraded
    assert upgraded == fresh
