"""Deleted and restored records, unit by unit: the id diff and the events it makes (pure),
then one :class:`IdReconciler` round at a time against the simulator over HTTP and a
SQLite store: a deletion, a return, a listing that fails half way, a record written
while the listing ran, an empty listing, and the same deletion found twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from billnotify.clients.billing_platform import BillingPlatformClient
from billnotify.clients.property_billing import PropertyBillingClient
from billnotify.config.models import BillingPlatformSource, PropertyBillingSource
from billnotify.errors import SourceError
from billnotify.simulator import Simulator
from billnotify.sources import PropertyBillingSync, build_billing_syncs
from billnotify.sources.base import diff_page
from billnotify.sources.deletions import DELETED, Known, deletions, diff_ids
from billnotify.sources.detect import Policy
from billnotify.sources.reconcile_ids import IdReconciler, build_id_reconciler
from billnotify.store import SqliteStore
from billnotify.store.records import Snapshot
from servers import sim_source

NOW = datetime(2026, 12, 3, 4, 0, tzinfo=UTC)


async def _no_sleep(_: float) -> None:
    return None


# -- pure ----------------------------------------------------------------------------------


def test_diff_ids_finds_the_gone_and_the_returned() -> None:
    known = {
        "1": Known(False, 1),
        "2": Known(False, 3),
        "10": Known(True, 2),
        "11": Known(True, 2),
    }
    found = diff_ids(known, {"1", "11", "99"})
    assert found.gone == ["2"]
    assert found.back == ["11"]  # 10 stays deleted; 99 is the poll's business


def test_diff_ids_of_an_unchanged_platform_is_empty() -> None:
    known = {str(i): Known(False, 1) for i in range(1, 6)}
    found = diff_ids(known, set(known))
    assert (found.gone, found.back) == ([], [])


def test_a_deletion_keeps_the_last_record_and_drops_what_is_due() -> None:
    record = {"id": "7", "status": "Running", "startedTime": "2026-12-03 01:00:00"}
    snap = Snapshot("acme", "billing_task", "7", record, frozenset({"x"}), NOW, 4)
    writes, events = deletions("acme", "billing_task", [snap], now=NOW)
    assert writes[0].marks == {"x", DELETED} and writes[0].due_at is None
    assert writes[0].record == record
    (event,) = events
    assert event.type == "billing_task.deleted" and event.subject == "billing_tasks/7"
    assert event.data == {"object": record}
    again = deletions("acme", "billing_task", [snap], now=NOW + timedelta(hours=1))[1][0]
    assert again.id == event.id  # deterministic: the same deletion found twice


def test_diff_page_turns_a_deleted_snapshot_that_is_listed_into_restored() -> None:
    old = {"id": "7", "status": "Pending"}
    snap = Snapshot("acme", "billing_task", "7", old, frozenset({DELETED}), None, 2)
    same = diff_page(
        "acme", "billing_task", [old], {"7": snap}, now=NOW, policy=Policy(), baseline=False
    )
    assert [e.type for e in same.events] == ["billing_task.restored"]
    assert same.events[0].data["object"] == old
    assert same.writes[0].marks == frozenset()
    new = {"id": "7", "status": "Failed"}
    changed = diff_page(
        "acme", "billing_task", [new], {"7": snap}, now=NOW, policy=Policy(), baseline=False
    )
    assert [e.type for e in changed.events] == [
        "billing_task.restored",
        "billing_task.status_changed",
    ]


# -- one round at a time against the simulator ---------------------------------------------


@pytest.fixture
def sim_options() -> dict[str, Any]:
    return {"page_max": 3}  # several pages for a handful of records


class Rig:
    def __init__(self, sim: Simulator, store: SqliteStore, **extra: Any) -> None:
        self.sim = sim
        self.config = BillingPlatformSource.model_validate(
            sim_source(
                sim, watch=["billing_tasks"], max_attempts=2, reconcile_interval="1s", **extra
            )
        )
        self.client = BillingPlatformClient(
            self.config.base_url,
            self.config.api_key,
            sleep=_no_sleep,
            page_size=500,
            max_attempts=self.config.max_attempts,
        )
        self.store = store
        (self.sync,) = build_billing_syncs(self.config, self.client, store)
        reconciler = build_id_reconciler(self.sync, self.config, clock=lambda: NOW)
        assert reconciler is not None
        self.reconciler: IdReconciler = reconciler

    async def types(self) -> list[str]:
        return [e.event.type for e in await self.store.read_events(0, 100_000)]


@pytest.fixture
async def rig(sim: Simulator, store: SqliteStore) -> AsyncIterator[Rig]:
    for _ in range(8):
        sim.state.add_billing_task(status="Pending")
    rig = Rig(sim, store)
    await rig.sync.poll_once()  # the baseline
    yield rig
    await rig.client.close()


async def test_a_vanished_record_is_deleted_once_and_comes_back_restored(rig: Rig) -> None:
    stats = await rig.reconciler.reconcile_once()
    assert (stats.known, stats.listed, stats.deleted) == (8, 8, 0)
    assert stats.requests == 4  # 3 + 3 + 2 records, then the empty page
    assert await rig.types() == []

    last = rig.sim.state.update_billing_task("1003", status="Running")
    await rig.sync.poll_once()
    rig.sim.state.delete_record("billing_tasks", "1003")
    stats = await rig.reconciler.reconcile_once()
    assert (stats.deleted, stats.restored, stats.events) == (1, 0, 1)
    events = await rig.store.read_events(0, 100)
    deleted = events[-1].event
    assert deleted.type == "billing_task.deleted" and deleted.data["object"] == last
    snap = (await rig.store.get_snapshots("acme", "billing_task", ["1003"]))["1003"]
    assert DELETED in snap.marks and snap.due_at is None

    stats = await rig.reconciler.reconcile_once()  # still gone: nothing new
    assert (stats.deleted, stats.events) == (0, 0)

    rig.sim.state.restore_record("billing_tasks", "1003")
    stats = await rig.reconciler.reconcile_once()
    assert (stats.restored, stats.events) == (1, 1)
    restored = (await rig.store.read_events(0, 100))[-1].event
    assert restored.type == "billing_task.restored" and restored.data["object"] == last
    snap = (await rig.store.get_snapshots("acme", "billing_task", ["1003"]))["1003"]
    assert DELETED not in snap.marks

    # deleted again, as it was: a new occurrence, under a new id
    rig.sim.state.delete_record("billing_tasks", "1003")
    await rig.reconciler.reconcile_once()
    again = (await rig.store.read_events(0, 100))[-1].event
    assert again.type == "billing_task.deleted" and again.id != deleted.id
    assert (await rig.types()).count("billing_task.deleted") == 2


async def test_an_incremental_poll_that_sees_a_deleted_record_restores_it(rig: Rig) -> None:
    rig.sim.state.delete_record("billing_tasks", "1005")
    await rig.reconciler.reconcile_once()
    rig.sim.state.restore_record("billing_tasks", "1005", touch=True)
    await rig.sync.poll_once()  # updatedSince brings it back before any reconcile
    assert await rig.types() == ["billing_task.deleted", "billing_task.restored"]
    stats = await rig.reconciler.reconcile_once()
    assert (stats.restored, stats.events) == (0, 0)


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "malformed", "count": 1, "after": 1},
        {"kind": "500", "count": 2, "after": 2},  # both tries of the third page
        {"kind": "reset", "count": 4, "after": 1},
    ],
)
async def test_a_listing_that_fails_half_way_marks_nothing(rig: Rig, fault: dict[str, Any]) -> None:
    rig.sim.state.delete_record("billing_tasks", "1002")
    rig.sim.faults.add(path_prefix="/backend/api/v1/billingTasks", **fault)
    with pytest.raises(SourceError):
        await rig.reconciler.reconcile_once()
    assert rig.sim.faults.snapshot() == []  # the fault fired, in the middle
    assert await rig.types() == []
    assert await rig.store.get_cursor("acme", "reconcile:billing_tasks") is None
    stats = await rig.reconciler.reconcile_once()
    assert stats.deleted == 1
    assert await rig.types() == ["billing_task.deleted"]


async def test_a_record_written_while_the_listing_ran_is_not_deleted(
    rig: Rig, store: SqliteStore
) -> None:
    """A snapshot whose version moved during the listing is left for the next round."""
    rig.sim.state.delete_record("billing_tasks", "1004")
    real_pages = rig.reconciler.listing.pages

    async def pages_with_a_poll_between() -> AsyncIterator[list[dict[str, Any]]]:
        first = True
        async for page in real_pages():
            yield page
            if first:
                first = False
                snap = (await store.get_snapshots("acme", "billing_task", ["1004"]))["1004"]
                await store.commit(
                    "acme", [_rewrite(snap, note="touched")], []
                )  # as a poll would have

    rig.reconciler.listing.pages = pages_with_a_poll_between  # type: ignore[method-assign]
    stats = await rig.reconciler.reconcile_once()
    assert stats.deleted == 0 and await rig.types() == []
    rig.reconciler.listing.pages = real_pages  # type: ignore[method-assign]
    assert (await rig.reconciler.reconcile_once()).deleted == 1


def _rewrite(snap: Snapshot, **fields: Any) -> Any:
    from billnotify.store.records import SnapshotWrite

    return SnapshotWrite(snap.entity, snap.id, {**snap.record, **fields}, snap.marks, snap.due_at)


async def test_an_empty_listing_is_not_believed(rig: Rig) -> None:
    for rid in list(rig.sim.state.billing_tasks):
        rig.sim.state.delete_record("billing_tasks", rid)
    stats = await rig.reconciler.reconcile_once()
    assert stats.skipped and stats.deleted == 0
    assert await rig.types() == []


async def test_before_the_baseline_nothing_is_listed(sim: Simulator, store: SqliteStore) -> None:
    rig = Rig(sim, store)
    try:
        stats = await rig.reconciler.reconcile_once()
        assert stats.skipped == "no baseline yet" and stats.requests == 0
    finally:
        await rig.client.close()


async def test_run_waits_one_interval_after_the_baseline_then_keeps_time(rig: Rig) -> None:
    """The first sight records the start; the next round is due one interval later."""
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) >= 2:
            raise asyncio.CancelledError

    rig.reconciler._sleep = sleep
    with pytest.raises(asyncio.CancelledError):
        await rig.reconciler.run()
    assert slept[0] == 1.0  # reconcile_interval, from the first sight
    assert await rig.store.get_cursor("acme", "reconcile:billing_tasks") == "2026-12-03T04:00:00Z"


def test_reconcile_interval_0s_builds_no_reconciler(sim: Simulator) -> None:
    config = BillingPlatformSource.model_validate(sim_source(sim, reconcile_interval="0s"))
    client = BillingPlatformClient(config.base_url, config.api_key)
    (sync, *_) = build_billing_syncs(config, client, None)  # type: ignore[arg-type]
    assert build_id_reconciler(sync, config) is None


async def test_property_headers_of_one_property_are_reconciled(
    sim: Simulator, store: SqliteStore
) -> None:
    """Each property has its own reconcile: one ``BillingHeaders/<uuid>`` request, and
    only its own headers can be taken for deleted."""
    mine, other = "2eff1042c50c1eda889e61573e3c194c", "7c1d2a9e4b5f4e0d8a3b6c9d0e1f2a3b"
    gone = sim.state.add_billing_header(mine)
    sim.state.add_billing_header(mine)
    sim.state.add_billing_header(other)
    config = PropertyBillingSource.model_validate(
        {
            "name": "metering",
            "kind": "property_billing",
            "base_url": sim.property_base_url,
            "auth_url": sim.auth_url,
            "username": "sim",
            "password": "sim-password",
            "administrator_ids": ["1234"],
            "properties": [mine, other],
            "enrich": False,
            "reconcile_interval": "1s",
        }
    )
    client = PropertyBillingClient(
        config.base_url,
        config.auth_url,
        config.username,
        config.password,
        config.administrator_ids,
        sleep=_no_sleep,
    )
    try:
        syncs = [PropertyBillingSync(config, p, client, store) for p in config.properties]
        for sync in syncs:
            await sync.poll_once()
        reconcilers = [build_id_reconciler(s, config, clock=lambda: NOW) for s in syncs]
        assert all(reconcilers)
        sim.state.delete_record("billing_headers", gone["id"])
        other_stats = await reconcilers[1].reconcile_once()  # type: ignore[union-attr]
        assert (other_stats.known, other_stats.requests, other_stats.deleted) == (1, 1, 0)
        stats = await reconcilers[0].reconcile_once()  # type: ignore[union-attr]
        assert (stats.known, stats.listed, stats.requests, stats.deleted) == (2, 1, 1, 1)
        (event,) = [s.event for s in await store.read_events(0)]
        assert event.type == "billing_header.deleted"
        assert event.subject == f"billing_headers/{gone['id']}"
        assert event.data["object"] == gone
        sim.state.restore_record("billing_headers", gone["id"])
        assert (await reconcilers[0].reconcile_once()).restored == 1  # type: ignore[union-attr]
        types = [s.event.type for s in await store.read_events(0)]
        assert types == ["billing_header.deleted", "billing_header.restored"]
    finally:
        await client.close()


async def test_unsent_invoices_known_from_include_unsent_are_not_deleted_when_it_is_off(
    sim: Simulator, store: SqliteStore
) -> None:
    raised = sim.state.add_invoice(customerID="1")
    unsent = sim.state.add_invoice(customerID="2", invoiceNumber="", status=["Unsent"])
    on = Rig(sim, store, include_unsent=True)
    on.config = on.config.model_copy(update={"watch": ["invoices"]})
    (on.sync,) = build_billing_syncs(on.config, on.client, store)
    await on.sync.poll_once()
    known = await store.get_snapshots("acme", "invoice", [raised["id"], unsent["id"]])
    assert len(known) == 2
    off = BillingPlatformSource.model_validate(
        sim_source(sim, watch=["invoices"], reconcile_interval="1s")
    )
    (sync,) = build_billing_syncs(off, on.client, store)
    reconciler = build_id_reconciler(sync, off, clock=lambda: NOW)
    assert reconciler is not None
    stats = await reconciler.reconcile_once()
    assert (stats.known, stats.listed, stats.deleted) == (1, 1, 0)
    sim.state.delete_record("invoices", raised["id"])
    sim.state.add_invoice(customerID="3")  # keeps the listing from being empty
    assert (await reconciler.reconcile_once()).deleted == 1
    await on.client.close()


@pytest.mark.parametrize(
    ("value", "error"),
    [("500ms", 'must be "0s" (off) or at least "1s"'), ("soon", "not a duration")],
)
def test_a_bad_reconcile_interval_names_its_toml_path(value: str, error: str) -> None:
    from billnotify.config import parse_config
    from billnotify.errors import ConfigError

    raw = {
        "sources": [
            {
                "name": "acme",
                "kind": "billing_platform",
                "base_url": "https://acme.example.com/backend/api/v1",
                "api_key": "k",
                "reconcile_interval": value,
            }
        ]
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    assert "sources[0].reconcile_interval" in str(caught.value)
    assert error in str(caught.value)
