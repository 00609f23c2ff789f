"""The deleted-records reconcile with two instances on one PostgreSQL database: it runs
under the resource's ``poll:`` lease, so only the process that polls the resource lists
every id, and the other takes it over when the holder stops (SPEC §7.1, §7.5).

Real parts: a private PostgreSQL server (``tests/pg.py``), two services in this loop on
one database, the simulator over HTTP.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest

import pg
from billnotify.app import Service
from billnotify.simulator import Simulator
from billnotify.sources.reconcile_ids import IdReconciler
from servers import sim_source
from service_harness import running_service, until

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(pg.available() is not None, reason=str(pg.available())),
]


def instance(
    raw: dict[str, Any], name: str, tmp_path: Path
) -> contextlib.AbstractAsyncContextManager[Service]:
    """Instance ``name`` of the config in this loop, started (it may stand by, never polling)."""
    raw = {**raw, "service": {**raw["service"], "instance": name}}
    return running_service(raw, tmp_path, polled=False)


def _rounds(service: Service) -> int:
    (poller,) = service.pollers
    assert isinstance(poller.reconciler, IdReconciler)
    return poller.reconciler.rounds


async def test_only_the_poll_lease_holder_reconciles_and_the_other_takes_over(
    tmp_path: Path, sim: Simulator
) -> None:
    for _ in range(6):
        sim.state.add_billing_task(status="Pending")
    raw = {
        "service": {"name": "pair", "state": pg.shared().database(), "lease_ttl": "3s", "http": ""},
        "mqtt": {"enabled": False},
        "sources": [
            sim_source(
                sim,
                poll_interval="300ms",
                reconcile_interval="1s",
                watch=["billing_tasks"],
                timeout="2s",
            )
        ],
    }
    async with contextlib.AsyncExitStack() as outer:
        stop_a = contextlib.AsyncExitStack()
        a = await stop_a.enter_async_context(instance(raw, "a", tmp_path))
        try:
            await until(lambda: _rounds(a) >= 1, "a's first reconcile")
            b = await outer.enter_async_context(instance(raw, "b", tmp_path))
            started = _rounds(a)
            await until(lambda: _rounds(a) >= started + 3, "three more rounds by a")
            assert _rounds(b) == 0  # standing by: it never listed
            assert b.pollers[0].polls == 0
            sim.state.delete_record("billing_tasks", "1003")

            async def deleted() -> list[Any]:
                return await a.store.list_events(type_glob="*.deleted")

            (event,) = await until(deleted, "the deletion")
            assert event.event.subject == "billing_tasks/1003"
        finally:
            await stop_a.aclose()  # a clean stop releases a's leases: b takes them over
        await until(lambda: _rounds(b) >= 1, "b reconciles once a is gone")
        sim.state.restore_record("billing_tasks", "1003")

        async def restored() -> list[Any]:
            return await b.store.list_events(type_glob="*.restored")

        await until(restored, "the return, found by b")
        assert len(await b.store.list_events(type_glob="*.deleted")) == 1
