"""The store contract for chained actions: answers kept, chained deliveries moved on
(see ``store_contract.py``)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from billnotify.deliveries.base import DeliveryStatus
from billnotify.store import NewDelivery, Store
from billnotify.store.records import ChainMove
from store_contract import NOW

W, S, P = DeliveryStatus.WAITING, DeliveryStatus.SKIPPED, DeliveryStatus.PENDING


def _chain(event: str, seq: int) -> tuple[NewDelivery, NewDelivery]:
    """A predecessor (generateDownloadLink) and its dependent (an email), as planned."""
    first = NewDelivery("r", 0, "invoice_action", event, seq, exactly_once=False, target="link")
    then = NewDelivery("r", 1, "email", event, seq, exactly_once=True, target="c@x", status=W)
    return first, then


class ChainsContract:
    async def test_an_answer_is_kept_replaced_and_read_by_id(self, backend: Store) -> None:
        first, then = _chain("evt_1", 1)
        await backend.record_deliveries([first, then], "rules", 1, NOW)
        assert await backend.get_results([first.id, then.id]) == {}
        await backend.keep_result(first.id, '{"download_url": "https://x/1"}', NOW)
        await backend.keep_result(first.id, '{"download_url": "https://x/2"}', NOW)
        assert await backend.get_results([first.id, then.id, "dlv_nope"]) == {
            first.id: '{"download_url": "https://x/2"}'
        }
        assert await backend.get_results([]) == {}

    async def test_waiting_deliveries_are_never_due_and_are_listed_oldest_first(
        self, backend: Store
    ) -> None:
        a_first, a_then = _chain("evt_1", 1)
        b_first, b_then = _chain("evt_2", 2)
        await backend.record_deliveries([a_first, a_then], "rules", 1, NOW)
        later = NOW + timedelta(seconds=5)
        await backend.record_deliveries([b_first, b_then], "rules", 2, later)
        due = await backend.due_deliveries(later + timedelta(hours=1))
        assert {d.id for d in due} == {a_first.id, b_first.id}
        chained = await backend.chained_deliveries()
        assert [d.id for d in chained] == [a_then.id, b_then.id]
        assert [d.status for d in chained] == [W, W]
        assert [d.id for d in await backend.chained_deliveries(limit=1)] == [a_then.id]

    async def test_a_move_applies_only_from_the_expected_statuses(self, backend: Store) -> None:
        first, then = _chain("evt_1", 1)
        await backend.record_deliveries([first, then], "rules", 1, NOW)
        later = NOW + timedelta(minutes=1)
        skip = ChainMove(then.id, (W,), S, "after link: uncertain")
        assert await backend.move_chained([skip], later) == [then.id]
        got = await backend.get_delivery(then.id)
        assert got is not None and (got.status, got.note) == (S, "after link: uncertain")
        assert await backend.move_chained([skip], later) == []  # no longer waiting
        assert [d.id for d in await backend.chained_deliveries()] == [then.id]
        run = ChainMove(then.id, (W, S), P, "after link: succeeded")
        ghost = ChainMove("dlv_nope", (W, S), P, "after x: succeeded")
        assert await backend.move_chained([run, ghost], later) == [then.id]
        got = await backend.get_delivery(then.id)
        assert got is not None
        assert (got.status, got.note, got.next_attempt_at) == (P, "after link: succeeded", later)
        assert then.id in {d.id for d in await backend.due_deliveries(later)}
        assert await backend.chained_deliveries() == []
        # a move computed from an older read never overrides what happened since
        assert await backend.start_attempts([then.id], later) == {then.id: 1}
        assert await backend.move_chained([run], later) == []
        got = await backend.get_delivery(then.id)
        assert got is not None and got.status is DeliveryStatus.SENDING

    async def test_a_dependent_made_due_wakes_an_idle_worker(self, backend: Store) -> None:
        first, then = _chain("evt_1", 1)
        await backend.record_deliveries([first, then], "rules", 1, NOW)

        async def woken() -> None:
            async with backend.due_changed:
                await backend.due_changed.wait()

        waiter = asyncio.create_task(woken())
        await asyncio.sleep(0.05)
        await backend.move_chained([ChainMove(then.id, (W,), P, "after link: succeeded")], NOW)
        await asyncio.wait_for(waiter, 5)

    async def test_chained_deliveries_page_by_creation_then_id(self, backend: Store) -> None:
        rows: list[NewDelivery] = []
        for n in range(5):
            first, then = _chain(f"evt_{n}", n)
            await backend.record_deliveries([first, then], "rules", n + 1, NOW)
            rows.append(then)
        later_first, later = _chain("evt_9", 9)
        await backend.record_deliveries([later_first, later], "rules", 10, NOW + timedelta(1))
        same_time = sorted(r.id for r in rows)  # created together: in id order
        page = await backend.chained_deliveries(limit=3)
        assert [d.id for d in page] == same_time[:3]
        rest = await backend.chained_deliveries(after=(page[-1].created_at, page[-1].id))
        assert [d.id for d in rest] == [*same_time[3:], later.id]
        last = rest[-1]
        assert await backend.chained_deliveries(after=(last.created_at, last.id)) == []
