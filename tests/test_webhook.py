"""Webhook deliveries end to end against a real aiohttp receiver on loopback."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook

from billnotify.actions.webhook import USER_AGENT, WebhookExecutor
from billnotify.config.models import DEFAULT_TEMPLATES, Rule, WebhookAction, WebhookEndpoint
from billnotify.deliveries.base import AttemptResult, Outcome
from billnotify.events import CloudEvent
from billnotify.templating import TemplateRenderer
from servers import WebhookReceiver, free_port

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
TEMPLATES = DEFAULT_TEMPLATES
RULE = Rule.model_validate(
    {
        "name": "alert-failed-task",
        "on": ["billing_task.*"],
        "actions": [{"type": "webhook", "endpoint": "ops"}],
    }
)
EVENT = CloudEvent(
    id="evt_0123456789abcdef",
    source="billnotify://acme",
    type="billing_task.status_changed",
    subject="billing_tasks/1234",
    time="2026-11-21T10:15:02Z",
    data={
        "object": {"id": "1234", "billingTaskType": "Generate Invoice", "status": "Failed"},
        "previous": {"status": "Running"},
        "changed": ["status"],
    },
)


def endpoint(url: str, **overrides: Any) -> WebhookEndpoint:
    raw = {"name": "ops", "url": url, "secret": SECRET, "allow_private": True, "timeout": "5s"}
    return WebhookEndpoint.model_validate({**raw, **overrides})


def action(**overrides: Any) -> WebhookAction:
    return WebhookAction.model_validate({"type": "webhook", "endpoint": "ops", **overrides})


@pytest.fixture
def make_executor(closing: Any) -> Callable[..., WebhookExecutor]:
    def make(
        *endpoints: WebhookEndpoint, clock: Callable[[], float] = time.time
    ) -> WebhookExecutor:
        return closing(WebhookExecutor(endpoints, TemplateRenderer(TEMPLATES), clock=clock))

    return make


async def deliver(
    executor: WebhookExecutor, webhook: WebhookAction | None = None, *, attempt: int = 1
) -> AttemptResult:
    return await executor.execute(
        webhook or action(), EVENT, RULE, delivery_id="dlv_stable", attempt=attempt
    )


# -- signing and content -----------------------------------------------------------------


async def test_a_delivery_is_signed_per_the_standard(
    receiver: WebhookReceiver, make_executor: Any
) -> None:
    hook = endpoint(receiver.url("/ok"), headers={"X-Team": "billing"})
    result = await deliver(make_executor(hook))

    assert result.outcome is Outcome.SUCCESS
    assert result.status_code == 200
    assert result.response == {"status": 200, "body": {"received": True}}
    [hit] = receiver.hits
    assert Webhook(SECRET).verify(hit.body, hit.headers) == json.loads(EVENT.to_json())
    assert hit.headers["webhook-id"] == "dlv_stable"
    assert hit.headers["Content-Type"] == "application/json"
    assert hit.headers["User-Agent"] == USER_AGENT
    assert hit.headers["X-Team"] == "billing"


async def test_every_attempt_is_signed_afresh_under_the_same_id(
    receiver: WebhookReceiver, make_executor: Any
) -> None:
    ticks = iter([time.time() - 30, time.time()])
    executor = make_executor(endpoint(receiver.url("/ok")), clock=lambda: next(ticks))
    await deliver(executor, attempt=1)
    await deliver(executor, attempt=2)

    first, second = receiver.hits
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == "dlv_stable"
    assert first.headers["webhook-timestamp"] != second.headers["webhook-timestamp"]
    assert first.headers["webhook-signature"] != second.headers["webhook-signature"]
    for hit in (first, second):
        Webhook(SECRET).verify(hit.body, hit.headers)


async def test_a_raw_secret_keys_the_hmac_with_its_utf8_bytes(
    receiver: WebhookReceiver, make_executor: Any
) -> None:
    raw = "plain-secret-without-prefix"
    await deliver(make_executor(endpoint(receiver.url("/ok"), secret=raw)))
    [hit] = receiver.hits
    signed = f"{hit.headers['webhook-id']}.{hit.headers['webhook-timestamp']}.".encode() + hit.body
    expected = base64.b64encode(hmac.new(raw.encode(), signed, hashlib.sha256).digest()).decode()
    assert hit.headers["webhook-signature"] == f"v1,{expected}"


async def test_a_body_template_is_sent_with_its_content_type(
    receiver: WebhookReceiver, make_executor: Any
) -> None:
    result = await deliver(
        make_executor(endpoint(receiver.url("/ok"))),
        action(body="slack", content_type="application/json"),
    )
    assert result.outcome is Outcome.SUCCESS
    [hit] = receiver.hits
    payload = Webhook(SECRET).verify(hit.body, hit.headers)
    assert payload["text"] == "[acme] Billing task 1234 (Generate Invoice): Failed"


async def test_connections_are_reused(receiver: WebhookReceiver, make_executor: Any) -> None:
    executor = make_executor(endpoint(receiver.url("/ok")))
    for attempt in (1, 2, 3):
        assert (await deliver(executor, attempt=attempt)).outcome is Outcome.SUCCESS
    assert len({hit.peer for hit in receiver.hits}) == 1


# -- outcomes ----------------------------------------------------------------------------


async def test_redirects_are_not_followed(receiver: WebhookReceiver, make_executor: Any) -> None:
    result = await deliver(make_executor(endpoint(receiver.url("/redirect"))))
    assert result.outcome is Outcome.PERMANENT
    assert result.status_code == 302
    assert "redirects are not followed" in (result.error or "")
    assert [hit.path for hit in receiver.hits] == ["/redirect"]


async def test_410_disables_the_endpoint(receiver: WebhookReceiver, make_executor: Any) -> None:
    result = await deliver(make_executor(endpoint(receiver.url("/status/410"))))
    assert result.outcome is Outcome.PERMANENT
    assert result.disable_endpoint is True


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (201, Outcome.SUCCESS),
        (204, Outcome.SUCCESS),
        (400, Outcome.PERMANENT),
        (401, Outcome.PERMANENT),
        (404, Outcome.PERMANENT),
        (408, Outcome.RETRYABLE),
        (429, Outcome.RETRYABLE),
        (500, Outcome.RETRYABLE),
        (502, Outcome.RETRYABLE),
        (503, Outcome.RETRYABLE),
    ],
)
async def test_status_codes_are_classified(
    receiver: WebhookReceiver, make_executor: Any, status: int, outcome: Outcome
) -> None:
    result = await deliver(make_executor(endpoint(receiver.url(f"/status/{status}"))))
    assert result.outcome is outcome
    assert result.status_code == status
    assert result.disable_endpoint is False


async def test_429_retry_after_in_seconds(receiver: WebhookReceiver, make_executor: Any) -> None:
    result = await deliver(make_executor(endpoint(receiver.url("/status/429?retry_after=7"))))
    assert result.outcome is Outcome.RETRYABLE
    assert result.retry_after == 7.0


async def test_503_retry_after_as_an_http_date(
    receiver: WebhookReceiver, make_executor: Any
) -> None:
    now = 1_800_000_000.0
    when = formatdate(now + 120, usegmt=True).replace(" ", "%20").replace(",", "%2C")
    executor = make_executor(
        endpoint(receiver.url(f"/status/503?retry_after={when}")), clock=lambda: now
    )
    result = await deliver(executor)
    assert result.outcome is Outcome.RETRYABLE
    assert result.retry_after == pytest.approx(120.0)


async def test_a_slow_drip_is_cut_at_the_deadline(
    receiver: WebhookReceiver, make_executor: Any
) -> None:
    executor = make_executor(endpoint(receiver.url("/drip"), timeout="1s"))
    started = time.monotonic()
    result = await deliver(executor)
    elapsed = time.monotonic() - started

    assert result.outcome is Outcome.RETRYABLE
    assert "no complete answer within 1s" in (result.error or "")
    assert 0.9 <= elapsed < 2.5


async def test_connection_refused_is_retryable(make_executor: Any) -> None:
    result = await deliver(make_executor(endpoint(f"http://127.0.0.1:{free_port()}/ok")))
    assert result.outcome is Outcome.RETRYABLE
    assert "cannot connect" in (result.error or "")


async def test_an_unknown_endpoint_is_permanent(make_executor: Any) -> None:
    result = await deliver(make_executor(), action(endpoint="nope"))
    assert result.outcome is Outcome.PERMANENT
    assert "unknown webhook endpoint 'nope'" in (result.error or "")


async def test_a_broken_body_template_is_a_permanent_failure_naming_it(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    (tmp_path / "bad.j2").write_text('{"x": {{ object.nope }}}\n')
    executor = WebhookExecutor([endpoint(receiver.url("/ok"))], TemplateRenderer(tmp_path))
    try:
        result = await deliver(executor, action(body="bad"))
    finally:
        await executor.close()
    assert result.outcome is Outcome.PERMANENT
    assert (result.error or "").startswith("bad.j2, line 1: undefined")
    assert receiver.hits == []


async def test_a_line_break_in_a_header_is_refused(
    receiver: WebhookReceiver, make_executor: Any
) -> None:
    hook = endpoint(receiver.url("/ok"))
    result = await deliver(
        make_executor(hook), action(content_type="application/json\r\nX-Evil: 1")
    )
    assert result.outcome is Outcome.PERMANENT
    assert "line break" in (result.error or "")
    assert receiver.hits == []


# -- render ------------------------------------------------------------------------------


async def test_render_is_secret_free(make_executor: Any) -> None:
    hook = endpoint("https://hooks.example.com/x", headers={"Authorization": "Bearer s3cr3t"})
    rendered = await make_executor(hook).render(action(), EVENT, RULE)
    assert rendered.action_type == "webhook"
    assert rendered.target == "ops"
    assert rendered.summary["url"] == "https://hooks.example.com/x"
    assert json.loads(rendered.summary["body"]) == json.loads(EVENT.to_json())
    assert rendered.summary["headers"]["Authorization"] == "**********"
    text = json.dumps(rendered.summary)
    assert "s3cr3t" not in text
    assert SECRET not in text
    assert "webhook-signature" not in rendered.summary["headers"]
