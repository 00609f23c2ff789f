"""What a rate limit's turn costs behind a deep queue (SPEC §7.2).

A fresh :class:`SqliteStore` (and the in-memory store, and a :class:`PgStore` on a
private PostgreSQL server where its binaries are found) gets ``N`` deliveries queued
behind one ``5/s`` limit (each asks for a turn at the same instant and is given one in
the future), then the clock moves to the first reserved turn and ``SAMPLE`` deliveries
take their turns as they come, in order, plus ``SAMPLE`` new ones join the queue. The
figures are the mean wall time per turn at each depth: flat when a turn reads only the
rows it needs, growing with ``N`` when it reads the whole queue.

Run: ``python -m bench turns`` (or ``python bench/bench_turns.py`` for the table alone).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import BenchResult, _postgres
from billnotify.store import MemoryStore, SqliteStore
from billnotify.store.base import Store

DEPTHS = (100, 1_000, 5_000)
SAMPLE = 200
LIMIT, PERIOD = 5, timedelta(seconds=1)
KEY = "webhook:ops"
NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


async def _measure(store: Store, depth: int) -> tuple[float, float, float]:
    """Seconds to queue ``depth``; per new turn at that depth; per due turn taken."""
    started = time.perf_counter()
    turns: list[tuple[datetime, str]] = []
    for n in range(depth):
        turn = await store.take_turn(KEY, f"q{n}", NOW, LIMIT, PERIOD)
        if turn is not None:
            turns.append((turn, f"q{n}"))
    queued = time.perf_counter() - started
    started = time.perf_counter()
    for n in range(SAMPLE):
        await store.take_turn(KEY, f"new{n}", NOW, LIMIT, PERIOD)
    joined = (time.perf_counter() - started) / SAMPLE
    turns.sort()
    started = time.perf_counter()
    for at, holder in turns[:SAMPLE]:
        assert await store.take_turn(KEY, holder, at, LIMIT, PERIOD) is None
    went = (time.perf_counter() - started) / min(SAMPLE, len(turns))
    return queued, joined, went


async def run() -> list[BenchResult]:
    """One row per store and depth."""
    results: list[BenchResult] = []
    with contextlib.ExitStack() as stack:
        reason = _postgres.unavailable()
        if reason:
            print(f"  turns: the PostgreSQL rows are skipped: {reason}", file=sys.stderr)
        server = None if reason else stack.enter_context(_postgres.private())
        for depth in DEPTHS:
            results += await _depth(depth, server)
    return results


async def _depth(depth: int, server: Any | None) -> list[BenchResult]:
    results: list[BenchResult] = []
    with tempfile.TemporaryDirectory() as folder:
        async with SqliteStore(Path(folder) / "state.db") as sqlite:
            figures = {"sqlite": await _measure(sqlite, depth)}
    async with MemoryStore() as memory:
        figures["memory"] = await _measure(memory, depth)
    if server is not None:
        from billnotify.store.postgres import PgStore  # asyncpg only where it is used

        async with PgStore(server.database()) as pg:
            figures["postgres"] = await _measure(pg, depth)
    for name, (queued, joined, went) in figures.items():
        notes = f"{depth} queued at 5/s in {queued:.2f} s"
        results.append(
            BenchResult(f"turns.{name}.join_at_{depth}", joined * 1e3, "ms", notes=notes)
        )
        results.append(BenchResult(f"turns.{name}.go_at_{depth}", went * 1e3, "ms", notes=notes))
    return results


if __name__ == "__main__":
    for result in asyncio.run(run()):
        print(f"{result.name:<28} {result.value:8.3f} {result.unit}  {result.notes}")
