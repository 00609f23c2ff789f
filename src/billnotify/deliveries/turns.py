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

A turn costs the same however deep the queue behind a limit: the planner needs only
the delivery's own rows, the rows of the next two periods (:func:`horizon`; older than
two periods are pruned, :func:`stale_before`) and the ``limit`` latest rows, the tail
of the queue. A late delivery looks for a place within the next period and otherwise
queues behind the tail, like a new one.
"""

from __future__ import annotations

import bisect
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

_MAX_SLACK = 0.1
"""Seconds of slack at most."""
_EPSILON = 2e-6
"""A turn this close counts as come (times pass through datetimes, in microseconds)."""


WENT = "="
"""The holder of a turn taken is ``=<delivery id>``; of a turn waited for, the id."""


@dataclass(frozen=True, slots=True)
class TurnPlan:
    """What :func:`plan_rows` decided.

    Attributes:
        go: the delivery goes now.
        at: its turn (``now`` when it goes).
        row: the row of its own turn, to rewrite (None: a new row).
        write: False when nothing changes (a turn still ahead, or taken just now by
            another process that read the same delivery).
    """

    go: bool
    at: float
    row: Hashable | None
    write: bool


def plan_rows(
    rows: Sequence[tuple[Hashable, float, str | None]],
    holder: str,
    now: float,
    limit: int,
    period: float,
) -> TurnPlan:
    """:func:`plan_turn` over a key's rows ``(row id, at, holder)``, as a store keeps
    them: ``holder`` is the delivery's id.

    A delivery whose turn was taken within the slack before ``now`` and that holds no
    other turn goes again without a new one: two processes that read the same due
    delivery both ask for it, only one of them can start it (the ledger's claim), and
    the other must not cost a turn. ``rows`` may hold a row twice (a store reads them
    by several indexes), in any order.
    """
    rows = list({row[0]: row for row in rows}.values())
    mine = next((row for row in rows if row[2] == holder), None)
    if mine is None:
        went = [at for _, at, h in rows if h == WENT + holder]
        if went and max(went) > now - slack(limit, period) - _EPSILON:
            return TurnPlan(True, now, None, False)
    taken = sorted(at for _, at, h in rows if h is None or h.startswith(WENT))
    reserved = sorted(row[1] for row in rows if row is not mine and _waiting(row[2]))
    own = None if mine is None else mine[1]
    at = plan_turn(taken, reserved, own, now, limit, period)
    if own is not None and at == own and at > now:
        return TurnPlan(False, at, mine[0] if mine else None, False)
    return TurnPlan(at <= now, at, None if mine is None else mine[0], True)


def stale_before(now: float, period: float) -> float:
    """Turns at or before this time are in no window that matters: a store prunes them."""
    return now - 2 * period


def horizon(now: float, period: float) -> float:
    """The latest turn time a store must pass to :func:`plan_rows` besides the holder's
    own rows and the ``limit`` latest ones: every row in (:func:`stale_before`, this]."""
    return now + 2 * period


def _waiting(holder: str | None) -> bool:
    return holder is not None and not holder.startswith(WENT)


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
            ``now - 2 * period`` may be left out: they are in no window that matters).
        reserved: the turns other deliveries wait for, oldest first (those up to
            ``now + 2 * period`` and the ``limit`` latest of all the turns suffice: the
            rest of a deep queue changes nothing).
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
        live = sorted([*taken, *(t for t in reserved if t >= now)])
        fit = _earliest_fit(live, now, limit, period, gap)
        # nothing free within a period: behind the queue's tail, as a new one
        at = max(now, live[-limit] + period + gap) if fit is None else fit
    # in whole microseconds, as a datetime holds them: a turn handed out as one and
    # asked for at that time must be found to have come
    return now if at <= now + _EPSILON else round(at, 6)


def _earliest_fit(
    others: Sequence[float], now: float, limit: int, period: float, gap: float
) -> float | None:
    """The earliest time in ``[now, now + period]`` at which one more turn keeps every
    window within ``limit``: now, or a period (and the slack) after a turn; None when
    there is none (checking one needs the turns up to a period after it: those up to
    :func:`horizon`)."""
    if _fits(others, now, limit, period):
        return now
    start = bisect.bisect_right(others, now - period - gap)
    for at in others[start:]:
        candidate = at + period + gap
        if candidate > now + period:
            break
        if candidate > now and _fits(others, candidate, limit, period):
            return candidate
    return None


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
