"""The state store: snapshots, cursors, the event log, positions and the delivery ledger."""

from billnotify.store.base import (
    Attempt,
    Delivery,
    DeliveryStatus,
    NewDelivery,
    Outcome,
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
    "DeliveryStatus",
    "NewDelivery",
    "Outcome",
    "ProcessStore",
    "Snapshot",
    "SnapshotWrite",
    "SqliteStore",
    "Store",
    "StoredEvent",
    "delivery_id",
]
