"""The service run in the test's event loop, for end-to-end tests driven by a config.

``running_service(raw, tmp_path)`` parses a config dict (as ``billnotify run`` would read
it from TOML), runs :class:`~billnotify.app.Service` until the block ends and yields it
once every poller has polled at least once (the baseline). ``until(condition)`` waits on
an async condition with a deadline; ``events_on(sub, head)`` decodes the CloudEvents a
subscriber received under a topic prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from billnotify.app import Service
from billnotify.config import parse_config
from conftest import Subscriber


async def until(condition: Callable[[], Awaitable[Any]], what: str, timeout: float = 15.0) -> Any:
    """``condition()``'s first truthy value; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout}s: {what} (last: {value!r})")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running_service(raw: dict[str, Any], tmp_path: Path) -> AsyncIterator[Service]:
    """A :class:`Service` in this loop until the block ends; polled once at least."""
    (tmp_path / "templates").mkdir(exist_ok=True)
    service = Service(parse_config(raw, base_dir=tmp_path))
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop), name="service")
    started = asyncio.create_task(service.started.wait())
    done, _ = await asyncio.wait({task, started}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        started.cancel()
        task.result()
    assert started in done, "the service did not start within 15 s"
    try:

        async def polled() -> bool:
            return all(p.polls > 0 for p in service.pollers)

        await until(polled, "the first poll (the baseline)")
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def polls_after(service: Service, rounds: int) -> None:
    """Wait until every poller has polled ``rounds`` more times."""
    start = [p.polls for p in service.pollers]

    async def done() -> bool:
        return all(p.polls >= n + rounds for p, n in zip(service.pollers, start, strict=True))

    await until(done, f"{rounds} more polls")


def events_on(sub: Subscriber, head: str) -> list[tuple[str, dict[str, Any]]]:
    """(topic, CloudEvent) of every message received under the topic prefix ``head``."""
    found = []
    for message in sub.messages:
        if message.topic.value.startswith(head):
            assert isinstance(message.payload, bytes | bytearray)
            found.append((message.topic.value, json.loads(message.payload)))
    return found
