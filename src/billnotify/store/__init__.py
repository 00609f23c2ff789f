"""The state store: snapshots, cursors, the event log, positions and the delivery ledger."""

from billnotify.store.base import (
    Attempt,
    Delivery,
    NewDelivery,
    Snapshot,
    SnapshotWrite,
    Store,
    StoredEvent,
    delivery_id,
)
from billnotify.store.process import ProcessStore
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
