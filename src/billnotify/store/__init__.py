"""The state store: snapshots, cursors, the event log, positions and the delivery ledger.

The protocols (one per stage's need) are in ``base.py``, the values they trade in in
``records.py``; the backends are :class:`MemoryStore`, :class:`SqliteStore` and
:class:`ProcessStore` (the SQLite store in a process of its own, as the service runs it).
"""

from billnotify.store.base import (
    Deliveries,
    Endpoints,
    EventLog,
    Ledger,
    Lifecycle,
    Snapshots,
    Store,
)
from billnotify.store.memory import MemoryStore
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
    "Deliveries",
    "Delivery",
    "Endpoints",
    "EventLog",
    "Ledger",
    "Lifecycle",
    "MemoryStore",
    "NewDelivery",
    "ProcessStore",
    "Snapshot",
    "SnapshotWrite",
    "Snapshots",
    "SqliteStore",
    "Store",
    "StoredEvent",
    "delivery_id",
]
