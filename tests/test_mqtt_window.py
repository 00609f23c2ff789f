"""InflightWindow: concurrency limit, contiguous acknowledgements, failures, stalls."""

from __future__ import annotations

import asyncio

import pytest

from billnotify.publish.window import InflightWindow, WindowStalled


class Gate:
    """Publishes that finish when the test says so."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.events: dict[int, asyncio.Event] = {}
        self.errors: dict[int, Exception] = {}

    def publish(self, n: int):  # type: ignore[no-untyped-def]
        async def run() -> None:
            self.started.append(n)
            await self.events.setdefault(n, asyncio.Event()).wait()
            if n in self.errors:
                raise self.errors[n]

        return run

    def release(self, *ns: int) -> None:
        for n in ns:
            self.events.setdefault(n, asyncio.Event()).set()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_limits_concurrency_and_acks_contiguously() -> None:
    gate = Gate()
    acks = []
    window = InflightWindow(2, acked=10, on_ack=lambda: acks.append(1))
    await window.submit(11, gate.publish(11))
    await window.submit(12, gate.publish(12))
    third = asyncio.create_task(window.submit(13, gate.publish(13)))
    await settle()
    assert gate.started == [11, 12]  # the window is full: 13 waits for a slot
    gate.release(12)
    await third
    await settle()
    assert gate.started == [11, 12, 13]
    assert window.advance() == 10  # 12 is acknowledged, but 11 is not yet
    gate.release(11, 13)
    assert await window.drain() == 13
    assert len(acks) == 3
    assert len(window) == 0


async def test_unordered_publishes_do_not_move_the_position() -> None:
    gate = Gate()
    window = InflightWindow(4)
    await window.submit(1, gate.publish(1))
    state = await window.submit(None, gate.publish(100))
    gate.release(1, 100)
    await window.wait([state])
    assert await window.drain() == 1


async def test_failure_is_raised_and_settle_keeps_what_was_acked() -> None:
    gate = Gate()
    window = InflightWindow(4)
    gate.errors[2] = ConnectionError("gone")
    for n in (1, 2, 3):
        await window.submit(n, gate.publish(n))
    gate.release(1, 2, 3)
    with pytest.raises(ConnectionError):
        await window.drain()
    with pytest.raises(ConnectionError):
        await window.submit(4, gate.publish(4))
    assert window.settle() == 1
    await window.close()


async def test_stall_is_detected() -> None:
    gate = Gate()
    window = InflightWindow(1, stall_timeout=0.05)
    await window.submit(1, gate.publish(1))
    with pytest.raises(WindowStalled):
        await window.submit(2, gate.publish(2))
    with pytest.raises(WindowStalled):
        await window.drain()
    await window.close()
    assert gate.started == [1]


async def test_a_full_window_takes_more_once_a_quarter_is_free() -> None:
    """Woken once per quarter of the window, not per acknowledgement; never over size."""
    gate = Gate()
    window = InflightWindow(8)
    for n in range(8):
        await window.submit(n, gate.publish(n))
    more = asyncio.create_task(window.submit(8, gate.publish(8)))
    gate.release(0)
    await settle()
    assert not more.done()  # one free slot of eight: not yet
    gate.release(1)
    await settle()
    assert more.done() and gate.started[-1] == 8  # a quarter free: it goes
    await window.submit(9, gate.publish(9))
    gate.release(*range(2, 10))
    assert await window.drain() == 9


async def test_acknowledgements_that_keep_coming_are_no_stall() -> None:
    """A slow broker (one acknowledgement at a time, each within the stall timeout) does
    not stall a full window that waits for a quarter of it to be free."""
    gate = Gate()
    window = InflightWindow(8, stall_timeout=0.1)
    for n in range(8):
        await window.submit(n, gate.publish(n))

    async def slowly() -> None:
        for n in range(8):
            await asyncio.sleep(0.08)
            gate.release(n)

    releasing = asyncio.create_task(slowly())
    await window.submit(8, gate.publish(8))  # waits 0.16 s for two; never 0.1 s without one
    await releasing
    gate.release(8)
    assert await window.drain() == 8
