"""Inbound platform webhooks (SPEC §7.3): ``POST /hooks/{source}`` as an operator's
platform and an attacker reach it.

Only a source with a ``hook_secret`` accepts hooks: a ``whsec_`` secret wants a Standard
Webhooks signature (made here with the ``standardwebhooks`` package, not the project's
own signing), any other a Bearer token. Refused hooks trigger nothing, bodies stop at
64 KiB, and a flood of valid hooks costs the platform a few polls. Everything is real and
on loopback: the service's HTTP server, the billing simulator over HTTP (which counts
the list requests it serves) and mosquitto.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import secrets
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from billnotify.app import Service
from billnotify.config import parse_config
from billnotify.health import HealthServer
from billnotify.hooks import hook_auth
from billnotify.metrics import Metrics
from billnotify.secrets import Secret
from billnotify.simulator import Simulator
from billnotify.sources import Poller, PollStats
from conftest import Mosquitto, Subscriber
from servers import sim_source

HOOK_SECRET = "whsec_" + base64.b64encode(b"inbound-hook-key-0123456789abcdef").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"somebody-else-key-0123456789abcd").decode()
TOKEN = "hook-token-" + "x7Qp2vRk9LmZ3wYt"
TASKS = "/backend/api/v1/billingTasks"

Post = Callable[..., Awaitable[tuple[int, str]]]


class CountingSimulator:
    """The billing simulator, counting the list requests (``GET`` of a collection) it serves."""

    def __init__(self) -> None:
        self.sim = Simulator(page_max=50)
        self.lists = 0

        @web.middleware
        async def count(request: web.Request, handler: Any) -> web.StreamResponse:
            if request.method == "GET" and request.path.rstrip("/") == TASKS:
                self.lists += 1
            response: web.StreamResponse = await handler(request)
            return response

        self.sim.app().middlewares.insert(0, count)

    async def __aenter__(self) -> CountingSimulator:
        await self.sim.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.sim.stop()


def _config(
    tmp_path: Path,
    sim: Simulator,
    *,
    hook_secret: str | None,
    broker: Mosquitto | None = None,
    prefix: str = "hooks",
) -> dict[str, Any]:
    """One source that polls tasks only once an hour: every other poll is a hook's."""
    (tmp_path / "templates").mkdir(exist_ok=True)
    source = sim_source(
        sim, poll_interval="1h", watch=["billing_tasks"], timeout="2s", max_attempts=1
    )
    if hook_secret is not None:
        source["hook_secret"] = hook_secret
    mqtt: dict[str, Any] = {"enabled": False}
    if broker is not None:
        mqtt = {"url": broker.url(), "client_id": f"billnotify-{prefix}", "prefix": prefix}
    return {
        "service": {"name": "hooktest", "state": "state.db", "http": "127.0.0.1:0"},
        "mqtt": mqtt,
        "sources": [source],
    }


@contextlib.asynccontextmanager
async def running(raw: dict[str, Any], tmp_path: Path) -> AsyncIterator[tuple[Service, str]]:
    """Run the service in this loop until its baseline poll is done; yields it and its
    ``http://127.0.0.1:PORT``."""
    service = Service(parse_config(raw, base_dir=tmp_path))
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop), name="service")
    try:
        async with asyncio.timeout(15):
            while not (service.pollers and service.pollers[0].polls and service.health):
                if task.done():
                    task.result()  # a start-up error, raised here
                await asyncio.sleep(0.01)
        assert service.health is not None
        yield service, f"http://127.0.0.1:{service.health.port}"
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@contextlib.asynccontextmanager
async def poster(base: str) -> AsyncIterator[Post]:
    """``post(path, body, headers) -> (status, text)`` on one session."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:

        async def post(
            path: str, body: Any = b"{}", headers: dict[str, str] | None = None
        ) -> tuple[int, str]:
            async with http.post(base + path, data=body, headers=headers or {}) as response:
                return response.status, await response.text()

        yield post


def signed(body: bytes, *, secret: str = HOOK_SECRET, at: float | None = None) -> dict[str, str]:
    """Standard Webhooks headers for ``body``, made by the reference library."""
    message_id = "msg_" + secrets.token_hex(8)
    when = datetime.fromtimestamp(time.time() if at is None else at, tz=UTC)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, when, body.decode()),
        "Content-Type": "application/json",
    }


async def stays(count: Callable[[], int], seconds: float = 1.3) -> int:
    """``count()`` once ``seconds`` passed; fails early if it moved meanwhile.

    A refused hook is proven to trigger nothing by watching for longer than the debounce
    gap (1 s) in which a triggered poll would have started.
    """
    before = count()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert count() == before, "a poll started that nothing valid asked for"
        await asyncio.sleep(0.02)
    return before


BODY = json.dumps({"type": "BillingTask.Modified", "id": "1"}).encode()


# -- who may trigger a poll ----------------------------------------------------------------


async def test_without_hook_secret_every_hook_answers_404(tmp_path: Path) -> None:
    async with CountingSimulator() as counting:
        raw = _config(tmp_path, counting.sim, hook_secret=None)
        async with running(raw, tmp_path) as (service, base), poster(base) as post:
            lists = counting.lists
            assert (await post("/hooks/acme", BODY))[0] == 404
            assert (await post("/hooks/acme", BODY, signed(BODY)))[0] == 404
            assert (await post("/hooks/acme", BODY, {"Authorization": f"Bearer {TOKEN}"}))[0] == 404
            assert (await post("/hooks/nope", BODY))[0] == 404
            await stays(lambda: counting.lists)
            assert counting.lists == lists
            assert service.pollers[0].polls == 1  # the baseline only


async def test_signed_hook_polls_and_the_change_reaches_mqtt_at_once(
    tmp_path: Path,
    mosquitto: Mosquitto,
    mqtt_prefix: str,
    mqtt_subscriber: Callable[..., contextlib.AbstractAsyncContextManager[Subscriber]],
) -> None:
    async with CountingSimulator() as counting:
        task = counting.sim.state.add_billing_task(status="Running")
        raw = _config(
            tmp_path, counting.sim, hook_secret=HOOK_SECRET, broker=mosquitto, prefix=mqtt_prefix
        )
        async with (
            running(raw, tmp_path) as (service, base),
            poster(base) as post,
            mqtt_subscriber(mosquitto, f"{mqtt_prefix}/events/#") as sub,
        ):
            await asyncio.sleep(1.0)  # past the debounce gap after the baseline poll
            counting.sim.state.update_billing_task(task["id"], status="Completed")
            began = time.monotonic()
            assert await post("/hooks/acme", BODY, signed(BODY)) == (
                202,
                '{"status": "poll scheduled"}',
            )
            topic = f"{mqtt_prefix}/events/acme/billing_task/{task['id']}/status_changed"
            await sub.wait_for(lambda messages: any(m.topic.value == topic for m in messages))
            latency = time.monotonic() - began
            assert latency < 0.5, f"hook -> MQTT took {latency:.3f}s (poll interval 1h)"
            print(f"hook -> event on MQTT: {latency * 1000:.0f} ms")
            async with asyncio.timeout(2):
                while service.pollers[0].polls < 2:
                    await asyncio.sleep(0.01)
            assert service.pollers[0].polls == 2

            # several signatures (a key rotation): any one of them may match
            headers = signed(BODY)
            stale = signed(BODY, secret=OTHER_SECRET)["webhook-signature"]
            headers["webhook-signature"] = f"{stale} v1,AAAA {headers['webhook-signature']}"
            assert (await post("/hooks/acme", BODY, headers))[0] == 202


async def test_bad_or_missing_signature_is_401_and_triggers_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with CountingSimulator() as counting:
        raw = _config(tmp_path, counting.sim, hook_secret=HOOK_SECRET)
        async with running(raw, tmp_path) as (service, base), poster(base) as post:
            good = signed(BODY)
            refused = [
                {},  # nothing
                {"Authorization": "Bearer " + HOOK_SECRET},  # the secret as a token
                signed(BODY, secret=OTHER_SECRET),  # another key
                {**good, "webhook-signature": "v1," + base64.b64encode(b"x" * 32).decode()},
                {**good, "webhook-signature": good["webhook-signature"].replace("v1,", "v2,")},
                {**good, "webhook-id": "msg_other"},  # signed for another id
                {**good, "webhook-timestamp": "soon"},
                {k: v for k, v in good.items() if k != "webhook-id"},
            ]
            for headers in refused:
                assert await post("/hooks/acme", BODY, headers) == (
                    401,
                    '{"error": "unauthorized"}',
                )
            # a signature over another body
            assert (await post("/hooks/acme", BODY + b" ", good))[0] == 401
            await stays(lambda: counting.lists)
            assert service.pollers[0].polls == 1

            # expired or future timestamps, though correctly signed (±5 min tolerance)
            for offset in (-400, 400):
                headers = signed(BODY, at=time.time() + offset)
                assert (await post("/hooks/acme", BODY, headers))[0] == 401
            await stays(lambda: counting.lists)
            assert service.pollers[0].polls == 1
            # inside the tolerance is fine
            assert (await post("/hooks/acme", BODY, signed(BODY, at=time.time() - 200)))[0] == 202
            async with asyncio.timeout(5):
                while service.pollers[0].polls < 2:
                    await asyncio.sleep(0.01)

    refusals = [r for r in caplog.records if "refused a hook" in r.getMessage()]
    assert len(refusals) == 1, "a burst of refused hooks is one log line"
    assert "acme" in refusals[0].getMessage()
    secret_key = HOOK_SECRET.removeprefix("whsec_")
    assert secret_key not in caplog.text and good["webhook-signature"] not in caplog.text


async def test_bearer_token_hooks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with CountingSimulator() as counting:
        raw = _config(tmp_path, counting.sim, hook_secret=TOKEN)
        async with running(raw, tmp_path) as (service, base), poster(base) as post:
            wrong = "hook-token-" + "wrongwrongwrong1"
            for headers in (
                {},
                {"Authorization": f"Bearer {wrong}"},
                {"Authorization": f"Bearer {TOKEN[:-1]}"},
                {"Authorization": f"Basic {TOKEN}"},
                {"Authorization": TOKEN},
                signed(BODY),  # a signature is no token
            ):
                assert (await post("/hooks/acme", BODY, headers))[0] == 401
            await stays(lambda: counting.lists)
            assert service.pollers[0].polls == 1

            lists = counting.lists
            assert (await post("/hooks/acme", BODY, {"Authorization": f"Bearer {TOKEN}"}))[0] == 202
            async with asyncio.timeout(2):
                while counting.lists == lists:
                    await asyncio.sleep(0.01)
    assert TOKEN not in caplog.text and wrong not in caplog.text


# -- what a hook may cost ----------------------------------------------------------------


async def test_bodies_over_64_kib_are_413_and_not_read(tmp_path: Path) -> None:
    async with CountingSimulator() as counting:
        raw = _config(tmp_path, counting.sim, hook_secret=HOOK_SECRET)
        async with running(raw, tmp_path) as (service, base), poster(base) as post:
            big = b'{"pad": "' + b"x" * (70 * 1024) + b'"}'
            assert (await post("/hooks/acme", big, signed(big)))[0] == 413
            at_limit = b"x" * (64 * 1024)
            assert (await post("/hooks/acme", at_limit, signed(at_limit)))[0] == 202

            # a streamed (chunked) body has no Content-Length: cut once past the cap
            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(70):
                    yield b"y" * 1024

            assert (await post("/hooks/acme", chunks(), signed(b"y" * 70 * 1024)))[0] == 413

            # a declared 50 MB body is refused from its headers, before any of it is sent
            port = service.health.port if service.health else 0
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(
                    b"POST /hooks/acme HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Length: 52428800\r\nContent-Type: application/json\r\n\r\n"
                )
                await writer.drain()
                async with asyncio.timeout(2):
                    status = await reader.readline()
                assert status.startswith(b"HTTP/1.1 413"), status

                # same for a chunked body that is still being sent past 64 KiB
                reader2, writer2 = await asyncio.open_connection("127.0.0.1", port)
                writer2.write(
                    b"POST /hooks/acme HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                )
                for _ in range(70):
                    writer2.write(b"400\r\n" + b"z" * 1024 + b"\r\n")
                await writer2.drain()
                async with asyncio.timeout(2):
                    status = await reader2.readline()
                assert status.startswith(b"HTTP/1.1 413"), status
                writer2.close()
            finally:
                writer.close()


async def test_a_trickled_body_is_cut_after_the_read_timeout() -> None:
    """A body sent a few bytes at a time cannot hold a connection for long (408)."""

    async def ready() -> tuple[bool, dict[str, Any]]:
        return True, {}

    hooked: list[str] = []
    server = HealthServer(
        "127.0.0.1",
        0,
        readiness=ready,
        metrics=Metrics(),
        hooks={"acme": hook_auth(Secret(TOKEN))},
        on_hook=hooked.append,
        hook_read_timeout=0.3,
    )
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"POST /hooks/acme HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
            + f"Authorization: Bearer {TOKEN}\r\n\r\n".encode()
            + b"0123456789"
        )
        await writer.drain()
        began = time.monotonic()
        async with asyncio.timeout(3):
            status = await reader.readline()
        assert status.startswith(b"HTTP/1.1 408"), status
        assert time.monotonic() - began < 2
        writer.close()
        assert hooked == []
    finally:
        await server.stop()


async def test_a_flood_of_valid_hooks_costs_a_few_polls(tmp_path: Path) -> None:
    async with CountingSimulator() as counting:
        counting.sim.state.add_billing_task(status="Running")
        raw = _config(tmp_path, counting.sim, hook_secret=HOOK_SECRET)
        async with running(raw, tmp_path) as (service, base), poster(base) as post:
            (poller,) = service.pollers

            async def hook() -> int:
                body = json.dumps({"id": secrets.token_hex(4)}).encode()
                return (await post("/hooks/acme", body, signed(body)))[0]

            # one hook: what one triggered (incremental) poll costs
            lists = counting.lists
            assert await hook() == 202
            async with asyncio.timeout(5):
                while poller.polls < 2:
                    await asyncio.sleep(0.01)
            per_poll = counting.lists - lists
            await asyncio.sleep(1.0)  # past the debounce gap
            lists, polls = counting.lists, poller.polls

            began = time.monotonic()
            statuses: list[int] = []
            for _ in range(50):  # 500 hooks in about a second, 10 at a time
                statuses += await asyncio.gather(*(hook() for _ in range(10)))
                await asyncio.sleep(max(0.0, began + (len(statuses) / 500) - time.monotonic()))
            flood = time.monotonic() - began
            assert statuses == [202] * 500
            # the queued poll starts at most 1 s after the one before: wait for it to end
            await asyncio.sleep(1.5)
            triggered = poller.polls - polls
            extra_lists = counting.lists - lists
            print(
                f"500 hooks in {flood:.2f}s -> {triggered} polls, {extra_lists} list requests"
                f" ({per_poll} per poll)"
            )
            # one poll at once, then at most one a second (a slow machine stretches the flood)
            most = 2 + int(flood)
            assert 1 <= triggered <= most, triggered
            assert extra_lists <= most * per_poll, extra_lists


class _SlowSync:
    """A resource whose polls wait until released (no platform needed)."""

    source = "acme"
    resource = "billing_tasks"

    def __init__(self) -> None:
        self.started = 0
        self.release = asyncio.Event()

    async def poll_once(self) -> PollStats:
        self.started += 1
        await self.release.wait()
        self.release.clear()
        return PollStats()


async def test_hooks_during_a_poll_queue_exactly_one_more() -> None:
    sync = _SlowSync()
    poller = Poller(sync, timedelta(hours=1), min_gap=timedelta(0))
    task = asyncio.create_task(poller.run())
    try:
        async with asyncio.timeout(5):
            while sync.started < 1:
                await asyncio.sleep(0.01)
            for _ in range(100):  # while the first poll runs: one queued, not 100
                poller.poll_now()
            sync.release.set()
            while sync.started < 2:
                await asyncio.sleep(0.01)
            sync.release.set()
            while poller.polls < 2:
                await asyncio.sleep(0.01)
        await stays(lambda: sync.started, 0.3)
        assert (sync.started, poller.polls) == (2, 2)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- config --------------------------------------------------------------------------------


async def _check(tmp_path: Path, hook_secret: str, env: dict[str, str]) -> tuple[int, str]:
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[service]
state = "state.db"
[mqtt]
enabled = false
[[sources]]
name = "acme"
kind = "billing_platform"
base_url = "https://acme.example.com/backend/api/v1"
api_key = "env:ACME_API_KEY"
hook_secret = "{hook_secret}"
[[sources]]
name = "metering"
kind = "property_billing"
base_url = "https://metering.example.com/api/v1"
auth_url = "https://auth.metering.example.com/users/authenticate"
username = "env:ACME_API_KEY"
password = "env:ACME_API_KEY"
administrator_ids = ["1234"]
properties = ["2eff1042c50c1eda889e61573e3c194c"]
hook_secret = "{hook_secret}"
"""
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "billnotify",
        "check",
        "-c",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={"PATH": "/usr/bin:/bin", "ACME_API_KEY": "k" * 20, **env},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_check_accepts_hook_secret_on_both_source_kinds(tmp_path: Path) -> None:
    code, out = await _check(tmp_path, "env:HOOK", {"HOOK": HOOK_SECRET})
    assert code == 0, out
    code, out = await _check(tmp_path, "env:HOOK", {"HOOK": TOKEN})
    assert code == 0, out

    code, out = await _check(tmp_path, "env:HOOK", {})
    assert code == 2
    assert "sources[0].hook_secret: environment variable HOOK is not set" in out
    assert "sources[1].hook_secret: environment variable HOOK is not set" in out
    code, out = await _check(tmp_path, "env:HOOK", {"HOOK": "short-token"})
    assert code == 2 and "sources[0].hook_secret: must be a 'whsec_' secret" in out, out
    assert "short-token" not in out
    code, out = await _check(tmp_path, "env:HOOK", {"HOOK": "whsec_not*base64"})
    assert code == 2 and "sources[0].hook_secret: the part after 'whsec_'" in out, out
    code, out = await _check(tmp_path, "literal-short", {})  # never echoed back
    assert code == 2 and "sources[0].hook_secret: must be" in out and "literal-short" not in out
