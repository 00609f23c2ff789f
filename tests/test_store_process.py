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

from billnotify.errors import StoreError
from billnotify.events import build_event
from billnotify.store import ProcessStore, SqliteStore, Store

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
    assert store._channel.pid is not None
    return store._channel.pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie has ended
        return stat.read().split(") ")[1][0] != "Z"


def test_every_store_method_is_written_out_and_runs_in_the_child() -> None:
    wanted = {
        name
        for name, _ in inspect.getmembers(Store, inspect.iscoroutinefunction)
        if not name.startswith("_")
    }
    assert wanted <= set(vars(ProcessStore)), "a Store method ProcessStore does not write out"
    assert not issubclass(ProcessStore, SqliteStore)  # every call goes to the child


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
            print(store._channel.pid, flush=True)
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


def test_the_child_loads_no_event_model_config_or_web_stack() -> None:
    # its memory is in the service's peak RSS: pydantic alone is some 10 MiB of it
    code = (
        "import sys, billnotify.store.child\n"
        "heavy = ('pydantic', 'jinja2', 'aiohttp', 'billnotify.events', 'billnotify.config.models')\n"
        "print(sorted(name for name in heavy if name in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
