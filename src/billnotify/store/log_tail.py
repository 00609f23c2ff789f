"""The newest entries a process appended to the event log, kept to answer its followers.

The service's followers of the log (the MQTT publisher, the rule handler) read each
event right after the service committed it. :class:`LogTail` keeps what the service's
own commits appended, as the store logged it, so that
:class:`~billnotify.store.process.ProcessStore` answers those reads without asking its
child to read back what it has just written.

Why a held entry is the store's answer: ``seq`` is the ``events`` table's integer
primary key (``AUTOINCREMENT``: never reused, and given under the file's write lock, so
in commit order), and no code deletes or rewrites an event. So once the entries of every
seq from ``a`` to ``b`` are held, each exactly as logged, no writer can add one among
them, and a read after any seq from ``a - 1`` to ``b - 1`` finds them first: the tail's
answer is the start of the store's (it stops at the tail's end, where the store may hold
more). The tail therefore stays contiguous: an entry that does not follow the last one
(another process appended in between) starts it afresh.
"""

from __future__ import annotations

from collections.abc import Iterable

from billnotify.store.records import LogEntry

ENTRIES = 4096
"""Entries kept at most: eight of the followers' pages of 500. In a burst the poller
commits pages faster than the publisher's window lets their events out, and with 1,024
the publisher read most of a 20,000-change burst back from the store's child (CPU per
change 178 → 168 µs with 4,096, some 2 MiB more at the peak, ``docs/performance.md``);
one still further behind reads from the store."""
TEXT = 8 << 20
"""Characters of JSON kept at most (8 Mi): the bound where events are large."""


class LogTail:
    """Log entries of consecutive seqs, the newest last, bounded from the front.

    Args:
        entries: how many entries are kept at most.
        text: how many characters of JSON are kept at most.
    """

    def __init__(self, entries: int = ENTRIES, text: int = TEXT) -> None:
        self.max_entries = entries
        self.max_text = text
        self._entries: list[LogEntry] = []
        self._text = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every entry (what the log holds is no longer known here)."""
        self._entries = []
        self._text = 0

    def extend(self, entries: Iterable[LogEntry]) -> None:
        """Add entries just committed, in seq order; one that does not follow the last
        starts the tail afresh."""
        held = self._entries
        for entry in entries:
            if held and entry.seq != held[-1].seq + 1:
                self.clear()
                held = self._entries
            held.append(entry)
            self._text += len(entry.json)
        cut = max(0, len(held) - self.max_entries)
        self._text -= sum(len(entry.json) for entry in held[:cut])
        while cut < len(held) and self._text > self.max_text:
            self._text -= len(held[cut].json)
            cut += 1
        del held[:cut]

    def read(self, after_seq: int, limit: int) -> list[LogEntry] | None:
        """Up to ``limit`` entries after ``after_seq``, or None when ``after_seq + 1`` is
        not held (the store must answer: it may hold more, or older entries)."""
        held = self._entries
        if not held or limit <= 0:
            return None
        start = after_seq + 1 - held[0].seq
        if not 0 <= start < len(held):
            return None
        return held[start : start + limit]
