"""Two ``billnotify run --instance NAME --http HOST:PORT`` processes on one config and one
PostgreSQL state share the console's sessions (SPEC §7.4 with §7.1): a login at one is
accepted by the other (as behind a load balancer), survives a restart of the process
that made it, and a logout at either ends it at both.

Real parts: a private PostgreSQL server, the simulator over HTTP, the service as
subprocesses; an aiohttp client plays the browser, carrying only its cookie.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

import pg
from billnotify.console.auth import COOKIE
from billnotify.simulator import Simulator
from servers import PYTHON, free_port, sim_source, toml_config

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(pg.available() is not None, reason=str(pg.available())),
]

TOKEN = "console-token-" + "Vb3Nq8Ws5Ek1Yt7C"


class Instances:
    """``billnotify run`` processes by instance name, each on its own HTTP port."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.ports: dict[str, int] = {}
        self.procs: dict[str, asyncio.subprocess.Process] = {}

    async def start(self, name: str) -> str:
        """Start (or start again) instance ``name``; returns its console's URL once it
        answers."""
        port = self.ports.setdefault(name, free_port())
        self.procs[name] = await asyncio.create_subprocess_exec(
            PYTHON,
            "-m",
            "billnotify",
            "run",
            "-c",
            str(self.config),
            "--instance",
            name,
            "--http",
            f"127.0.0.1:{port}",
            stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, "BN_TEST_CONSOLE_TOKEN": TOKEN},
        )
        url = f"http://127.0.0.1:{port}"
        async with asyncio.timeout(30):
            while True:
                assert self.procs[name].returncode is None, f"instance {name} ended"
                try:
                    async with aiohttp.ClientSession() as http, http.get(f"{url}/login") as r:
                        if r.status == 200:
                            return url
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)

    async def stop(self, name: str) -> None:
        """SIGTERM instance ``name`` and wait for it to end."""
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        assert proc.returncode == 0, f"instance {name} ended with {proc.returncode}"

    async def close(self) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


@pytest.fixture
async def instances(tmp_path: Path) -> AsyncIterator[Instances]:
    sim = Simulator(page_max=50)
    await sim.start()
    config = tmp_path / "config.toml"
    raw = {
        "service": {
            "name": "bn-sessions",
            "state": pg.shared().database(),
            "http": "127.0.0.1:1",
            "log_level": "warning",
            "console_token": "env:BN_TEST_CONSOLE_TOKEN",
            "shutdown_grace": "2s",
        },
        "mqtt": {"enabled": False},
        "sources": [sim_source(sim, poll_interval="500ms", watch=["billing_tasks"])],
    }
    config.write_text(toml_config(raw))
    running = Instances(config)
    try:
        yield running
    finally:
        await running.close()
        await sim.stop()


def _browser(cookie: str | None = None) -> aiohttp.ClientSession:
    headers = {"Cookie": f"{COOKIE}={cookie}"} if cookie else None
    return aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), headers=headers)


async def _who(url: str, cookie: str) -> str | None:
    """Who the console at ``url`` takes ``cookie`` for (None: sent to the login)."""
    async with _browser(cookie) as http, http.get(f"{url}/", allow_redirects=False) as r:
        if r.status == 303:
            return None
        assert r.status == 200
        found = re.search(r"console:[A-Za-z0-9._@-]+", await r.text())
        return found.group(0) if found else "(no operator named)"


async def test_a_login_at_one_instance_holds_at_the_other_and_across_a_restart(
    instances: Instances,
) -> None:
    a = await instances.start("a")
    b = await instances.start("b")
    async with (
        _browser() as http,
        http.post(f"{a}/login", data={"token": TOKEN, "name": "ann"}, allow_redirects=False) as r,
    ):
        assert r.status == 303
        cookie = r.cookies[COOKIE].value

    assert await _who(b, cookie) == "console:ann"
    await instances.stop("a")
    assert await _who(b, cookie) == "console:ann"
    a = await instances.start("a")
    assert await _who(a, cookie) == "console:ann"

    async with _browser(cookie) as http:
        async with http.get(f"{a}/") as r:
            found = re.search(r'name="csrf" value="([^"]+)"', await r.text())
        assert found
        async with http.post(
            f"{b}/logout", data={"csrf": found.group(1)}, allow_redirects=False
        ) as r:
            assert (r.status, r.headers["Location"]) == (303, "/login")
    assert await _who(a, cookie) is None
    assert await _who(b, cookie) is None
