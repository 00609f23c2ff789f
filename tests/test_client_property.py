"""PropertyBillingClient (seed 003) over real HTTP: endpoints, JWT lifecycle, admin header."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, date, datetime
from typing import Any

import pytest
from aiohttp import web

from billnotify import errors
from billnotify.clients import BillingHeader, PropertyBillingClient
from billnotify.clients.property_billing import find_document_ids
from billnotify.secrets import Secret
from billnotify.simulator import ManualClock, Simulator
from servers import Sleeps, serving

START = datetime(2026, 11, 2, 9, 0, 0, tzinfo=UTC)  # where the `clock` fixture starts
PROPERTY = "2eff1042c50c1eda889e61573e3c194c"
OTHER = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def sim_options(clock: ManualClock) -> dict[str, Any]:
    return {"clock": clock, "token_ttl": 300.0}


def make_client(
    sim: Simulator,
    clock: ManualClock,
    sleeps: Sleeps,
    *,
    password: str = "sim-password",
    administrator_ids: tuple[str, ...] = ("1234",),
    **kwargs: Any,
) -> PropertyBillingClient:
    return PropertyBillingClient(
        sim.property_base_url,
        sim.auth_url,
        Secret("sim"),
        Secret(password),
        administrator_ids,
        sleep=sleeps,
        clock=lambda: clock.now().timestamp(),
        timeout=5,
        **kwargs,
    )


@pytest.fixture
async def client(
    sim: Simulator, clock: ManualClock, sleeps: Sleeps
) -> AsyncIterator[PropertyBillingClient]:
    async with make_client(sim, clock, sleeps) as c:
        yield c


# -- endpoints -------------------------------------------------------------------------------


async def test_billing_headers_and_filters(sim: Simulator, client: PropertyBillingClient) -> None:
    first = sim.state.add_billing_header(
        PROPERTY,
        startDate="2018-10-01T00:00:00",
        endDate="2019-09-30T00:00:00",
        updateTimeStamp="2023-07-03T22:00:26.16",
    )
    second = sim.state.add_billing_header(
        PROPERTY,
        startDate="2019-10-01T00:00:00",
        endDate="2020-09-30T00:00:00",
        updateTimeStamp="2026-11-01T08:00:00",
    )
    sim.state.add_billing_header(OTHER)
    headers = await client.billing_headers(PROPERTY)
    assert all(isinstance(h, BillingHeader) for h in headers)
    assert [h.id for h in headers] == [str(first["id"]), str(second["id"])]
    assert headers[0].raw == first
    assert headers[0].update_time_stamp == "2023-07-03T22:00:26.16"
    assert headers[0].start_date == date(2018, 10, 1)
    assert headers[0].property_uuid == PROPERTY

    later = await client.billing_headers(PROPERTY, start_date=date(2019, 1, 1))
    assert [h.id for h in later] == [str(second["id"])]
    earlier = await client.billing_headers(PROPERTY, end_date="2019-12-31")
    assert [h.id for h in earlier] == [str(first["id"])]
    fresh = await client.billing_headers(PROPERTY, last_update=datetime(2026, 1, 1, tzinfo=UTC))
    assert [h.id for h in fresh] == [str(second["id"])]
    assert await client.billing_headers("ffffffffffffffffffffffffffffffff") == []


async def test_billing_and_documents(sim: Simulator, client: PropertyBillingClient) -> None:
    header = sim.state.add_billing_header(PROPERTY)
    billing = await client.billing(header["id"])
    assert billing["id"] == header["id"]
    assert not any("deviceConsumptions" in unit for unit in billing["units"])
    detailed = await client.billing(str(header["id"]), include_device_consumptions=True)
    assert all("deviceConsumptions" in unit for unit in detailed["units"])

    documents = find_document_ids(billing)
    assert len(documents) == 3
    pdf = await client.billing_document(documents[0])
    assert pdf.startswith(b"%PDF-")
    with pytest.raises(errors.NotFoundError):
        await client.billing(999)
    with pytest.raises(errors.NotFoundError):
        await client.billing_document("BE99999999")


async def test_document_path_is_configurable(
    sim: Simulator, clock: ManualClock, sleeps: Sleeps
) -> None:
    header = sim.state.add_billing_header(PROPERTY)
    (doc, *_) = find_document_ids(
        sim.state.billing(header["id"], include_device_consumptions=False)
    )
    async with make_client(sim, clock, sleeps, document_path="/BillingDocument/") as client:
        assert (await client.billing_document(doc)).startswith(b"%PDF-")


async def test_retries_on_5xx_and_429(
    sim: Simulator, client: PropertyBillingClient, sleeps: Sleeps
) -> None:
    sim.state.add_billing_header(PROPERTY)
    sim.faults.add("/api/v1/BillingHeaders", "503", count=1)
    sim.faults.add("/api/v1/BillingHeaders", "429", count=1, retry_after=1.5)
    assert len(await client.billing_headers(PROPERTY)) == 1
    assert len(sleeps) == 2 and sleeps[1] == 1.5


async def test_authentication_retried_on_5xx(
    sim: Simulator, client: PropertyBillingClient, sleeps: Sleeps
) -> None:
    sim.faults.add("/users/authenticate", "500", count=1)
    assert await client.billing_headers(PROPERTY) == []
    assert len(sleeps) == 1


# -- authentication --------------------------------------------------------------------------


async def test_one_token_shared_by_concurrent_callers(
    sim: Simulator, client: PropertyBillingClient
) -> None:
    sim.state.add_billing_header(PROPERTY)
    results = await asyncio.gather(*(client.billing_headers(PROPERTY) for _ in range(20)))
    assert all(len(r) == 1 for r in results)
    assert sim.property_api.tokens_issued == 1
    assert client.auth.authentications == 1


async def test_token_renewed_before_expiry(
    sim: Simulator,
    client: PropertyBillingClient,
    clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="billnotify.clients")
    await client.billing_headers(PROPERTY)
    clock.advance(200)
    await client.billing_headers(PROPERTY)
    assert sim.property_api.tokens_issued == 1
    clock.advance(75)  # 275 s: inside the renewal margin, still valid on the server
    await client.billing_headers(PROPERTY)
    assert sim.property_api.tokens_issued == 2
    assert "401" not in caplog.text  # renewed ahead of expiry, never refused
    clock.advance(3600)
    await client.billing_headers(PROPERTY)
    assert sim.property_api.tokens_issued == 3


async def test_reauthenticates_once_on_401(
    sim: Simulator, clock: ManualClock, sleeps: Sleeps
) -> None:
    # the client's clock lags the server's: it believes its token is still fresh
    lagging = ManualClock(START)
    async with make_client(sim, lagging, sleeps) as client:
        await client.billing_headers(PROPERTY)
        clock.advance(400)
        assert await client.billing_headers(PROPERTY) == []
        assert sim.property_api.tokens_issued == 2
    assert sleeps == []


async def test_persistent_401_raises_after_one_reauthentication(
    sim: Simulator, client: PropertyBillingClient, sleeps: Sleeps
) -> None:
    sim.property_api.token_ttl = 0  # every token is born expired
    with pytest.raises(errors.AuthError):
        await client.billing_headers(PROPERTY)
    assert sim.property_api.tokens_issued == 2
    assert sleeps == []


async def test_wrong_password_is_auth_error_without_leaking_it(
    sim: Simulator, clock: ManualClock, sleeps: Sleeps, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with make_client(sim, clock, sleeps, password="hunter2-secret") as client:
        with pytest.raises(errors.AuthError) as info:
            await client.billing_headers(PROPERTY)
    assert "hunter2-secret" not in str(info.value)
    assert "hunter2-secret" not in caplog.text
    assert sleeps == []


async def test_unknown_administrator_is_refused(
    sim: Simulator, clock: ManualClock, sleeps: Sleeps
) -> None:
    async with make_client(sim, clock, sleeps, administrator_ids=("999",)) as client:
        with pytest.raises(errors.ApiError) as info:
            await client.billing_headers(PROPERTY)
    assert info.value.status == 403
    async with make_client(sim, clock, sleeps, administrator_ids=("999", "1234")) as client:
        assert await client.billing_headers(PROPERTY) == []


def test_administrator_ids_required() -> None:
    with pytest.raises(ValueError):
        PropertyBillingClient("http://x/api/v1", "http://x/auth", "u", "p", [])


# -- a hand-written server: exact headers and token shapes ------------------------------------


Route = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Fake:
    """An auth endpoint (answer chosen per test) plus an API recording request headers."""

    def __init__(self) -> None:
        self.base = ""
        self.seen: list[dict[str, str]] = []
        self.logins: list[Any] = []
        self.servers = contextlib.AsyncExitStack()

    async def start(self, token_body: str, ctype: str = "text/plain") -> None:
        async def auth(request: web.Request) -> web.Response:
            self.logins.append(json.loads(await request.read()))
            return web.Response(text=token_body, content_type=ctype)

        async def api(request: web.Request) -> web.Response:
            self.seen.append(dict(request.headers))
            return web.json_response({"count": 0, "billingHeaders": []})

        app = web.Application()
        app.router.add_post("/auth", auth)
        app.router.add_get("/api/v1/BillingHeaders/{p}", api)
        self.base = await self.servers.enter_async_context(serving(app))

    def client(self, sleeps: Sleeps, clock: Callable[[], float]) -> PropertyBillingClient:
        return PropertyBillingClient(
            f"{self.base}/api/v1",
            f"{self.base}/auth",
            "user",
            Secret("pw"),
            ["1234", "5678"],
            sleep=sleeps,
            clock=clock,
        )


@pytest.fixture
async def fake() -> AsyncIterator[Fake]:
    server = Fake()
    async with server.servers:
        yield server


@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        ('"opaque.token.value"', "application/json"),
        ('{"token": "opaque.token.value"}', "application/json"),
        ("opaque.token.value\n", "text/plain"),
    ],
)
async def test_token_shapes_and_exact_headers(
    fake: Fake, sleeps: Sleeps, body: str, ctype: str
) -> None:
    await fake.start(body, ctype)
    now = [1_000_000.0]
    async with fake.client(sleeps, lambda: now[0]) as client:
        await client.billing_headers(PROPERTY)
        now[0] += 269  # no exp in an opaque token: 300 s assumed, renewed 30 s early
        await client.billing_headers(PROPERTY)
        assert len(fake.logins) == 1
        now[0] += 2
        await client.billing_headers(PROPERTY)
        assert len(fake.logins) == 2
    assert fake.logins[0] == {"username": "user", "password": "pw"}
    assert len(fake.seen) == 3
    for headers in fake.seen:
        assert headers["Authorization"] == "Bearer opaque.token.value"
        assert headers["istaAdministratorIds"] == "1234;5678"


async def test_auth_answer_without_token_is_malformed(fake: Fake, sleeps: Sleeps) -> None:
    await fake.start("<html>Sign in</html>", "text/html")
    async with fake.client(sleeps, lambda: 0.0) as client:
        with pytest.raises(errors.MalformedResponseError, match="no token") as info:
            await client.billing_headers(PROPERTY)
    assert "Sign in" not in str(info.value)  # auth bodies are never echoed
    assert fake.seen == []
