"""When a rate-limited delivery may go: turns in a sliding window, a pure function.

A rate limit of ``limit`` per ``period`` (``"5/s"``) holds when no window of length
``period`` holds more than ``limit`` turns. The store keeps each key's turns (the time
each delivery went, or is to go) and asks :func:`plan_turn` for the next one inside its
transaction, so every process on the store takes turns from the same log:

- a delivery without a turn is placed one period (plus a little :func:`slack`) after
  the ``limit``-th latest turn, or at ``now`` when that is later: then no window that
  holds it holds more than the ``limit - 1`` turns after that one, and deliveries over
  the limit wait their turn in the order they asked;
- a delivery whose turn is still ahead keeps it;
- a delivery whose turn has come goes now if that keeps every window within the limit
  (it does, unless the delivery is later than the slack: a worker that was busy or
  down), else it takes the earliest time that does; the turns other late deliveries
  still wait for hold no place then (each is placed again when it comes).

Every turn taken is checked against every turn taken before it, so the limit holds
whatever the lateness; the slack only keeps an ordinary few milliseconds of lateness
from costing a delivery its place.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

_MAX_SLACK = 0.1
"""Seconds of slack at most."""
_EPSILON = 2e-6
"""A turn this close counts as come (times pass through datetimes, in microseconds)."""


@dataclass(frozen=True, slots=True)
class Rate:
    """``limit`` turns per ``period``: a ``rate_limit = "N/s|m|h"`` setting.

    Attributes:
        limit: turns per period (at least 1).
        period: the window's length.
    """

    limit: int
    period: timedelta

    def __str__(self) -> str:
        unit = {1: "s", 60: "m", 3600: "h"}.get(int(self.period.total_seconds()))
        return f"{self.limit}/{unit}" if unit else f"{self.limit}/{self.period}"


def slack(limit: int, period: float) -> float:
    """Seconds added after a full window before the next turn: a quarter of the spacing
    between turns, at most 100 ms (at ``5/s`` a turn is 50 ms later than strictly
    needed, so a delivery up to 50 ms late to its turn still goes at once)."""
    return min(period / limit / 4, _MAX_SLACK)


def plan_turn(
    taken: Sequence[float],
    reserved: Sequence[float],
    mine: float | None,
    now: float,
    limit: int,
    period: float,
) -> float:
    """When a delivery may go (``<= now``: at once, and its turn is ``now``).

    Args:
        taken: when the key's other deliveries went, oldest first (those older than
            ``now - period`` may be left out: they are in no window that matters).
        reserved: the turns other deliveries wait for, oldest first.
        mine: the delivery's own turn, when it was given one before.
        now: the current time (seconds since the epoch).
        limit: turns per period.
        period: the window's length in seconds.
    """
    if mine is not None and mine > now + _EPSILON:
        return mine
    gap = slack(limit, period)
    if mine is None:
        every = sorted([*taken, *reserved])
        at = now if len(every) < limit else every[-limit] + period + gap
    else:
        # a turn another delivery missed holds no place: it is placed again when that
        # one comes, against the turns taken by then
        live = sorted([*taken, *(at for at in reserved if at >= now)])
        at = _earliest_fit(live, now, limit, period, gap)
    # in whole microseconds, as a datetime holds them: a turn handed out as one and
    # asked for at that time must be found to have come
    return now if at <= now + _EPSILON else round(at, 6)


def _earliest_fit(
    others: Sequence[float], now: float, limit: int, period: float, gap: float
) -> float:
    """The earliest time ``>= now`` at which one more turn keeps every window within
    ``limit``: now, or a period (and the slack) after a turn (one after the latest turn
    always does)."""
    if _fits(others, now, limit, period):
        return now
    start = bisect.bisect_right(others, now - period - gap)
    for at in others[start:]:
        candidate = at + period + gap
        if candidate > now and _fits(others, candidate, limit, period):
            return candidate
    return max(now, others[-1] + period + gap) if others else now


def _fits(others: Sequence[float], t: float, limit: int, period: float) -> bool:
    """Whether a turn at ``t`` leaves every window ``[x, x + period)`` that holds it with
    at most ``limit`` turns (windows are fullest where they begin at a turn, or at
    either end of the range of windows holding ``t``)."""
    low = bisect.bisect_right(others, t - period)
    high = bisect.bisect_right(others, t)
    if high - low >= limit:  # the window just after t - period
        return False
    starts = [others[i] for i in range(low, high)]
    starts.append(t)
    for x in starts:
        inside = bisect.bisect_left(others, x + period) - bisect.bisect_left(others, x)
        if inside >= limit:
            return False
    return True
