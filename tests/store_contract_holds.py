"""The store contract for held deliveries: deferral without an attempt, and rate-limit
turns (see ``store_contract.py``)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from billnotify.deliveries.base import DeliveryStatus
from billnotify.store import Store
from store_contract import NOW, deliveries, end

SECOND = timedelta(seconds=1)


def at(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


class HoldsContract:
    async def test_a_due_delivery_is_deferred_without_an_attempt(self, backend: Store) -> None:
        rows = deliveries(2)
        await backend.record_deliveries(rows, "rules", 2, NOW)
        until = NOW + at(3600)
        assert await backend.defer_delivery(rows[0].id, until, NOW, "muted until 11:00")
        got = await backend.get_delivery(rows[0].id)
        assert got is not None
        assert got.status is DeliveryStatus.PENDING and got.attempts == 0
        assert got.next_attempt_at == until and got.note == "muted until 11:00"
        due = await backend.due_deliveries(NOW + at(3599))
        assert [d.id for d in due] == [rows[1].id]
        assert [d.id for d in await backend.due_deliveries(until)] == [rows[1].id, rows[0].id]
        assert await backend.next_due_at() == NOW

    async def test_only_a_delivery_still_due_is_deferred(self, backend: Store) -> None:
        rows = deliveries(3)
        await backend.record_deliveries(rows, "rules", 3, NOW)
        started = await backend.start_attempts([rows[0].id], NOW)
        assert not await backend.defer_delivery(rows[0].id, NOW + at(60), NOW, "x")  # sending
        await backend.finish_attempts(
            [end(rows[0].id, started[rows[0].id], DeliveryStatus.SUCCEEDED)]
        )
        assert not await backend.defer_delivery(rows[0].id, NOW + at(60), NOW, "x")  # settled
        assert await backend.defer_delivery(rows[1].id, NOW + at(60), NOW, "first")
        assert not await backend.defer_delivery(rows[1].id, NOW + at(90), NOW, "again")
        assert not await backend.defer_delivery("nope", NOW + at(60), NOW, "x")
        got = await backend.get_delivery(rows[1].id)
        assert got is not None and got.next_attempt_at == NOW + at(60) and got.note == "first"
        # a retry_scheduled delivery whose time has come is deferred as well
        number = (await backend.start_attempts([rows[2].id], NOW))[rows[2].id]
        await backend.finish_attempts(
            [end(rows[2].id, number, DeliveryStatus.RETRY_SCHEDULED, next_attempt_at=NOW + at(5))]
        )
        assert await backend.defer_delivery(rows[2].id, NOW + at(60), NOW + at(5), "later")
        got = await backend.get_delivery(rows[2].id)
        assert got is not None and got.status is DeliveryStatus.RETRY_SCHEDULED
        assert got.attempts == 1

    async def test_turns_within_the_limit_go_at_once_then_wait_in_order(
        self, backend: Store
    ) -> None:
        turns = [await backend.take_turn("webhook:ops", f"d{n}", NOW, 3, SECOND) for n in range(3)]
        assert turns == [None, None, None]
        waits = [
            await backend.take_turn("webhook:ops", f"d{n}", NOW, 3, SECOND) for n in range(3, 9)
        ]
        assert all(w is not None for w in waits)
        assert waits == sorted(waits)  # type: ignore[type-var]
        assert waits[0] is not None and waits[0] >= NOW + SECOND
        assert waits[3] is not None and waits[3] >= NOW + 2 * SECOND
        # asking again before its turn: the same turn; at its turn: it goes
        assert await backend.take_turn("webhook:ops", "d3", NOW + at(0.5), 3, SECOND) == waits[0]
        assert waits[0] is not None
        assert await backend.take_turn("webhook:ops", "d3", waits[0], 3, SECOND) is None
        # another key is not limited by this one
        assert await backend.take_turn("smtp", "e1", NOW, 3, SECOND) is None

    async def test_no_window_holds_more_turns_than_the_limit(self, backend: Store) -> None:
        limit, period = 4, SECOND
        went: list[float] = []
        waiting: dict[str, float] = {}
        clock = 0.0
        n = 0
        while len(went) < 30:
            now = NOW + at(clock)
            if n < 40 and clock < 2.0:  # a burst asks for turns
                turn = await backend.take_turn("k", f"d{n}", now, limit, period)
                if turn is None:
                    went.append(clock)
                else:
                    waiting[f"d{n}"] = (turn - NOW).total_seconds()
                n += 1
            for holder, due in sorted(waiting.items(), key=lambda item: item[1]):
                if due <= clock:
                    # some come late to their turn (a busy worker)
                    late = 0.3 if holder.endswith("7") else 0.0
                    turn = await backend.take_turn("k", holder, now + at(late), limit, period)
                    if turn is None:
                        went.append(clock + late)
                        del waiting[holder]
                    else:
                        waiting[holder] = (turn - NOW).total_seconds()
            clock = round(clock + 0.05, 3)
        went.sort()
        for i in range(len(went) - limit):
            assert went[i + limit] - went[i] >= period.total_seconds() - 1e-6, went

    async def test_turns_are_taken_one_at_a_time(self, backend: Store) -> None:
        turns = await asyncio.gather(
            *(backend.take_turn("k", f"d{n}", NOW, 5, SECOND) for n in range(20))
        )
        assert sum(t is None for t in turns) == 5
        later = sorted(t for t in turns if t is not None)
        assert len(later) == 15
        for i in range(len(later) - 5):
            assert later[i + 5] - later[i] >= SECOND

    async def test_a_delivery_read_twice_at_once_costs_one_turn(self, backend: Store) -> None:
        # two processes read the same due delivery: both ask, one starts it
        assert await backend.take_turn("k", "d1", NOW, 2, SECOND) is None
        assert await backend.take_turn("k", "d1", NOW + at(0.01), 2, SECOND) is None
        assert await backend.take_turn("k", "d2", NOW + at(0.02), 2, SECOND) is None
        assert await backend.take_turn("k", "d3", NOW + at(0.03), 2, SECOND) is not None
        # a retry of d1 a second later is a new turn, and waits for it
        retry = await backend.take_turn("k", "d1", NOW + at(1.0), 2, SECOND)
        assert retry is not None and retry > NOW + at(1.0)

    async def test_a_deep_queue_keeps_each_place_and_a_late_one_queues_behind(
        self, backend: Store
    ) -> None:
        # 200 behind 5/s: the turns reach 40 s ahead, far past what a turn reads by time
        waits = [await backend.take_turn("k", f"d{n}", NOW, 5, SECOND) for n in range(200)]
        assert waits[:5] == [None] * 5
        turns = [w for w in waits if w is not None]
        assert turns == sorted(turns) and turns[-1] > NOW + at(35)
        # the last one, asking again long before its turn, keeps it
        assert await backend.take_turn("k", "d199", NOW + at(1), 5, SECOND) == turns[-1]
        # one that comes 0.5 s late to its turn finds every place within a period
        # taken: it queues behind the last, as a new one would
        late = await backend.take_turn("k", "d5", turns[0] + at(0.5), 5, SECOND)
        assert late is not None and late > turns[-1]
        # the others still go at their turns
        assert await backend.take_turn("k", "d6", turns[1], 5, SECOND) is None
        assert await backend.take_turn("k", "d199", turns[-1], 5, SECOND) is None
