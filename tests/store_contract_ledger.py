"""The store contract for the delivery ledger and endpoints (see ``store_contract.py``)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from billnotify.deliveries.base import DeliveryStatus, Outcome
from billnotify.errors import StoreError
from billnotify.store import NewDelivery, Store
from store_contract import NOW, deliveries, end, event


class LedgerContract:
    async def test_recording_is_once_per_id_and_moves_the_position(self, backend: Store) -> None:
        rows = deliveries(2)
        assert await backend.record_deliveries([*rows, rows[0]], "rules", 1, NOW) == 2
        assert await backend.record_deliveries(rows, "rules", 2, NOW) == 0
        assert await backend.get_position("rules") == 2
        got = await backend.get_delivery(rows[0].id)
        assert got is not None
        assert (got.status, got.attempts, got.created_at, got.next_attempt_at) == (
            DeliveryStatus.PENDING,
            0,
            NOW,
            NOW,
        )
        assert (got.rule, got.event_id, got.target, got.exactly_once) == (
            "r",
            "evt_0",
            "ops",
            False,
        )

    async def test_what_a_dry_run_would_send_is_kept(self, backend: Store) -> None:
        rows = deliveries(2)
        await backend.record_deliveries(rows, "rules", 1, NOW, rendered={rows[0].id: '{"a":1}'})
        assert await backend.get_rendered(rows[0].id) == '{"a":1}'
        assert await backend.get_rendered(rows[1].id) is None
        assert await backend.get_rendered("dlv_nope") is None

    async def test_delivery_lifecycle_and_crash_recovery(self, backend: Store) -> None:
        once = NewDelivery("r", 0, "invoice_action", "evt_1", 1, exactly_once=True, target="inv")
        alert = NewDelivery("r", 1, "webhook", "evt_1", 1, exactly_once=False, target="ops")
        assert await backend.record_deliveries([once, alert], "rules", 1, NOW) == 2
        assert {d.id for d in await backend.due_deliveries(NOW)} == {once.id, alert.id}
        assert await backend.start_attempt(once.id, NOW) == 1
        assert await backend.start_attempt(alert.id, NOW) == 1
        assert await backend.recover_in_flight(NOW) == (1, 1)
        got_once = await backend.get_delivery(once.id)
        assert got_once is not None and got_once.status is DeliveryStatus.UNCERTAIN
        assert got_once.last_error is not None and "interrupted" in got_once.last_error
        got = await backend.get_delivery(alert.id)
        assert got is not None and got.status is DeliveryStatus.RETRY_SCHEDULED
        assert got.history[0].outcome is Outcome.UNCERTAIN
        assert got.history[0].finished_at == NOW
        n = await backend.start_attempt(alert.id, NOW)
        await backend.finish_attempt(
            alert.id,
            n,
            now=NOW,
            outcome=Outcome.SUCCESS,
            status=DeliveryStatus.SUCCEEDED,
            status_code=200,
        )
        got = await backend.get_delivery(alert.id)
        assert got is not None
        assert (got.status, got.attempts, got.last_status_code) == (
            DeliveryStatus.SUCCEEDED,
            2,
            200,
        )
        assert [a.number for a in got.history] == [1, 2]
        counts = await backend.count_deliveries()
        assert counts == {("invoice_action", "uncertain"): 1, ("webhook", "succeeded"): 1}
        assert await backend.recover_in_flight(NOW) == (0, 0)

    async def test_an_unknown_delivery_cannot_start(self, backend: Store) -> None:
        with pytest.raises(StoreError, match="unknown delivery dlv_nope"):
            await backend.start_attempt("dlv_nope", NOW)
        assert await backend.last_seq() == 0  # and the store goes on

    async def test_attempts_start_only_while_due_and_finish_together(self, backend: Store) -> None:
        rows = deliveries(3)
        await backend.record_deliveries(rows, "rules", 1, NOW)
        await backend.set_delivery_status(rows[2].id, DeliveryStatus.DEAD, now=NOW)
        started = await backend.start_attempts([r.id for r in rows] + ["dlv_unknown"], NOW)
        assert started == {rows[0].id: 1, rows[1].id: 1}  # the dead and the unknown stay
        assert await backend.start_attempts([rows[0].id], NOW) == {}  # already sending
        assert await backend.due_deliveries(NOW) == []
        later = NOW + timedelta(seconds=5)
        await backend.finish_attempts(
            [
                end(rows[0].id, 1, DeliveryStatus.SUCCEEDED, status_code=200),
                end(
                    rows[1].id,
                    1,
                    DeliveryStatus.RETRY_SCHEDULED,
                    outcome=Outcome.RETRYABLE,
                    next_attempt_at=later,
                    status_code=503,
                    error="HTTP 503",
                ),
            ]
        )
        found = await backend.get_deliveries([rows[0].id, rows[1].id, "dlv_nope"])
        first, second = sorted(found, key=lambda d: d.event_seq)  # in no particular order
        assert first.status is DeliveryStatus.SUCCEEDED and first.history == []
        assert second.status is DeliveryStatus.RETRY_SCHEDULED and second.last_error == "HTTP 503"
        got = await backend.get_delivery(rows[1].id)
        assert got is not None and got.history[0].outcome is Outcome.RETRYABLE
        assert got.history[0].status_code == 503
        assert [d.id for d in await backend.due_deliveries(later)] == [second.id]
        assert await backend.start_attempts([second.id], NOW) == {}  # not due yet
        assert await backend.start_attempts([second.id], later) == {second.id: 2}

    @pytest.mark.parametrize("count", [1, 7, 450])
    async def test_batches_of_any_size_start_and_finish_together(
        self, backend: Store, count: int
    ) -> None:
        rows = [
            NewDelivery("r", i, "webhook", "evt_1", 1, exactly_once=False) for i in range(count)
        ]
        assert await backend.record_deliveries(rows, "rules", 1, NOW) == count
        numbers = await backend.start_attempts([r.id for r in rows], NOW)
        assert numbers == {r.id: 1 for r in rows}
        await backend.finish_attempts(
            [end(r.id, 1, DeliveryStatus.SUCCEEDED, status_code=200) for r in rows]
        )
        assert await backend.count_deliveries() == {("webhook", "succeeded"): count}
        got = await backend.get_delivery(rows[-1].id)
        assert got is not None and got.history[0].status_code == 200

    async def test_due_deliveries_merge_pending_and_scheduled_in_order(
        self, backend: Store
    ) -> None:
        rows = deliveries(4)
        await backend.record_deliveries(rows, "rules", 4, NOW)
        for row, minutes in ((rows[1], -3), (rows[3], -1)):
            await backend.set_delivery_status(
                row.id,
                DeliveryStatus.RETRY_SCHEDULED,
                now=NOW,
                next_attempt_at=NOW + timedelta(minutes=minutes),
            )
        due = await backend.due_deliveries(NOW, limit=3)
        assert [d.id for d in due] == [rows[1].id, rows[3].id, rows[0].id]
        assert await backend.next_due_at() == NOW - timedelta(minutes=3)

    async def test_due_reads_pass_over_deliveries_in_flight_in_order(self, backend: Store) -> None:
        rows = deliveries(6)
        await backend.record_deliveries(rows, "rules", 6, NOW)
        ids = [row.id for row in rows]
        assert [d.id for d in await backend.due_deliveries(NOW, limit=10)] == ids
        await backend.start_attempts(ids[:3], NOW)  # the oldest are in flight
        assert [d.id for d in await backend.due_deliveries(NOW, limit=2)] == ids[3:5]
        assert [d.id for d in await backend.due_deliveries(NOW, exclude=ids[3:5])] == ids[5:]
        assert await backend.next_due_at() == NOW
        assert await backend.oldest_pending_at() == NOW

    async def test_settled_deliveries_are_no_longer_due_and_retries_come_back(
        self, backend: Store
    ) -> None:
        rows = deliveries(2)
        await backend.record_deliveries(rows, "rules", 2, NOW)
        assert await backend.oldest_pending_at() == NOW
        numbers = await backend.start_attempts([row.id for row in rows], NOW)
        later = NOW + timedelta(minutes=5)
        await backend.finish_attempts(
            [
                end(rows[0].id, numbers[rows[0].id], DeliveryStatus.SUCCEEDED),
                end(
                    rows[1].id,
                    numbers[rows[1].id],
                    DeliveryStatus.RETRY_SCHEDULED,
                    outcome=Outcome.RETRYABLE,
                    next_attempt_at=later,
                ),
            ]
        )
        assert await backend.due_deliveries(NOW) == []
        assert await backend.next_due_at() == later
        assert [d.id for d in await backend.due_deliveries(later)] == [rows[1].id]
        assert await backend.oldest_pending_at() == NOW  # the retry, created at NOW
        await backend.set_delivery_status(rows[1].id, DeliveryStatus.DEAD, now=NOW)
        assert await backend.next_due_at() is None
        assert await backend.oldest_pending_at() is None

    async def test_read_due_brings_each_due_delivery_with_its_event(self, backend: Store) -> None:
        stored = await backend.commit("acme", [], [event(str(n)) for n in range(4)])
        rows = [
            NewDelivery("r", 0, "webhook", s.event.id, s.seq, exactly_once=n % 2 == 0, target="ops")
            for n, s in enumerate(stored)
        ]
        rows.append(NewDelivery("r", 0, "webhook", "evt_gone", 99, exactly_once=False))
        await backend.record_deliveries(rows, "rules", stored[-1].seq, NOW)
        await backend.set_delivery_status(
            rows[0].id,
            DeliveryStatus.RETRY_SCHEDULED,
            now=NOW,
            next_attempt_at=NOW - timedelta(minutes=1),  # due before the others
        )
        await backend.set_delivery_status(
            rows[3].id,
            DeliveryStatus.RETRY_SCHEDULED,
            now=NOW,
            next_attempt_at=NOW + timedelta(days=1),
        )
        await backend.disable_endpoint("ops", "410", NOW)

        batch = await backend.read_due(NOW, limit=10, exclude=[rows[2].id])

        assert [d.id for d in batch.deliveries] == [rows[0].id, rows[1].id, rows[4].id]
        assert batch.deliveries[0].event == stored[0].event.to_json()
        assert batch.deliveries[0].exactly_once is True
        assert batch.deliveries[1].exactly_once is False
        assert (batch.deliveries[1].target, batch.deliveries[1].rule) == ("ops", "r")
        assert batch.deliveries[2].event is None  # not in the log
        assert batch.disabled == {"ops": "410"}
        assert [d.id for d in (await backend.read_due(NOW, limit=1)).deliveries] == [rows[0].id]


class DeliveriesContract:
    async def test_operators_list_newest_first_and_filter_by_status(self, backend: Store) -> None:
        old, new = deliveries(2)
        await backend.record_deliveries([old], "rules", 1, NOW)
        await backend.record_deliveries([new], "rules", 2, NOW + timedelta(seconds=1))
        await backend.set_delivery_status(old.id, DeliveryStatus.DEAD, now=NOW, error="gone")
        assert [d.id for d in await backend.list_deliveries()] == [new.id, old.id]
        assert [d.id for d in await backend.list_deliveries(limit=1)] == [new.id]
        dead = await backend.list_deliveries([DeliveryStatus.DEAD])
        assert [d.id for d in dead] == [old.id]
        assert dead[0].last_error == "gone"
        assert await backend.get_delivery("dlv_nope") is None

    async def test_a_status_set_by_hand_keeps_the_last_error_unless_given(
        self, backend: Store
    ) -> None:
        (row,) = deliveries(1)
        await backend.record_deliveries([row], "rules", 1, NOW)
        later = NOW + timedelta(minutes=1)
        assert await backend.set_delivery_status(
            row.id, DeliveryStatus.UNCERTAIN, now=NOW, error="timed out", note="first"
        )
        assert await backend.set_delivery_status(
            row.id, DeliveryStatus.RETRY_SCHEDULED, now=later, next_attempt_at=later
        )
        got = await backend.get_delivery(row.id)
        assert got is not None
        assert (got.status, got.last_error, got.note, got.updated_at, got.next_attempt_at) == (
            DeliveryStatus.RETRY_SCHEDULED,
            "timed out",
            None,
            later,
            later,
        )
        assert not await backend.set_delivery_status("dlv_nope", DeliveryStatus.DEAD, now=NOW)

    async def test_settled_since_finds_rows_changed_from_then_oldest_first(
        self, backend: Store
    ) -> None:
        rows = deliveries(4)
        await backend.record_deliveries(rows, "rules", 4, NOW)
        for row, minutes, status in (
            (rows[0], 2, DeliveryStatus.DEAD),
            (rows[1], 1, DeliveryStatus.UNCERTAIN),
            (rows[2], -1, DeliveryStatus.DEAD),
            (rows[3], 3, DeliveryStatus.SUCCEEDED),
        ):
            await backend.set_delivery_status(row.id, status, now=NOW + timedelta(minutes=minutes))
        wanted = [DeliveryStatus.DEAD, DeliveryStatus.UNCERTAIN]
        found = await backend.settled_since(wanted, NOW)
        assert [d.id for d in found] == [rows[1].id, rows[0].id]
        assert [d.id for d in await backend.settled_since(wanted, NOW, limit=1)] == [rows[1].id]


class EndpointsContract:
    async def test_endpoints_are_disabled_with_a_reason_and_enabled_again(
        self, backend: Store
    ) -> None:
        assert await backend.disabled_endpoints() == {}
        await backend.disable_endpoint("ops", "410 Gone", NOW)
        await backend.disable_endpoint("ops", "410 Gone again", NOW)
        await backend.disable_endpoint("crm", "410", NOW)
        assert await backend.disabled_endpoints() == {"ops": "410 Gone again", "crm": "410"}
        await backend.enable_endpoint("ops")
        await backend.enable_endpoint("never-disabled")
        assert await backend.disabled_endpoints() == {"crm": "410"}
