"""The shared transport's resilience over real HTTP: retries, Retry-After, caps, bad bodies.

Most cases use the simulator's fault injection; a few shapes the simulator never produces
(HTTP-date ``Retry-After``, HTML pages, a server ignoring ``idAfter``) use a tiny aiohttp
app defined here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from billnotify import errors
from billnotify.clients import BillingPlatformClient, ConnectError, JsonTransport
from billnotify.simulator import Simulator
from servers import Sleeps, free_port, serving

TASKS = "/backend/api/v1/billingTasks"
KEY = "sim-key"


@pytest.fixture
def sim_options() -> dict[str, Any]:
    return {"page_max": 50}


@pytest.fixture
def client_options() -> dict[str, Any]:
    return {"rng": random.Random(11), "max_attempts": 4}


Route = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Route], Awaitable[str]]]:
    """Start a one-route server answering every path; returns its base URL."""
    async with contextlib.AsyncExitStack() as servers:

        async def start(handler: Route) -> str:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", handler)
            return await servers.enter_async_context(serving(app)) + "/backend/api/v1/"

        yield start


# -- retries ---------------------------------------------------------------------------------


async def test_5xx_retried_with_full_jitter_backoff(
    sim: Simulator, client: BillingPlatformClient, sleeps: Sleeps
) -> None:
    sim.state.add_billing_task()
    sim.faults.add(TASKS, "503", count=2)
    sim.faults.add(TASKS, "500", count=1)
    assert len(await client.list_billing_tasks()) == 1
    assert len(sleeps) == 3
    for attempt, delay in enumerate(sleeps, start=1):
        assert 0 <= delay <= 0.5 * 2 ** (attempt - 1)  # full jitter under a doubling ceiling


async def test_5xx_gives_up_after_max_attempts(
    sim: Simulator, client: BillingPlatformClient, sleeps: Sleeps
) -> None:
    sim.faults.add(TASKS, "500", count=-1)
    with pytest.raises(errors.ServerError) as info:
        await client.list_billing_tasks()
    assert info.value.status == 500
    assert len(sleeps) == 3  # 4 attempts


async def test_429_honours_retry_after_seconds(
    sim: Simulator, client: BillingPlatformClient, sleeps: Sleeps
) -> None:
    sim.state.add_billing_task()
    sim.faults.add(TASKS, "429", count=2, retry_after=0.25)
    assert len(await client.list_billing_tasks()) == 1
    assert sleeps == [0.25, 0.25]


async def test_429_with_a_long_retry_after_is_raised(
    sim: Simulator, client: BillingPlatformClient, sleeps: Sleeps
) -> None:
    client.transport.max_retry_after = 60
    sim.faults.add(TASKS, "429", count=1, retry_after=3600)
    with pytest.raises(errors.RateLimitedError) as info:
        await client.list_billing_tasks()
    assert info.value.retry_after == 3600
    assert sleeps == []


async def test_429_retry_after_http_date(
    serve: Callable[[Route], Awaitable[str]], sleeps: Sleeps
) -> None:
    now = datetime(2026, 11, 2, 12, 0, 0, tzinfo=UTC)
    calls = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            when = format_datetime(now + timedelta(seconds=42), usegmt=True)
            return web.json_response({"error": "slow"}, status=429, headers={"Retry-After": when})
        return web.json_response({"id": "1"})

    base = await serve(handler)
    transport = JsonTransport(base, sleep=sleeps, clock=now.timestamp)
    try:
        assert (await transport.request_json("GET", "billingTasks/1")) == {"id": "1"}
    finally:
        await transport.close()
    assert sleeps == [42.0]


async def test_reset_connection_retried_for_get(
    sim: Simulator, client: BillingPlatformClient, sleeps: Sleeps
) -> None:
    task_id = sim.state.add_billing_task()["id"]
    # aiohttp itself repeats an idempotent request once on a dropped connection; the
    # second reset reaches the transport, which backs off and tries again
    sim.faults.add(TASKS, "reset", count=2)
    assert (await client.get_billing_task(task_id)).id == task_id
    assert len(sleeps) == 1


async def test_reset_connection_not_retried_for_post(
    sim: Simulator, client: BillingPlatformClient, sleeps: Sleeps
) -> None:
    invoice_id = sim.state.add_invoice(status=["Approved"])["id"]
    sim.faults.add("/backend/api/v1/invoices", "reset", count=1, method="POST")
    with pytest.raises(errors.TransportError) as info:
        await client.email_invoice(invoice_id)
    assert not isinstance(info.value, ConnectError)  # the request may have gone out
    assert sleeps == []


@pytest.mark.parametrize("stall", ["before_headers", "mid_body"])
async def test_timeout_is_transport_error(
    serve: Callable[[Route], Awaitable[str]], sleeps: Sleeps, stall: str
) -> None:
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        if stall == "before_headers":
            await release.wait()
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b'[{"id": "1"}')  # a slow drip: the rest never comes
        await release.wait()
        return resp

    base = await serve(handler)
    try:
        async with BillingPlatformClient(
            base, KEY, sleep=sleeps, timeout=0.2, max_attempts=2
        ) as client:
            with pytest.raises(errors.TransportError, match="timed out"):
                await client.list_billing_tasks()
    finally:
        release.set()
    assert len(sleeps) == 1


async def test_connection_refused(sleeps: Sleeps) -> None:
    url = f"http://127.0.0.1:{free_port()}/backend/api/v1"
    async with BillingPlatformClient(url, KEY, sleep=sleeps, max_attempts=3) as client:
        with pytest.raises(ConnectError) as info:
            await client.list_billing_tasks()
        assert info.value.retryable
        assert len(sleeps) == 2
        assert not isinstance(info.value.__cause__, errors.BillnotifyError)
        sleeps.clear()
        # nothing was sent, so even an action is retried
        with pytest.raises(ConnectError):
            await client.email_invoice("1")
        assert len(sleeps) == 2


# -- bad bodies ------------------------------------------------------------------------------


async def test_malformed_json_names_url_and_body(
    sim: Simulator, client: BillingPlatformClient
) -> None:
    sim.state.add_billing_task()
    sim.faults.add(TASKS, "malformed", count=1)
    with pytest.raises(errors.MalformedResponseError) as info:
        await client.list_billing_tasks()
    message = str(info.value)
    assert "expected JSON" in message
    assert "/backend/api/v1/billingTasks/" in message
    assert "application/json" in message


async def test_response_size_cap(sim: Simulator, sleeps: Sleeps) -> None:
    for _ in range(20):
        sim.state.add_billing_task()
    async with BillingPlatformClient(
        sim.billing_base_url, KEY, sleep=sleeps, max_response_bytes=2000
    ) as client:
        with pytest.raises(errors.MalformedResponseError, match="size cap of 2000 bytes"):
            await client.list_billing_tasks()
        assert len(await client.list_billing_tasks(page_size=2)) == 20
    assert sleeps == []


async def test_size_cap_without_content_length(
    serve: Callable[[Route], Awaitable[str]], sleeps: Sleeps
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b"[" + b'{"id": "1"},' * 500)
        await resp.write(b'{"id": "2"}]')
        return resp

    base = await serve(handler)
    async with BillingPlatformClient(base, KEY, sleep=sleeps, max_response_bytes=1000) as client:
        with pytest.raises(errors.MalformedResponseError, match="size cap"):
            await client.list_billing_tasks()


async def test_html_page_is_malformed(
    serve: Callable[[Route], Awaitable[str]], sleeps: Sleeps
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="<html><body>Login</body></html>" * 50, content_type="text/html")

    base = await serve(handler)
    async with BillingPlatformClient(base, KEY, sleep=sleeps) as client:
        with pytest.raises(errors.MalformedResponseError) as info:
            await client.get_invoice(1)
    message = str(info.value)
    assert "text/html" in message and "<html><body>Login" in message
    assert "invoices/1" in message
    assert len(message) < 500


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ({"items": []}, "expected a JSON array"),
        ([1, 2], "record 0 is int"),
        ([{"id": "1"}, {"name": "no id"}], "record 1 has no id"),
        ([{"id": "abc"}], "not numeric"),
    ],
)
async def test_bad_page_shapes(
    serve: Callable[[Route], Awaitable[str]], sleeps: Sleeps, body: object, match: str
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(body)

    base = await serve(handler)
    async with BillingPlatformClient(base, KEY, sleep=sleeps) as client:
        with pytest.raises(errors.MalformedResponseError, match=match) as info:
            await client.list_billing_tasks()
    assert "billingTasks/" in str(info.value)


async def test_server_ignoring_id_after_is_detected(
    serve: Callable[[Route], Awaitable[str]], sleeps: Sleeps
) -> None:
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.query.get("idAfter"))
        return web.json_response([{"id": "1"}, {"id": "2"}])

    base = await serve(handler)
    async with BillingPlatformClient(base, KEY, sleep=sleeps) as client:
        with pytest.raises(errors.MalformedResponseError, match="ignored idAfter=2"):
            await client.list_billing_tasks()
    assert seen == [None, "2"]


async def test_query_parameters_as_sent(
    serve: Callable[[Route], Awaitable[str]], sleeps: Sleeps
) -> None:
    queries: list[dict[str, str]] = []

    async def handler(request: web.Request) -> web.Response:
        queries.append(dict(request.query))
        return web.json_response([])

    base = await serve(handler)
    since = datetime(2026, 1, 31, 23, 59, 59, 123456, tzinfo=UTC)
    async with BillingPlatformClient(base, KEY, sleep=sleeps, page_size=25) as client:
        await client.list_invoices(
            created_since=since, unsent=False, include_unsent=True, min_date=since, offset=5
        )
    assert queries == [
        {
            "createdSince": "2026-01-31T23:59:59Z",
            "includeUnsent": "1",
            "minDate": "2026-01-31",
            "limit": "25",
            "offset": "5",
        }
    ]


# -- auth and secrets ------------------------------------------------------------------------


async def test_wrong_key_is_auth_error_without_retry(
    sim: Simulator, sleeps: Sleeps, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "very-secret-key-123"
    async with BillingPlatformClient(sim.billing_base_url, secret, sleep=sleeps) as client:
        with pytest.raises(errors.AuthError) as info:
            await client.list_billing_tasks()
        sim.faults.add(TASKS, "500", count=-1)
        with pytest.raises(errors.ServerError) as server_error:
            await client.list_billing_tasks()
    assert len(sleeps) == 4  # only the 5xx were retried
    for text in (str(info.value), str(server_error.value), caplog.text):
        assert secret not in text


async def test_no_aiohttp_exception_leaks(sleeps: Sleeps) -> None:
    async with BillingPlatformClient("http://[::1", KEY, sleep=sleeps) as client:
        with pytest.raises(errors.SourceError):
            await client.list_billing_tasks()


async def test_shared_session_is_not_closed(sim: Simulator, sleeps: Sleeps) -> None:
    async with aiohttp.ClientSession() as session:
        async with BillingPlatformClient(
            sim.billing_base_url, KEY, session=session, sleep=sleeps
        ) as client:
            assert await client.list_billing_tasks() == []
        assert not session.closed


async def test_last_date_remembers_server_clock(
    sim: Simulator, client: BillingPlatformClient
) -> None:
    assert client.transport.last_date is None
    await client.list_billing_tasks()
    assert client.transport.last_date is not None


async def test_concurrent_requests_share_one_session(
    sim: Simulator, client: BillingPlatformClient
) -> None:
    ids = [sim.state.add_billing_task()["id"] for _ in range(10)]
    tasks = await asyncio.gather(*(client.get_billing_task(i) for i in ids))
    assert [t.id for t in tasks] == ids
    assert json.dumps([t.raw for t in tasks])
