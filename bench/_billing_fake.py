"""A loopback billing platform for the peer benchmark: billing tasks only, in a child process.

It answers ``GET /backend/api/v1/billingTasks/`` as the simulator does (seed 000: a bare
JSON array sorted by id; ``limit`` capped at ``PAGE_MAX``, ``idAfter``, ``updatedSince``
and ``createdSince`` inclusive at second resolution on system timestamps; Bearer auth;
the ``Date`` header), but finds a page by bisecting on id instead of sorting and
filtering the whole table for every request, so that neither peer waits on the source
(the simulator takes some 30 ms per page of a 20,000-task table). Every request is logged
(when, its filter, ``limit``, whether it was a first page, rows returned), so that the
benchmark can say what each peer asked of the platform.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import multiprocessing
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from typing import Any

from aiohttp import web

from billnotify.simulator.records import default_billing_task, fmt_datetime

API_KEY = "bench-key"
PAGE_MAX = 500
PATH = "/backend/api/v1"
START_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class Request:
    """One list request the fake answered."""

    at: float
    """``time.time()`` when it arrived."""
    filter: str
    """``updatedSince``, ``createdSince`` or ``full`` (neither)."""
    limit: int
    first_page: bool
    """No ``idAfter``: the first request of a paged query."""
    rows: int


class _Tasks:
    """Billing tasks with their system timestamps (whole seconds), kept in id order."""

    def __init__(self, count: int) -> None:
        created = datetime.now(UTC) - timedelta(hours=1)
        stamp = int(created.timestamp())
        self.ids = list(range(1, count + 1))
        self.records: list[dict[str, Any]] = []
        self.json: list[bytes] = []
        self.created = [stamp] * count
        self.updated = [stamp] * count
        for task_id in self.ids:
            record = default_billing_task(created)
            record.update(id=str(task_id), status="Completed", customerID=str(task_id % 997))
            record.update(startedTime=fmt_datetime(created), endedTime=fmt_datetime(created))
            self.records.append(record)
            self.json.append(json.dumps(record, separators=(",", ":")).encode())
        self.log: list[Request] = []

    def change(self, ids: list[int], status: str) -> float:
        """Set the status of tasks ``ids``; returns ``time.time()`` once all are changed."""
        now = time.time()
        for task_id in ids:
            index = task_id - 1
            self.records[index]["status"] = status
            self.json[index] = json.dumps(self.records[index], separators=(",", ":")).encode()
            self.updated[index] = int(now)
        return time.time()

    async def list(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            return web.json_response({"error": "Unauthorized"}, status=401)
        query = request.query
        try:
            limit = min(int(query.get("limit", PAGE_MAX)), PAGE_MAX)
            start = bisect.bisect_right(self.ids, int(query.get("idAfter", 0)))
            kind, since = "full", 0
            for name in ("updatedSince", "createdSince"):
                if name in query:
                    kind = name
                    parsed = datetime.strptime(query[name], "%Y-%m-%dT%H:%M:%SZ")
                    since = int(parsed.replace(tzinfo=UTC).timestamp())
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        stamps = self.created if kind == "createdSince" else self.updated
        rows: list[bytes] = []
        for index in range(start, len(self.ids)):
            if stamps[index] >= since:
                rows.append(self.json[index])
                if len(rows) == limit:
                    break
        self.log.append(Request(time.time(), kind, limit, "idAfter" not in query, len(rows)))
        return web.Response(body=b"[" + b",".join(rows) + b"]", content_type="application/json")


def _serve(conn: Connection, count: int) -> None:
    asyncio.run(_serve_async(conn, count))


async def _serve_async(conn: Connection, count: int) -> None:
    tasks = _Tasks(count)
    app = web.Application()
    app.router.add_get(f"{PATH}/billingTasks/", tasks.list)
    app.router.add_get(f"{PATH}/billingTasks", tasks.list)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    conn.send(f"http://127.0.0.1:{runner.addresses[0][1]}{PATH}")
    loop = asyncio.get_running_loop()
    try:
        while (command := await loop.run_in_executor(None, conn.recv)) is not None:
            verb, argument = command
            if verb == "change":
                conn.send(tasks.change(*argument))
            else:  # "log": hand over the requests logged so far
                conn.send(tasks.log)
                tasks.log = []
    finally:
        await runner.cleanup()


class FakePlatform:
    """The fake with ``count`` completed tasks (ids 1..count), in its own process."""

    def __init__(self, count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._child = child
        self._process = context.Process(
            target=_serve, args=(child, count), name="bench-platform", daemon=True
        )
        self.base_url = ""
        self._asking = asyncio.Lock()

    async def _ask(self, command: tuple[str, Any]) -> Any:
        async with self._asking:  # one question at a time: answers come in order
            self._conn.send(command)
            loop = asyncio.get_running_loop()
            if not await loop.run_in_executor(None, self._conn.poll, START_TIMEOUT):
                raise RuntimeError("the fake platform did not answer")
            return self._conn.recv()

    async def __aenter__(self) -> FakePlatform:
        self._process.start()
        self._child.close()
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, self._conn.poll, START_TIMEOUT):
            raise RuntimeError("the fake platform did not start")
        self.base_url = self._conn.recv()
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self._conn.send(None)
        await asyncio.get_running_loop().run_in_executor(None, self._process.join, 10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._conn.close()

    async def change(self, ids: list[int], status: str) -> float:
        """Set the status of tasks ``ids``; returns ``time.time()`` once they are changed."""
        return float(await self._ask(("change", (ids, status))))

    async def requests(self) -> list[Request]:
        """The requests answered since the last call."""
        return list(await self._ask(("log", None)))
