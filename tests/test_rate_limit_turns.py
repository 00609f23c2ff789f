"""Turns under a rate limit (``deliveries/turns.py``), as a pure function: whatever the
deliveries' lateness, no window holds more turns taken than the limit, and every
delivery goes in the end (nobody waits forever behind the others' missed turns)."""

from __future__ import annotations

import random

import pytest

from billnotify.deliveries.turns import plan_turn, slack


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
