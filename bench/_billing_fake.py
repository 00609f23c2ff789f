"""A loopback billing platform for the peer benchmark: billing tasks only, in a child process.

It answers ``GET /backend/api/v1/billingTasks/`` as the simulator does (seed 000: a bare
JSON array sorted by id; ``limit`` capped at ``PAGE_MAX``, ``idAfter``, ``updatedSince``
and ``createdSince`` inclusive at second resolution on system timestamps; Bearer auth;
the ``Date`` header), but finds a page by bisecting on id instead of sorting and
filtering the whole table for every request, so that neither peer waits on the source
(the simulator's selection alone takes 27 to 38 ms per page of a 20,000-task table).
Every request is logged (when, its filter, ``limit``, whether it was a first page, rows returned), so that the
benchmark can say what each peer asked of the platform. ``/_bench/change`` and
``/_bench/log`` are its control routes (no auth), as ``/_sim/`` is the simulator's.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import astuple, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
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

    def change(self, ids: Iterable[int], status: str) -> float:
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


async def _serve(count: int) -> None:
    """Serve ``count`` tasks and the ``/_bench/`` control routes until stdin closes."""
    tasks = _Tasks(count)

    async def change(request: web.Request) -> web.Response:
        body = await request.json()
        first, last = body["ids"]
        return web.json_response({"at": tasks.change(range(first, last + 1), body["status"])})

    async def log(request: web.Request) -> web.Response:
        served, tasks.log = tasks.log, []
        return web.json_response([astuple(entry) for entry in served])

    app = web.Application(client_max_size=1 << 20)
    app.router.add_get(f"{PATH}/billingTasks/", tasks.list)
    app.router.add_get(f"{PATH}/billingTasks", tasks.list)
    app.router.add_post("/_bench/change", change)
    app.router.add_get("/_bench/log", log)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print(f"http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
    try:  # the benchmark holds our stdin: EOF when it ends or dies
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    finally:
        await runner.cleanup()


class FakePlatform:
    """The fake with ``count`` completed tasks (ids 1..count), in a process of its own."""

    def __init__(self, count: int) -> None:
        self._count = count
        self._process: asyncio.subprocess.Process | None = None
        self._session: aiohttp.ClientSession | None = None
        self._control = ""
        self.base_url = ""

    async def __aenter__(self) -> FakePlatform:
        command = [sys.executable, "-m", "bench._billing_fake", str(self._count)]
        self._process = await asyncio.create_subprocess_exec(
            *command, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert self._process.stdout is not None
        async with asyncio.timeout(START_TIMEOUT):
            root = (await self._process.stdout.readline()).decode().strip()
        if not root:
            raise RuntimeError("the fake platform did not start")
        self._session = aiohttp.ClientSession()
        self._control, self.base_url = f"{root}/_bench", root + PATH
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
        if self._process is not None:
            assert self._process.stdin is not None
            self._process.stdin.close()
            try:
                async with asyncio.timeout(10):
                    await self._process.wait()
            except TimeoutError:
                self._process.kill()
                await self._process.wait()

    async def change(self, first: int, last: int, status: str) -> float:
        """Set the status of tasks ``first..last``; returns ``time.time()`` once changed."""
        assert self._session is not None
        body = {"ids": [first, last], "status": status}
        async with self._session.post(f"{self._control}/change", json=body) as resp:
            return float((await resp.json())["at"])

    async def requests(self) -> list[Request]:
        """The requests answered since the last call."""
        assert self._session is not None
        async with self._session.get(f"{self._control}/log") as resp:
            return [Request(*entry) for entry in await resp.json()]


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1])))
