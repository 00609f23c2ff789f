"""ProcessStore: the SQLite store served by a child process, as the service runs it."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from billnotify.deliveries.base import DeliveryStatus, Outcome
from billnotify.errors import StoreError
from billnotify.events import build_event
from billnotify.store import NewDelivery, ProcessStore, SnapshotWrite, SqliteStore
from billnotify.store.process import REMOTE
from billnotify.store.records import AttemptEnd

NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


def _event(n: int):
    return build_event(
        source="acme",
        entity="billing_task",
        object_id=str(n),
        type_="billing_task.created",
        key="k",
        time=NOW,
        data={"object": {"id": str(n)}},
    )


@pytest.fixture
async def pstore(tmp_path: Path) -> AsyncIterator[ProcessStore]:
    store = ProcessStore(tmp_path / "state.db")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def _child_pid(store: ProcessStore) -> int:
    assert store._child is not None
    return store._child.pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie has ended
        return stat.read().split(") ")[1][0] != "Z"


async def test_the_ledger_round_trip_runs_in_the_child(pstore: ProcessStore) -> None:
    stored = await pstore.commit("acme", [], [_event(1), _event(2)], ("billing_tasks", "c1"))
    assert [s.seq for s in stored] == [1, 2]
    assert stored[0].event == _event(1)
    assert [e.id for e in await pstore.read_log(0)] == [_event(1).id, _event(2).id]
    assert await pstore.get_cursor("acme", "billing_tasks") == "c1"
    rows = [NewDelivery("r", 0, "webhook", s.event.id, s.seq, exactly_once=False) for s in stored]
    assert await pstore.record_deliveries(rows, "rules", 2, NOW) == 2
    due = await pstore.read_due(NOW)
    assert [d.id for d in due.deliveries] == [r.id for r in rows]
    assert due.deliveries[0].event == _event(1).to_json()
    numbers = await pstore.start_attempts([r.id for r in rows], NOW)
    await pstore.finish_attempts(
        [
            AttemptEnd(
                id_,
                number,
                finished_at=NOW,
                outcome=Outcome.SUCCESS,
                status=DeliveryStatus.SUCCEEDED,
                status_code=200,
            )
            for id_, number in numbers.items()
        ]
    )
    assert await pstore.count_deliveries() == {("webhook", "succeeded"): 2}
    delivery = await pstore.get_delivery(rows[0].id)
    assert delivery is not None and delivery.history[0].status_code == 200


async def test_a_commit_wakes_those_waiting_for_events(pstore: ProcessStore) -> None:
    async def wait() -> None:
        async with pstore.appended:
            await pstore.appended.wait()

    waiter = asyncio.create_task(wait())
    await asyncio.sleep(0.05)
    await pstore.commit("acme", [], [_event(1)])
    await asyncio.wait_for(waiter, 5)


async def test_calls_run_in_the_order_they_are_made(pstore: ProcessStore) -> None:
    calls = []
    for seq in range(1, 51):
        calls.append(pstore.set_position("rules", seq))
        calls.append(pstore.get_position("rules"))
    results = await asyncio.gather(*calls)
    assert results[1::2] == list(range(1, 51))


def test_every_method_that_writes_runs_whole_in_the_child() -> None:
    for name, method in inspect.getmembers(SqliteStore, inspect.iscoroutinefunction):
        source = inspect.getsource(method)
        if name.startswith("_") or name in ("open", "close"):
            continue
        if "self._write(" in source or "self._call(" in source:
            assert name in REMOTE, f"{name} writes (or reads by a closure): add it to REMOTE"
        else:
            assert name not in REMOTE or name == "ping", name


async def test_snapshots_and_events_cross_as_rows(pstore: ProcessStore) -> None:
    writes = [SnapshotWrite("billing_task", "1", {"id": "1", "status": "Failed"}, {"stall"})]
    first = await pstore.commit("acme", writes, [_event(1)])
    again = await pstore.commit("acme", writes, [_event(1)])  # the same transition again
    assert [s.event.id for s in first + again] == [_event(1).id, _event(1).id + "_2"]
    logged = await pstore.read_events(0)
    assert [e.event.id for e in logged] == [_event(1).id, _event(1).id + "_2"]
    assert logged[1].event.to_json() == again[0].event.to_json()
    snapshot = (await pstore.get_snapshots("acme", "billing_task", ["1"]))["1"]
    assert snapshot.record == {"id": "1", "status": "Failed"}
    assert snapshot.marks == {"stall"} and snapshot.version == 2


async def test_errors_come_back_as_store_errors(pstore: ProcessStore) -> None:
    with pytest.raises(StoreError, match="unknown delivery dlv_nope"):
        await pstore.start_attempt("dlv_nope", NOW)
    assert await pstore.last_seq() == 0  # and the store goes on


async def test_close_lets_every_call_made_finish(tmp_path: Path) -> None:
    store = ProcessStore(tmp_path / "state.db")
    await store.open()
    commits = [asyncio.ensure_future(store.commit("acme", [], [_event(n)])) for n in range(1, 41)]
    await asyncio.sleep(0)
    await store.close()
    assert all(len(c.result()) == 1 for c in commits)
    again = ProcessStore(tmp_path / "state.db")
    await again.open()
    try:
        assert await again.last_seq() == 40
    finally:
        await again.close()


async def test_a_child_that_dies_fails_calls_with_a_clear_error(pstore: ProcessStore) -> None:
    os.kill(_child_pid(pstore), signal.SIGKILL)
    with pytest.raises(StoreError, match="store process ended"):
        for _ in range(100):  # until the parent has seen the end
            await pstore.last_seq()
            await asyncio.sleep(0.02)


async def test_the_child_leaves_sigterm_to_the_service(pstore: ProcessStore) -> None:
    os.kill(_child_pid(pstore), signal.SIGTERM)
    os.kill(_child_pid(pstore), signal.SIGINT)
    await asyncio.sleep(0.2)
    assert await pstore.commit("acme", [], [_event(1)])


async def test_a_file_is_required(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="needs a file"):
        await ProcessStore(":memory:").open()


async def test_a_store_that_cannot_open_says_why(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="cannot open state store"):
        await ProcessStore(blocker / "state.db").open()


def test_the_child_ends_when_the_service_is_killed(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from billnotify.store import ProcessStore

        async def main():
            store = ProcessStore({str(tmp_path / "state.db")!r})
            await store.open()
            print(store._child.pid, flush=True)
            await asyncio.sleep(60)

        asyncio.run(main())
        """
    )
    service = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert service.stdout is not None
        child = int(service.stdout.readline())
        assert _alive(child)
        service.kill()
        service.wait(10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the store process outlived the service"
    finally:
        service.kill()
        service.wait(10)
        if service.stdout is not None:
            service.stdout.close()
