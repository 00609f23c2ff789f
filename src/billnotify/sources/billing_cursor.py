"""Where a ``billing_platform`` resource's next poll starts reading: its cursor.

The cursor is the platform's own clock (``Date`` headers), with two refinements over a
single second:

- **Read times by id range.** A cycle reads its pages one after another, each covering
  the ids above the previous page's last one, as of its response's ``Date``. The next
  cycle asks each id range ``updatedSince`` = its own read time - overlap, narrowing the
  filter as its ``idAfter`` paging passes the start of each range. After a cycle that
  took long (a burst of thousands of changes), the ranges read late are not read again
  in full by the cycles after it; a quick cycle has a single range, as before.
- **The created cursor.** The platform's docs do not say whether ``updatedSince`` lists
  a record that was created and never updated. A resource asks ``createdSince`` as well
  every cycle until the platform has shown that a created record comes with
  ``updatedSince`` too; from then on (in this process) it asks ``createdSince`` only once
  a minute, from its own cursor, which does not move until it has been asked. A created
  record that only ``createdSince`` lists is still seen, at worst that much later, and
  turns the every-cycle query back on.

Text form: ``2026-03-15T12:00:00Z`` (one range, ``createdSince`` from the same second: what
older versions stored), or ``2026-03-15T12:00:00Z 1500@2026-03-15T12:00:03Z
c2026-03-15T11:59:30Z`` (ids above 1500 read from 12:00:03; ``createdSince`` from 11:59:30).
The first second leads, so cursors sort by it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

CURSOR_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
MAX_RANGES = 12
"""Id ranges a cursor keeps at most (merging two keeps the earlier time: more re-reads,
never fewer)."""
CREATED_CHECK = timedelta(minutes=1)
"""How often ``createdSince`` is still asked once ``updatedSince`` is known to list
created records."""


def _time(text: str) -> datetime:
    return datetime.strptime(text, CURSOR_FORMAT).replace(tzinfo=UTC)


def _text(when: datetime) -> str:
    return when.strftime(CURSOR_FORMAT)


@dataclass(frozen=True)
class Cursor:
    """Read times by id range, and where ``createdSince`` starts."""

    ranges: tuple[tuple[int | None, datetime], ...]
    """(ids above this one, or all; read at) in increasing id and time."""
    created: datetime

    @classmethod
    def parse(cls, text: str) -> Cursor:
        """A cursor from its text form (see the module docstring)."""
        first, *rest = text.split()
        ranges: list[tuple[int | None, datetime]] = [(None, _time(first))]
        created = ranges[0][1]
        for token in rest:
            if token.startswith("c"):
                created = _time(token[1:])
            else:
                after, _, when = token.partition("@")
                ranges.append((int(after), _time(when)))
        return cls(tuple(ranges), created)

    def text(self) -> str:
        """The text form."""
        parts = [_text(self.ranges[0][1])]
        parts += [f"{after}@{_text(when)}" for after, when in self.ranges[1:]]
        if self.created != self.ranges[0][1]:
            parts.append("c" + _text(self.created))
        return " ".join(parts)

    def queries(self, overlap: timedelta) -> list[tuple[int | None, datetime]]:
        """(``idAfter``, ``updatedSince``) from which each id range is asked."""
        queries: list[tuple[int | None, datetime]] = []
        for after, when in self.ranges:
            if not queries or queries[-1][1] != when - overlap:
                queries.append((after, when - overlap))
        return queries


class ReadTimes:
    """The read time of each id range of one cycle, as its responses come back."""

    def __init__(self) -> None:
        self._reads: list[tuple[int | None, datetime]] = []

    def add(self, after: int | None, when: datetime) -> None:
        """A response covered the ids above ``after`` (all: None) as of ``when``."""
        when = when.replace(microsecond=0)
        if after is None:
            self._reads = [(None, when)]
        else:
            self._reads.append((after, when))

    @property
    def first(self) -> datetime | None:
        """When the cycle's first response was sent."""
        return self._reads[0][1] if self._reads else None

    def ranges(self) -> tuple[tuple[int | None, datetime], ...]:
        """Increasing read times by increasing id range, at most :data:`MAX_RANGES`.

        A range read later than the next one takes the next one's time (earlier: more
        re-reads, never fewer), so that one ``idAfter`` paging can narrow as it goes.
        """
        ordered = sorted(self._reads, key=lambda r: -1 if r[0] is None else r[0])
        kept: list[tuple[int | None, datetime]] = []
        for after, when in reversed(ordered):
            if kept and kept[-1][1] <= when:
                when = kept[-1][1]
                kept.pop()  # the same time as the range below it: one range
            kept.append((after, when))
        kept.reverse()
        while len(kept) > MAX_RANGES:
            gaps = [kept[n][1] - kept[n - 1][1] for n in range(1, len(kept))]
            del kept[1 + gaps.index(min(gaps))]
        return tuple(kept)


@dataclass
class CreatedCheck:
    """Whether a cycle asks ``createdSince``, learnt from what the platform lists.

    ``folded`` (``createdSince`` only every :data:`CREATED_CHECK`) once ``createdSince``
    listed a record that the same cycle's ``updatedSince`` had found new; back to every
    cycle when ``createdSince`` finds a record new (``updatedSince``, asked first, did not
    list it).
    """

    folded: bool = False

    def due(self, cursor: Cursor | None, now: datetime) -> bool:
        """Whether this cycle asks ``createdSince`` (``now``: the cycle's first read)."""
        return cursor is not None and (not self.folded or now - cursor.created >= CREATED_CHECK)

    def learn(self, *, fresh: bool, confirmed: bool) -> None:
        """What ``createdSince`` listed: a record new to the store (``fresh``), or one
        that ``updatedSince`` had found new in the same cycle (``confirmed``)."""
        if fresh:
            self.folded = False
        elif confirmed:
            self.folded = True
