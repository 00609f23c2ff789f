"""``billnotify state copy --to URL`` (SPEC §7.1): a SQLite state moves into PostgreSQL
whole, so the service started on the copy takes no new baseline and sends nothing
again. Real parts: the simulator over HTTP, a webhook receiver, the service in this
loop, the CLI as a subprocess, and a private PostgreSQL server (``tests/pg.py``)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import pg
from billnotify.app import Service
from billnotify.config import load_config
from billnotify.simulator import Simulator
from billnotify.store import SqliteStore
from billnotify.store.base import EventLog
from billnotify.store.postgres import PgStore
from servers import PYTHON, WebhookReceiver, sim_source, toml_config, wait_for

SECRET = "whsec_" + base64.b64encode(b"state-copy-test-signing-key-0123").decode()


@pytest.fixture
def pg_url() -> str:
    reason = pg.available()
    if reason:
        pytest.skip(reason)
    return pg.shared().database()


def _raw(sim: Simulator, receiver: WebhookReceiver, state: str) -> dict[str, Any]:
    return {
        "service": {"name": "copytest", "state": state, "http": "", "shutdown_grace": "2s"},
        "mqtt": {"enabled": False},
        "sources": [sim_source(sim, poll_interval="200ms", watch=["billing_tasks"])],
        "webhooks": [
            {
                "name": "ops",
                "url": receiver.url("/ok"),
                "secret": SECRET,
                "allow_private": True,
                "retry_schedule": ["0s", "1s"],
            }
        ],
        "rules": [
            {
                "name": "alert",
                "on": ["billing_task.status_changed"],
                "actions": [{"type": "webhook", "endpoint": "ops"}],
            }
        ],
    }


@contextlib.asynccontextmanager
async def _running(config_file: Path) -> AsyncIterator[Service]:
    service = Service(load_config(config_file))
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await wait_for(lambda: service.started.is_set() or task.done(), timeout=15)
        if task.done():
            task.result()
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def _polled(service: Service, more: int) -> None:
    """Wait until every poller has polled ``more`` more times."""
    marks = {id(p): p.polls for p in service.pollers}
    await wait_for(lambda: all(p.polls >= marks[id(p)] + more for p in service.pollers), 15)


async def _copy(config_file: Path, url: str, *extra: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "billnotify",
        "state",
        "copy",
        "-c",
        str(config_file),
        "--to",
        url,
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def _settled(service: Service) -> None:
    """Wait until no delivery is left to attempt."""
    for _ in range(300):
        if (
            not await service.store.count_deliveries()
            or await service.store.oldest_pending_at() is None
        ):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("deliveries still pending")


async def _log(store: EventLog) -> list[tuple[int, str, str]]:
    return [(s.seq, s.event.id, s.event.to_json()) for s in await store.read_events(0, 10_000)]


async def test_the_service_on_a_copy_takes_no_baseline_and_sends_nothing_again(
    tmp_path: Path, receiver: WebhookReceiver, pg_url: str
) -> None:
    sim = Simulator(page_max=50)
    await sim.start()
    try:
        ids = [sim.state.add_billing_task(status="Pending")["id"] for _ in range(20)]
        config_file = tmp_path / "config.toml"
        config_file.write_text(toml_config(_raw(sim, receiver, "state.db")))
        async with _running(config_file) as service:
            await _polled(service, 2)  # the baseline: no events
            sim.state.update_billing_task(ids[0], status="Processing")
            await wait_for(lambda: len(receiver.hits) == 1, 15)
            await _settled(service)

        code, first = await _copy(config_file, pg_url)
        assert code == 0, first
        for count in ("1 events", "20 snapshots", "1 cursors", "1 deliveries", "1 attempts"):
            assert count in first, first
        async with SqliteStore(tmp_path / "state.db") as sqlite, PgStore(pg_url) as copy:
            source_log = await _log(sqlite)
            assert await _log(copy) == source_log and len(source_log) == 1
            assert await copy.get_cursor("acme", "billing_tasks") == await sqlite.get_cursor(
                "acme", "billing_tasks"
            )
            [delivery] = await sqlite.list_deliveries(None)
            with_attempts = await sqlite.get_delivery(delivery.id)
            assert with_attempts is not None and len(with_attempts.history) == 1
            assert await copy.get_delivery(delivery.id) == with_attempts
            assert await copy.get_position("rules") == await sqlite.get_position("rules") == 1

        # a target that holds state is refused; --force replaces it with the same copy
        code, out = await _copy(config_file, pg_url)
        assert code == 1 and "already holds state" in out and "--force" in out, out
        code, again = await _copy(config_file, pg_url, "--force")
        assert code == 0 and again == first, again

        config_file.write_text(toml_config(_raw(sim, receiver, pg_url)))
        async with _running(config_file) as service:
            await _polled(service, 3)
            assert await service.store.last_seq() == 1, "a new baseline logged events"
            assert len(receiver.hits) == 1, "a delivery was sent again"
            sim.state.update_billing_task(ids[1], status="Processing")
            await wait_for(lambda: len(receiver.hits) == 2, 15)
            assert await service.store.last_seq() == 2
    finally:
        await sim.stop()
