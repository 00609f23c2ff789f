"""Turns under a rate limit (``deliveries/turns.py``), as a pure function: whatever the
deliveries' lateness, no window holds more turns taken than the limit, and every
delivery goes in the end (nobody waits forever behind the others' missed turns)."""

from __future__ import annotations

import random

import pytest

from billnotify.deliveries.turns import (
    WENT,
    TurnPlan,
    horizon,
    plan_rows,
    plan_turn,
    slack,
    stale_before,
)


def simulate(
    seed: int, limit: int, period: float, count: int, late: float, stalls: float = 0.05
) -> tuple[list[float], float]:
    """``count`` deliveries asking for turns in a burst, each coming back to its turn up
    to ``late`` seconds late (now and then much later: a worker that stalled)."""
    rng = random.Random(seed)
    taken: list[float] = []
    reserved: dict[int, float] = {}
    pending = list(range(count))
    now = 0.0
    asks = 0
    while pending or reserved:
        if pending:
            n = pending.pop(0)
            others = sorted(reserved.values())
            at = plan_turn(sorted(taken), others, None, now, limit, period)
            if at <= now:
                taken.append(now)
            else:
                reserved[n] = at
        due = sorted((at, n) for n, at in reserved.items() if at <= now)
        for at, n in due:
            stall = 3 * period if rng.random() < stalls else 0.0
            when = at + rng.uniform(0, late) + stall
            others = sorted(a for m, a in reserved.items() if m != n)
            turn = plan_turn(sorted(taken), others, at, when, limit, period)
            asks += 1
            if turn <= when:
                taken.append(when)
                del reserved[n]
            else:
                reserved[n] = turn
        now = round(now + 0.01, 6)
        assert now < 10_000, "deliveries wait forever"
    return sorted(taken), asks / count


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize(("limit", "period"), [(5, 1.0), (1, 1.0), (10, 60.0)])
@pytest.mark.parametrize("lateness", [1.0, 3.0])
def test_no_window_holds_more_than_the_limit_and_all_go(
    seed: int, limit: int, period: float, lateness: float
) -> None:
    late = slack(limit, period) * lateness
    times, asks = simulate(seed, limit, period, count=40, late=late)
    assert len(times) == 40
    for i in range(len(times) - limit):
        assert times[i + limit] - times[i] >= period - 1e-6
    if lateness <= 1.0:  # late within the slack: only the stalled ones ask again
        assert asks < 1.5


def test_on_time_deliveries_go_at_the_limit() -> None:
    times, asks = simulate(1, 5, 1.0, count=50, late=0.0, stalls=0.0)
    # 50 at 5/s (asked for 10 ms apart): 9 more windows after the first, each a period
    # and the slack after the one before
    assert times[-1] == pytest.approx(0.04 + 9 * (1.0 + slack(5, 1.0)), abs=0.011)
    assert asks * 50 == pytest.approx(45)  # the 45 that waited came back once each


def _random_rows(
    rng: random.Random, count: int, now: float, limit: int, period: float
) -> list[tuple[int, float, str | None]]:
    """A key's rows as a store keeps them: turns taken (some as ``=holder``), turns
    reserved ahead (a deep queue), and missed ones."""
    rows: list[tuple[int, float, str | None]] = []
    for n in range(count):
        kind = rng.random()
        if kind < 0.3:
            at = now - rng.uniform(0, 2 * period)
            holder = None if rng.random() < 0.2 else f"=d{rng.randrange(count)}"
        elif kind < 0.4:  # a turn missed, its delivery late
            at, holder = now - rng.uniform(0, 2 * period), f"d{n}"
        else:
            at, holder = now + rng.uniform(0, count / limit * period), f"d{n}"
        rows.append((n, round(at, 6), holder))
    return sorted(rows, key=lambda row: row[1])


def _view(
    rows: list[tuple[int, float, str | None]], holder: str, now: float, limit: int, period: float
) -> list[tuple[int, float, str | None]]:
    """What a store reads for a turn: the holder's rows, those up to the horizon, the
    ``limit`` latest."""
    ids = {r[0] for r in rows if r[2] in (holder, WENT + holder)}
    ids |= {r[0] for r in rows if r[1] <= horizon(now, period)}
    ids |= {r[0] for r in rows[-limit:]}
    return [r for r in rows if r[0] in ids]


@pytest.mark.parametrize("seed", range(300))
def test_a_turn_planned_on_the_rows_a_store_reads_is_the_turn_planned_on_all(seed: int) -> None:
    rng = random.Random(seed)
    limit, period = rng.choice([(1, 1.0), (5, 1.0), (10, 60.0), (3, 3600.0)])
    now = 1_000_000.0
    rows = _random_rows(rng, rng.randrange(1, 400), now, limit, period)
    holder = rng.choice([f"d{rng.randrange(len(rows))}", "new"])
    when = now + rng.choice([0.0, rng.uniform(0, 3 * period)])
    full = plan_rows(rows, holder, when, limit, period)
    assert plan_rows(_view(rows, holder, when, limit, period), holder, when, limit, period) == full


def test_a_deep_queue_keeps_the_limit_when_deliveries_come_late() -> None:
    """1,000 queued at 5/s on the rows a store reads, a third of them late beyond the
    slack: every one goes, no window holds more than the limit, and a late one that
    finds no place within a period queues behind the tail."""
    rng = random.Random(7)
    limit, period = 5, 1.0
    rows: dict[int, tuple[int, float, str | None]] = {}
    ids = iter(range(10**6))

    def take(holder: str, now: float) -> TurnPlan:
        live = sorted(
            (r for r in rows.values() if r[1] > stale_before(now, period)), key=lambda r: r[1]
        )
        plan = plan_rows(_view(live, holder, now, limit, period), holder, now, limit, period)
        if plan.write:
            row = next(ids) if plan.row is None else plan.row
            assert isinstance(row, int)
            rows[row] = (row, plan.at, WENT + holder if plan.go else holder)
        return plan

    waiting = {f"d{n}": take(f"d{n}", 0.0).at for n in range(1000)}
    went: list[float] = []
    while waiting:
        holder, at = min(waiting.items(), key=lambda item: item[1])
        now = at + (rng.uniform(0.1, 0.5) if rng.random() < 0.3 else 0.0)
        plan = take(holder, now)
        if plan.go:
            went.append(now)
            del waiting[holder]
        else:
            waiting[holder] = plan.at
    went.sort()
    assert len(went) == 1000
    for i in range(len(went) - limit):
        assert went[i + limit] - went[i] >= period - 1e-6
