"""The snapshots a poller last read and wrote, kept while its process holds the lease.

Only the holder of a resource's poll lease writes that resource's snapshots (the store
refuses a commit made under an older lease), and every write it makes goes through
:class:`~billnotify.sources.base.FencedSnapshots`. So while the lease stays with this
process, the store holds exactly what this process last read or wrote, and a poll can
compare a page with the snapshots kept here instead of asking the store for every record
of every page: in a burst that read was a quarter of the CPU a change cost
(``docs/performance.md``, issue 13).

What keeps it exact:

- it is emptied when the lease's epoch changes, or the lease is not held: another
  process may have written meanwhile;
- it is emptied when a commit fails, since a failed commit may have landed or not;
- a record is kept only as the store has it: read from the store, or written by a
  commit that succeeded (its version moved by the number of times the commit wrote it,
  as every store moves it); a record written without being read first is dropped, since
  its version is not known here.

Records are kept as JSON text that reads back as the very record
(:func:`~billnotify.jsontext.dumps`; a fifth of the memory of the parsed records), at
most ``limit`` of them and ``text`` bytes, the longest unwritten dropped first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import NamedTuple

from billnotify.jsontext import dumps, loads
from billnotify.store.records import Snapshot, SnapshotWrite

DEFAULT_LIMIT = 50_000
"""Records kept per poller at most."""
DEFAULT_TEXT = 16 << 20
"""Bytes of records kept per poller at most (16 Mi: some 20 to 40 MiB in memory
with the keys; 20,000 billing tasks take about 6 Mi)."""


class _Kept(NamedTuple):  # a tuple: made for every record written, in a third of the time
    text: bytes
    marks: frozenset[str]
    due_at: datetime | None
    version: int


_ABSENT = None
"""Kept for an id the store was asked for and did not have (a new record)."""


class SnapshotCache:
    """One poller's snapshots, as its process last read and wrote them (see the module).

    Args:
        limit: records kept at most.
        text: bytes of records (their JSON) kept at most.
    """

    def __init__(self, limit: int = DEFAULT_LIMIT, text: int = DEFAULT_TEXT) -> None:
        self.limit = limit
        self.text = text
        self._kept: dict[str, _Kept | None] = {}
        """By id, of the one (source, entity) kept: a poller's."""
        self._table: tuple[str, str] | None = None
        self._size = 0
        self._epoch: int | None = None

    def __len__(self) -> int:
        return len(self._kept)

    def hold(self, epoch: int | None) -> None:
        """Keep what is kept only if it was kept under this lease epoch (None: the
        lease is not held, and nothing is kept)."""
        if epoch is None or epoch != self._epoch:
            self.forget()
        self._epoch = epoch

    def forget(self) -> None:
        """Keep nothing (a commit failed: the store's state is not known here)."""
        self._kept.clear()
        self._size = 0

    def _keeping(self, source: str, entity: str) -> bool:
        """Whether records of (source, entity) are kept: those of a poller's resource,
        the first asked for (another empties the cache and is kept from then on)."""
        if self._table != (source, entity):
            self.forget()
            self._table = (source, entity)
        return self._epoch is not None

    def get(
        self, source: str, entity: str, ids: Sequence[str]
    ) -> tuple[dict[str, Snapshot], list[str]]:
        """The kept snapshots of ``ids``, and the ids the store must be asked for."""
        found: dict[str, Snapshot] = {}
        missing: list[str] = []
        self._keeping(source, entity)
        kept = self._kept
        for rid in ids:
            if rid not in kept:
                missing.append(rid)
            elif (entry := kept[rid]) is not None:
                record = loads(entry.text)
                found[rid] = Snapshot(
                    source, entity, rid, record, entry.marks, entry.due_at, entry.version
                )
        return found, missing

    def read(
        self, source: str, entity: str, ids: Iterable[str], snapshots: Mapping[str, Snapshot]
    ) -> None:
        """What the store answered for ``ids``: their snapshots, or that it has none."""
        if not self._keeping(source, entity):
            return
        for rid in ids:
            snap = snapshots.get(rid)
            if snap is None:
                self._put(rid, _ABSENT)
            else:
                text = dumps(snap.record).encode()
                self._put(rid, _Kept(text, snap.marks, snap.due_at, snap.version))

    def written(self, source: str, writes: Sequence[SnapshotWrite]) -> None:
        """A commit of ``writes`` succeeded."""
        if self._epoch is None or not writes:
            return
        if any((source, w.entity) != self._table for w in writes):
            self.forget()  # not the poller's resource: not kept, and nothing else either
            return
        last: dict[str, SnapshotWrite] = {}
        times: dict[str, int] = {}
        for write in writes:  # a record written twice in a commit: the last write stays
            last[write.id] = write
            times[write.id] = times.get(write.id, 0) + 1
        for rid, write in last.items():
            if rid not in self._kept:
                continue
            before = self._pop(rid)
            version = times[rid] if before is None else before.version + times[rid]
            text = dumps(write.record).encode()
            self._put(rid, _Kept(text, write.marks, write.due_at, version))

    def _pop(self, key: str) -> _Kept | None:
        entry = self._kept.pop(key)
        if entry is not None:
            self._size -= len(entry.text)
        return entry

    def _put(self, key: str, entry: _Kept | None) -> None:
        kept = self._kept
        if key in kept:
            self._pop(key)
        kept[key] = entry
        if entry is not None:
            self._size += len(entry.text)
        while len(kept) > self.limit or self._size > self.text:
            self._pop(next(iter(kept)))
