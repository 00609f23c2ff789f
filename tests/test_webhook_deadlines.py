"""Webhook deadlines: late attempts are cut, only they, and only for lateness."""

from __future__ import annotations

import asyncio
import base64
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from billnotify.actions.webhook import WebhookExecutor
from billnotify.config.models import Rule, WebhookAction, WebhookEndpoint
from billnotify.deliveries.base import Outcome
from billnotify.events import CloudEvent, build_event
from billnotify.templating import TemplateRenderer
from servers import WebhookReceiver

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
RULE = Rule.model_validate(
    {"name": "hooks", "on": ["billing_task.*"], "actions": [{"type": "webhook", "endpoint": "a"}]}
)
EVENT: CloudEvent = build_event(
    source="acme",
    entity="billing_task",
    object_id="1",
    type_="billing_task.created",
    key="1",
    time=datetime(2026, 11, 21, tzinfo=UTC),
    data={"object": {"id": "1"}},
)


def _executor(closing: Any, receiver: WebhookReceiver, **timeouts: str) -> WebhookExecutor:
    endpoints = [
        WebhookEndpoint.model_validate(
            {
                "name": name,
                "url": receiver.url(path),
                "secret": SECRET,
                "allow_private": True,
                "timeout": timeouts.get(name, "5s"),
            }
        )
        for name, path in (("drip", "/drip"), ("ok", "/ok"))
    ]
    executor: WebhookExecutor = closing(WebhookExecutor(endpoints, TemplateRenderer(Path("."))))
    return executor


async def _send(executor: WebhookExecutor, endpoint: str, delivery_id: str) -> Any:
    action = WebhookAction(type="webhook", endpoint=endpoint)
    return await executor.execute(action, EVENT, RULE, delivery_id=delivery_id, attempt=1)


async def test_only_the_late_attempt_is_cut_and_the_others_finish(
    receiver: WebhookReceiver, closing: Any
) -> None:
    executor = _executor(closing, receiver, drip="1s")
    started = time.monotonic()
    late, *quick = await asyncio.gather(
        _send(executor, "drip", "dlv_late"),
        *(_send(executor, "ok", f"dlv_{n}") for n in range(5)),
    )
    assert late.outcome is Outcome.RETRYABLE
    assert "no complete answer within 1s" in late.error
    assert 0.9 <= time.monotonic() - started < 2.5
    assert [r.outcome for r in quick] == [Outcome.SUCCESS] * 5
    # the task that ran the cut attempt goes on normally: nothing left pending
    assert (await _send(executor, "ok", "dlv_after")).outcome is Outcome.SUCCESS


async def test_a_cancellation_from_outside_is_not_taken_for_a_deadline(
    receiver: WebhookReceiver, closing: Any
) -> None:
    executor = _executor(closing, receiver, drip="30s")
    attempt = asyncio.create_task(_send(executor, "drip", "dlv_cancelled"))
    await asyncio.sleep(0.3)  # the answer is dripping in
    attempt.cancel()
    with pytest.raises(asyncio.CancelledError):
        await attempt  # not turned into a "no complete answer" result
    assert attempt.cancelled()


async def test_successive_deadlines_each_cut_their_own_attempt(
    receiver: WebhookReceiver, closing: Any
) -> None:
    executor = _executor(closing, receiver, drip="0.5s")
    first = asyncio.create_task(_send(executor, "drip", "dlv_1"))
    await asyncio.sleep(0.2)
    second = asyncio.create_task(_send(executor, "drip", "dlv_2"))
    results = await asyncio.gather(first, second)
    assert [r.outcome for r in results] == [Outcome.RETRYABLE, Outcome.RETRYABLE]
    assert all("within 0.5s" in r.error for r in results)
