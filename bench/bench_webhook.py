"""Webhook delivery throughput: :class:`WebhookExecutor` against a raw aiohttp POST loop.

Both sides POST the same CloudEvent body to the same local aiohttp receiver, at the same
concurrency, with one pooled session each, and read the whole response. The ratio is the
executor's own cost per delivery: Standard Webhooks signing (HMAC per attempt), header
assembly, the SSRF-checked URL, the per-attempt deadline, the capped body read and the
outcome classification. A second case renders the ``slack.j2`` body template per
delivery. Rounds alternate between the two sides; the best round of each is reported.
"""

from __future__ import annotations

import functools

import aiohttp

from bench import BenchResult
from bench._peers import (
    SECRET,
    TEMPLATES,
    best_of,
    executor_rate,
    failed_task_event,
    raw_post_rate,
    webhook_receiver,
)
from billnotify.actions.webhook import WebhookExecutor
from billnotify.config.models import Rule, WebhookAction, WebhookEndpoint
from billnotify.templating import TemplateRenderer

DELIVERIES = 3000
CONCURRENCY = 50
ROUNDS = 3
RULE = Rule.model_validate(
    {"name": "bench", "on": ["*"], "actions": [{"type": "webhook", "endpoint": "sink"}]}
)
EVENT = failed_task_event()


async def run() -> list[BenchResult]:
    """Measure deliveries/s of the executor and of a raw aiohttp loop."""
    async with (
        webhook_receiver() as url,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session,
    ):
        endpoint = WebhookEndpoint.model_validate(
            {"name": "sink", "url": url, "secret": SECRET, "allow_private": True, "timeout": "10s"}
        )
        executor = WebhookExecutor([endpoint], TemplateRenderer(TEMPLATES))
        body = EVENT.to_json().encode()
        raw = functools.partial(raw_post_rate, session, url, body, DELIVERIES, CONCURRENCY)
        plain, slack = (
            functools.partial(executor_rate, executor, action, EVENT, RULE, DELIVERIES, CONCURRENCY)
            for action in (
                WebhookAction(type="webhook", endpoint="sink"),
                WebhookAction(type="webhook", endpoint="sink", body="slack"),
            )
        )
        try:
            best = await best_of(
                ROUNDS,
                {"raw": raw, "plain": plain, "slack": slack},
                warm_up=[raw, plain],  # both pools
            )
        finally:
            await executor.close()
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
