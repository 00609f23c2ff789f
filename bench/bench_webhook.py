"""Webhook delivery throughput: :class:`WebhookExecutor` against a raw aiohttp POST loop.

Both sides POST the same CloudEvent body to the same local aiohttp receiver, at the same
concurrency, with one pooled session each, and read the whole response. The ratio is the
executor's own cost per delivery: Standard Webhooks signing (HMAC per attempt), header
assembly, the SSRF-checked URL, the per-attempt deadline, the capped body read and the
outcome classification. A second case renders the ``slack.j2`` body template per
delivery. Rounds alternate between the two sides; the best round of each is reported.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from aiohttp import web

from bench import BenchResult
from billnotify.actions.webhook import WebhookExecutor
from billnotify.config.models import Rule, WebhookAction, WebhookEndpoint
from billnotify.events import CloudEvent
from billnotify.store.base import Outcome
from billnotify.templating import TemplateRenderer

DELIVERIES = 3000
CONCURRENCY = 50
ROUNDS = 3
TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
SECRET = "whsec_" + base64.b64encode(b"bench-secret-bench-secret-bench!").decode()
RULE = Rule.model_validate(
    {"name": "bench", "on": ["*"], "actions": [{"type": "webhook", "endpoint": "sink"}]}
)
EVENT = CloudEvent(
    id="evt_bench",
    source="billnotify://acme",
    type="billing_task.status_changed",
    subject="billing_tasks/1234",
    time="2026-11-21T10:15:02Z",
    data={
        "object": {
            "id": "1234",
            "billingTaskType": "Generate Invoice",
            "status": "Failed",
            "customerID": "77",
            "retryCount": "2",
            "startedTime": "2026-11-21 10:01:00",
            "endedTime": "2026-11-21 10:15:00",
            "activityLog": "Step 3 failed",
        },
        "previous": {"status": "Running"},
        "changed": ["status", "endedTime"],
    },
)


async def _receiver() -> tuple[web.AppRunner, str]:
    async def hook(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text='{"ok":true}', content_type="application/json")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}/hook"


async def _timed(count: int, send: Callable[[int], Awaitable[None]]) -> float:
    queue = iter(range(count))

    async def worker() -> None:
        for n in queue:
            await send(n)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return count / (time.perf_counter() - started)


async def _executor_rate(executor: WebhookExecutor, action: WebhookAction) -> float:
    async def send(n: int) -> None:
        result = await executor.execute(action, EVENT, RULE, delivery_id=f"dlv_{n}", attempt=1)
        if result.outcome is not Outcome.SUCCESS:
            raise RuntimeError(f"delivery failed: {result.error}")

    return await _timed(DELIVERIES, send)


async def _raw_rate(session: aiohttp.ClientSession, url: str, body: bytes) -> float:
    headers = {"content-type": "application/json"}

    async def send(n: int) -> None:
        async with session.post(url, data=body, headers=headers) as resp:
            await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}")

    return await _timed(DELIVERIES, send)


async def run() -> list[BenchResult]:
    """Measure deliveries/s of the executor and of a raw aiohttp loop."""
    runner, url = await _receiver()
    endpoint = WebhookEndpoint.model_validate(
        {"name": "sink", "url": url, "secret": SECRET, "allow_private": True, "timeout": "10s"}
    )
    executor = WebhookExecutor([endpoint], TemplateRenderer(TEMPLATES))
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
    plain = WebhookAction(type="webhook", endpoint="sink")
    slack = WebhookAction(type="webhook", endpoint="sink", body="slack")
    body = EVENT.to_json().encode()
    best = {"raw": 0.0, "plain": 0.0, "slack": 0.0}
    try:
        await _raw_rate(session, url, body)  # warm up both pools
        await _executor_rate(executor, plain)
        for _ in range(ROUNDS):
            best["raw"] = max(best["raw"], await _raw_rate(session, url, body))
            best["plain"] = max(best["plain"], await _executor_rate(executor, plain))
            best["slack"] = max(best["slack"], await _executor_rate(executor, slack))
    finally:
        await executor.close()
        await session.close()
        await runner.cleanup()
    notes = f"{DELIVERIES} POSTs, concurrency {CONCURRENCY}, best of {ROUNDS}, local receiver"
    return [
        BenchResult.versus("webhook.cloudevent", best["plain"], "deliveries/s", best["raw"], notes),
        BenchResult.versus(
            "webhook.slack_template",
            best["slack"],
            "deliveries/s",
            best["raw"],
            notes + ", slack.j2",
        ),
    ]
