"""The state store: snapshots, cursors, the event log, positions and the delivery ledger."""

from billnotify.store.base import Store
from billnotify.store.process import ProcessStore
from billnotify.store.records import (
    Attempt,
    Delivery,
    NewDelivery,
    Snapshot,
    SnapshotWrite,
    StoredEvent,
    delivery_id,
)
from billnotify.store.sqlite import SqliteStore

__all__ = [
    "Attempt",
    "Delivery",
    "NewDelivery",
    "ProcessStore",
    "Snapshot",
    "SnapshotWrite",
    "SqliteStore",
    "Store",
    "StoredEvent",
    "delivery_id",
]
