"""The simulator: one aiohttp app serving the billing platform and property billing APIs."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

from aiohttp import web

from billnotify.simulator.billing import BillingApi
from billnotify.simulator.clock import SimClock
from billnotify.simulator.control import ControlApi, download_handler
from billnotify.simulator.errors import error_middleware
from billnotify.simulator.faults import Faults
from billnotify.simulator.property import PropertyApi
from billnotify.simulator.scenario import Scenario
from billnotify.simulator.state import SimState

logger = logging.getLogger(__name__)

BILLING_PREFIX = "/backend/api/v1"
PROPERTY_PREFIX = "/api/v1"
AUTH_PATH = "/users/authenticate"


class Simulator:
    """Both simulated platforms, their fault injection and a lifecycle scenario.

    Args:
        api_key: Bearer key of the billing platform.
        username: Property billing user name.
        password: Property billing password.
        administrator_ids: Ids accepted in ``istaAdministratorIds``.
        token_ttl: Lifetime of property billing tokens, in seconds.
        page_max: The most records a billing-platform list returns.
        clock: Time source (defaults to the state's clock or the real clock).
        state: Existing state to serve (a fresh empty one by default).
        seed: Random seed of the scenario.
    """

    def __init__(
        self,
        *,
        api_key: str = "sim-key",
        username: str = "sim",
        password: str = "sim-password",
        administrator_ids: Sequence[str] = ("1234",),
        token_ttl: float = 300.0,
        page_max: int = 50,
        clock: SimClock | None = None,
        state: SimState | None = None,
        seed: int = 0,
    ) -> None:
        if state is None:
            state = SimState(clock=clock)
        elif clock is not None:
            state.clock = clock
        self.state = state
        self.clock = state.clock
        self.api_key = api_key
        self.username = username
        self.password = password
        self.administrator_ids = tuple(administrator_ids)
        self.faults = Faults()
        self.scenario = Scenario(state, rng_seed=seed)
        self.billing_api = BillingApi(state, api_key=api_key, page_max=page_max)
        self.property_api = PropertyApi(
            state,
            username=username,
            password=password,
            administrator_ids=administrator_ids,
            token_ttl=token_ttl,
        )
        #: ``METHOD /path?query`` of the latest requests received, oldest first (for tests).
        self.requests: deque[str] = deque(maxlen=10_000)
        self._app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self.host = "127.0.0.1"
        self.port = 0

    def app(self) -> web.Application:
        """Return the aiohttp application (built once)."""
        if self._app is None:
            app = web.Application(
                middlewares=[self._record, self.faults.middleware(), error_middleware()]
            )
            app.router.add_post(AUTH_PATH, self.property_api.authenticate)
            app.router.add_get("/download/invoice/{token}", download_handler(self.state))
            ControlApi(self).register(app)
            app.add_subapp(BILLING_PREFIX, self.billing_api.app())
            app.add_subapp(PROPERTY_PREFIX, self.property_api.app())
            self._app = app
        return self._app

    @web.middleware
    async def _record(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        self.requests.append(f"{request.method} {request.path_qs}")
        return await handler(request)

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` of the running server."""
        return f"http://{self.host}:{self.port}"

    @property
    def billing_base_url(self) -> str:
        """Base URL of the billing platform API."""
        return self.base_url + BILLING_PREFIX

    @property
    def property_base_url(self) -> str:
        """Base URL of the property billing API."""
        return self.base_url + PROPERTY_PREFIX

    @property
    def auth_url(self) -> str:
        """URL of the property billing token endpoint."""
        return self.base_url + AUTH_PATH

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Serve on ``host:port`` (port 0 picks a free one; see :attr:`port`)."""
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        self.host = host
        self.port = int(runner.addresses[0][1])
        logger.info("simulator listening on %s", self.base_url)

    async def stop(self) -> None:
        """Stop serving (idempotent)."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def run_scenario(self, tick_interval: float) -> None:
        """Advance the scenario one step every ``tick_interval`` seconds, forever."""
        while True:
            self.scenario.tick()
            await asyncio.sleep(tick_interval)


def _describe(sim: Simulator) -> str:
    key = sim.api_key
    headers = sorted({h["propertyUUId"] for h in sim.state.billing_headers.values()})
    prop = headers[0] if headers else "<propertyUUId>"
    admin = ";".join(sim.administrator_ids)
    lines = [
        f"billnotify simulator started at {datetime.now().isoformat(timespec='seconds')}",
        f"billing platform: {sim.billing_base_url} (api key {key})",
        f"property billing: {sim.property_base_url} (auth {sim.auth_url}, "
        f"username {sim.username}, password {sim.password}, administrator ids {admin})",
        f"properties: {', '.join(headers) or '(none yet)'}",
        "",
        "try:",
        f"  curl -H 'Authorization: Bearer {key}' {sim.billing_base_url}/billingTasks/",
        f"  curl -H 'Authorization: Bearer {key}' "
        f"'{sim.billing_base_url}/invoices/?includeUnsent=1'",
        f"  TOKEN=$(curl -s -X POST -H 'Content-Type: application/json' "
        f'-d \'{{"username": "{sim.username}", "password": "{sim.password}"}}\' {sim.auth_url})',
        f"  curl -H \"Authorization: Bearer $TOKEN\" -H 'istaAdministratorIds: {admin}' "
        f"{sim.property_base_url}/BillingHeaders/{prop}",
        f"  curl {sim.base_url}/_sim/state",
    ]
    return "\n".join(lines)


async def run_simulate(host: str, port: int, tick: float, seed: int, api_key: str) -> None:
    """Run the simulator for ``billnotify simulate`` until cancelled.

    Starts serving, populates the scenario's starting data, prints the URLs,
    credentials and example ``curl`` commands, then ticks the scenario every
    ``tick`` seconds.
    """
    sim = Simulator(api_key=api_key, seed=seed)
    sim.scenario.populate()
    await sim.start(host, port)
    try:
        print(_describe(sim), flush=True)
        await sim.run_scenario(tick)
    finally:
        await sim.stop()
