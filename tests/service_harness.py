"""The service run in the test's event loop, for end-to-end tests driven by a config.

``started_service(config)`` runs :class:`~billnotify.app.Service` until the block ends
and yields it once it has started. ``running_service(raw, tmp_path)`` parses a config
dict first (as ``billnotify run`` would read it from TOML) and yields the service once
every poller has polled at least once (the baseline; with ``polled=False`` once it has
started, for an instance that stands by). ``until(condition)`` waits on a condition,
plain or async, with a deadline; ``events_on(sub, head)`` decodes the CloudEvents a
subscriber received under a topic prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from billnotify.app import Service
from billnotify.config import Config, parse_config
from conftest import Subscriber


async def until(
    condition: Callable[[], Awaitable[Any] | Any], what: str, timeout: float = 15.0
) -> Any:
    """``condition()``'s first truthy value (awaited if it is awaitable); fails after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout}s: {what} (last: {value!r})")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def started_service(config: Config, *, polled: bool = False) -> AsyncIterator[Service]:
    """A :class:`Service` of ``config`` in this loop until the block ends, yielded once it
    has started (and, with ``polled``, once every poller has polled); a start-up error is
    raised here."""
    service = Service(config)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop), name="service")
    started = asyncio.create_task(service.started.wait())
    done, _ = await asyncio.wait({task, started}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        started.cancel()
        task.result()
    assert started in done, "the service did not start within 15 s"
    try:

        def polled_once() -> bool:
            if task.done():
                task.result()  # a failure after start-up, raised here
            return all(p.polls > 0 for p in service.pollers)

        if polled:
            await until(polled_once, "the first poll (the baseline)")
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def running_service(
    raw: dict[str, Any], tmp_path: Path, *, polled: bool = True
) -> contextlib.AbstractAsyncContextManager[Service]:
    """:func:`started_service` of a config dict read as from ``tmp_path/config.toml``;
    polled once at least unless ``polled`` is false."""
    (tmp_path / "templates").mkdir(exist_ok=True)
    return started_service(parse_config(raw, base_dir=tmp_path), polled=polled)


async def polls_after(service: Service, rounds: int) -> None:
    """Wait until every poller has polled ``rounds`` more times."""
    start = [p.polls for p in service.pollers]
    await until(
        lambda: all(p.polls >= n + rounds for p, n in zip(service.pollers, start, strict=True)),
        f"{rounds} more polls",
    )


def events_on(sub: Subscriber, head: str) -> list[tuple[str, dict[str, Any]]]:
    """(topic, CloudEvent) of every message received under the topic prefix ``head``."""
    found = []
    for message in sub.messages:
        if message.topic.value.startswith(head):
            assert isinstance(message.payload, bytes | bytearray)
            found.append((message.topic.value, json.loads(message.payload)))
    return found
