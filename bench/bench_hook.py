"""Change → MQTT with an inbound platform hook after each change (SPEC §7.3, issue 13).

``billnotify run`` as in ``bench_nodered`` (the same loopback platform of ``N`` tasks,
private mosquitto and independent ``mosquitto_sub``), but taking hooks on its HTTP
server (``hook_secret``, a Bearer token) and polling on its own only every ``POLL_S``
seconds, so that every change reaches MQTT through the poll its hook asks for. Each of
``CHANGES`` status changes is followed by an authenticated ``POST /hooks/bench``; the
changes are ``GAP`` apart, more than the least time between two polls a hook may ask for
(1 s: hooks are debounced so that a flood costs the platform a few polls). Figures:
latency from the change to the subscriber, p50 and p99 (issue 13's goal: p99 ≤ 150 ms),
and the list requests per change. The baseline is billnotify's own poll interval
without hooks (``bench_nodered``'s trickle: about the interval at p99).

``BENCH_QUICK=1``: 15 changes on 2,000 tasks; ``BENCH_NODERED_N`` sets ``N``.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import tempfile
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import aiohttp

from bench import BenchResult
from bench._peer_sides import HOOK_TOKEN, billnotify
from bench._peers import free_port
from bench.bench_mqtt import _mosquitto
from bench.bench_nodered import QUICK, N, _up

CHANGES = 15 if QUICK else 60
GAP = 1.2
POLL_S = 30
"""The regular poll interval: out of the way of the hooks."""


async def run() -> list[BenchResult]:
    """One billnotify run taking hooks; latencies of ``CHANGES`` hooked changes."""
    hook_port = free_port()
    url = f"http://127.0.0.1:{hook_port}/hooks/bench"
    headers = {"Authorization": f"Bearer {HOOK_TOKEN}"}

    def launch(
        tmp: Path, platform_url: str, port: int, prefix: str
    ) -> AbstractAsyncContextManager[asyncio.subprocess.Process]:
        return billnotify(tmp, platform_url, port, prefix, hook_port=hook_port, poll_s=POLL_S)

    with tempfile.TemporaryDirectory() as tmp, _mosquitto(Path(tmp)) as port:
        async with aiohttp.ClientSession() as http:

            async def hook() -> None:
                with contextlib.suppress(aiohttp.ClientConnectionError):  # not up yet
                    async with http.post(url, headers=headers, json={"type": "Modified"}) as resp:
                        if resp.status >= 300:
                            raise RuntimeError(f"the hook answered {resp.status}")

            async with _up("billnotify", launch, port, nudge=hook) as live:
                before = len(live.log)
                changed: dict[tuple[str, str], float] = {}
                for n in range(1, CHANGES + 1):
                    await asyncio.sleep(GAP)  # after the warm-up's poll, too
                    changed[(str(n), "Failed")] = await live.platform.change(n, n, "Failed")
                    await hook()
                await live.subscriber.wait_for(1 + CHANGES, 30)
                requests = len(live.log) - before
    first: dict[tuple[str, str], float] = {}
    for at, task_id, status in live.subscriber.arrivals():
        first.setdefault((task_id, status), at)
    latencies = [(first[key] - at) * 1000 for key, at in changed.items() if key in first]
    lost = len(changed) - len(latencies)
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    print(f"  hook latencies (ms): {sorted(round(x) for x in latencies)}", file=sys.stderr)
    where = (
        f"{CHANGES} changes {GAP:g} s apart, each followed by POST /hooks (Bearer); "
        f"N={N}, own poll every {POLL_S} s"
    )
    return [
        BenchResult("hook.p50", statistics.median(latencies), "ms", notes=where),
        BenchResult("hook.p99", cuts[98], "ms", notes=f"goal ≤ 150 ms; {where}"),
        BenchResult("hook.lost", lost, "events", notes=where),
        BenchResult("hook.requests", requests / CHANGES, "requests/change", notes="list requests"),
    ]


if __name__ == "__main__":
    from bench import format_table

    print(format_table(asyncio.run(run())))
