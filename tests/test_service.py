"""The service as an operator runs it (SPEC §3, §5, §6): readiness that follows the
broker and the sources, every metric family present and moving, a SIGTERM that drains
and loses nothing, and logs that never show a secret.

Everything is real and on loopback: mosquitto, the billing simulator over HTTP, webhook
receivers as aiohttp apps, the health endpoint queried with aiohttp, and ``billnotify
run`` as a subprocess where signals and stderr matter.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import signal
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from billnotify.app import Service
from billnotify.config import Config, parse_config
from billnotify.config.models import DEFAULT_TEMPLATES
from billnotify.simulator import Simulator
from conftest import Mosquitto, Subscriber
from conftest import free_port as free_tcp_port
from servers import PYTHON, serving, sim_source, toml_config
from service_harness import started_service, until

TASKS_PATH = "/backend/api/v1/billingTasks"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"service-test-signing-key-0123456789").decode()
FAMILIES = (
    "billnotify_polls_total",
    "billnotify_poll_errors_total",
    "billnotify_poll_duration_seconds",
    "billnotify_source_up",
    "billnotify_events_total",
    "billnotify_log_backlog_events",
    "billnotify_mqtt_publish_lag_seconds",
    "billnotify_mqtt_connected",
    "billnotify_mqtt_published_events_total",
    "billnotify_deliveries",
    "billnotify_delivery_attempts_total",
    "billnotify_retry_queue_depth",
    "billnotify_oldest_pending_delivery_age_seconds",
    "billnotify_ready",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
    "python_gc_collections_total",
    "python_info",
)


# -- helpers -----------------------------------------------------------------------------


class Receiver:
    """A webhook receiver: records every request; answers ``status`` after ``delay``."""

    def __init__(self, *, status: int = 200, delay: float = 0.0) -> None:
        self.status = status
        self.delay = delay
        self.started: list[dict[str, str]] = []
        self.answered: list[dict[str, str]] = []
        self._serving = contextlib.AsyncExitStack()
        self.url = ""

    @property
    def in_flight(self) -> int:
        return len(self.started) - len(self.answered)

    async def _hook(self, request: web.Request) -> web.Response:
        await request.read()
        headers = dict(request.headers)
        self.started.append(headers)
        if self.delay:
            await asyncio.sleep(self.delay)  # the receiver's behaviour, not a test wait
        self.answered.append(headers)
        return web.json_response({"status": self.status}, status=self.status)

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self.url = await self._serving.enter_async_context(serving(app)) + "/hook"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._serving.aclose()


@contextlib.asynccontextmanager
async def echoing_platform() -> AsyncIterator[str]:
    """A platform that refuses every key and quotes it back in its error (some do):
    the key reaches an error message, and the log must redact it."""

    async def refuse(request: web.Request) -> web.Response:
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        return web.json_response({"error": f"unknown API key {key}"}, status=401)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", refuse)
    async with serving(app) as base:
        yield f"{base}/backend/api/v1"


@contextlib.asynccontextmanager
async def simulator(**kwargs: Any) -> AsyncIterator[Simulator]:
    sim = Simulator(page_max=50, **kwargs)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


def raw_config(
    tmp_path: Path,
    sim: Simulator,
    broker: Mosquitto,
    prefix: str,
    *,
    webhook_url: str | None = None,
    rule_on: str = "billing_task.status_changed",
) -> dict[str, Any]:
    """A config with one source polled every 200 ms (and a webhook rule when asked)."""
    (tmp_path / "templates").mkdir(exist_ok=True)
    raw: dict[str, Any] = {
        "service": {
            "name": "servicetest",
            "state": "state.db",
            "http": "127.0.0.1:0",
            "log_level": "info",
            "shutdown_grace": "5s",
        },
        "mqtt": {
            "url": broker.url(),
            "client_id": f"billnotify-{prefix}",
            "prefix": prefix,
            "reconnect_max": "500ms",
        },
        "sources": [
            sim_source(
                sim, poll_interval="200ms", watch=["billing_tasks"], timeout="2s", max_attempts=1
            )
        ],
    }
    if webhook_url is not None:
        raw["webhooks"] = [
            {
                "name": "ops",
                "url": webhook_url,
                "secret": WEBHOOK_SECRET,
                "allow_private": True,
                "timeout": "5s",
                "retry_schedule": ["0s", "1s"],
            }
        ]
        raw["rules"] = [
            {"name": "alert", "on": [rule_on], "actions": [{"type": "webhook", "endpoint": "ops"}]}
        ]
    return raw


@contextlib.asynccontextmanager
async def running(config: Config) -> AsyncIterator[tuple[Service, Callable[..., Any]]]:
    """Run a :class:`Service` in this loop; yields it and ``get(path) -> (status, text)``."""
    async with (
        started_service(config) as service,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
    ):
        assert service.health is not None
        base = f"http://127.0.0.1:{service.health.port}"

        async def get(path: str) -> tuple[int, str]:
            async with http.get(base + path) as response:
                return response.status, await response.text()

        yield service, get


def metric_samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text -> {family or sample name: [(labels, value)]}.

    Families are listed under their exported names (``*_total`` for counters) and every
    sample under its own name (``*_bucket``, ``*_count``...).
    """
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        name = family.name + ("_total" if family.type == "counter" else "")
        out.setdefault(name, [])
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def total(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(
        value
        for sample_labels, value in samples.get(name, [])
        if all(sample_labels.get(k) == v for k, v in labels.items())
    )


def query(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read the service's state file (WAL: a reader never blocks the writer)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def event_ids(sub: Subscriber) -> set[str]:
    """CloudEvent ids received on ``…/events/…`` topics."""
    ids = set()
    for message in sub.messages:
        if "/events/" in message.topic.value:
            payload = message.payload
            assert isinstance(payload, bytes | bytearray)
            ids.add(json.loads(payload)["id"])
    return ids


@contextlib.contextmanager
def billnotify_run(
    config_file: Path, stderr: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``billnotify run -c FILE`` as a subprocess, stderr to a file; killed if left running."""
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            [PYTHON, "-m", "billnotify", "run", "-c", str(config_file)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, **(env or {})},
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


async def stop_gracefully(proc: subprocess.Popen[bytes], within: float) -> tuple[int, float]:
    """SIGTERM; returns (exit status, seconds it took)."""
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    status = await asyncio.to_thread(proc.wait, within + 10)
    return status, time.monotonic() - began


# -- 1. readiness ------------------------------------------------------------------------


async def test_readyz_follows_the_broker(
    tmp_path: Path, make_mosquitto: Callable[[], Mosquitto], mqtt_prefix: str
) -> None:
    broker = make_mosquitto()
    async with simulator() as sim:
        sim.state.add_billing_task(status="Pending")
        config = parse_config(raw_config(tmp_path, sim, broker, mqtt_prefix), base_dir=tmp_path)
        async with running(config) as (_service, get):

            async def readyz(expected: int) -> dict[str, Any] | None:
                status, text = await get("/readyz")
                return json.loads(text) if status == expected else None

            body = await until(lambda: readyz(200), "ready after the first poll")
            assert body["status"] == "ready"
            assert body["checks"] == {
                "source:acme/billing_tasks": "ok",
                "store": "ok",
                "mqtt": "ok",
            }

            await asyncio.to_thread(broker.stop)
            body = await until(lambda: readyz(503), "not ready while the broker is down")
            assert body["status"] == "not ready"
            assert body["checks"]["mqtt"] == "disconnected"
            assert body["checks"]["source:acme/billing_tasks"] == "ok"
            assert await get("/healthz") == (200, '{"status": "ok"}')  # alive all along

            await asyncio.to_thread(broker.start)
            body = await until(lambda: readyz(200), "ready again once the broker is back")
            assert body["checks"]["mqtt"] == "ok"


async def test_readyz_reports_a_failing_source(
    tmp_path: Path, mosquitto: Mosquitto, mqtt_prefix: str
) -> None:
    interval = 0.5
    async with simulator() as sim:
        sim.state.add_billing_task(status="Pending")
        raw = raw_config(tmp_path, sim, mosquitto, mqtt_prefix)
        raw["sources"][0]["poll_interval"] = f"{interval * 1000:g}ms"
        config = parse_config(raw, base_dir=tmp_path)
        async with running(config) as (service, get):
            (poller,) = service.pollers

            async def readyz(expected: int) -> dict[str, Any] | None:
                status, text = await get("/readyz")
                return json.loads(text) if status == expected else None

            await until(lambda: readyz(200), "ready after the first poll")

            # one failed poll among successes is not yet a problem
            sim.faults.add(TASKS_PATH, kind="503", count=1)

            async def failed_once() -> bool:
                return poller.last_error is not None

            await until(failed_once, "a failed poll")
            body = await readyz(200)
            assert body is not None, "one failed poll made the service not ready"
            assert body["checks"]["source:acme/billing_tasks"] == "ok"

            # failing for three intervals is
            sim.faults.add(TASKS_PATH, kind="503", count=-1)
            failing_since = time.monotonic()
            body = await until(lambda: readyz(503), "not ready once the source keeps failing")
            # three intervals after the last success: at least two polls have failed
            assert time.monotonic() - failing_since >= 1.5 * interval
            check = body["checks"]["source:acme/billing_tasks"]
            assert "Service Unavailable [HTTP 503" in check, check
            assert body["checks"]["mqtt"] == "ok"
            assert body["checks"]["store"] == "ok"
            _, text = await get("/metrics")
            samples = metric_samples(text)
            assert total(samples, "billnotify_source_up", source="acme") == 0
            assert total(samples, "billnotify_ready") == 0
            assert await get("/healthz") == (200, '{"status": "ok"}')

            sim.faults.clear()
            body = await until(lambda: readyz(200), "ready again once the source answers")
            assert body["checks"]["source:acme/billing_tasks"] == "ok"


# -- 2. metrics --------------------------------------------------------------------------


async def test_every_metric_family_is_exported_and_moves(
    tmp_path: Path, mosquitto: Mosquitto, mqtt_prefix: str
) -> None:
    async with Receiver() as receiver, simulator() as sim:
        ids = [sim.state.add_billing_task(status="Running")["id"] for _ in range(3)]
        raw = raw_config(tmp_path, sim, mosquitto, mqtt_prefix, webhook_url=receiver.url)
        config = parse_config(raw, base_dir=tmp_path)
        async with running(config) as (_service, get):

            async def scrape() -> dict[str, list[tuple[dict[str, str], float]]]:
                status, text = await get("/metrics")
                assert status == 200
                return metric_samples(text)

            async def baseline_ready() -> dict[str, list[tuple[dict[str, str], float]]] | None:
                samples = await scrape()  # never calls /readyz: the gauge keeps up itself
                return samples if total(samples, "billnotify_ready") == 1 else None

            before = await until(baseline_ready, "billnotify_ready 1 after the baseline")
            assert total(before, "billnotify_events_total") == 0  # a baseline emits nothing

            sim.faults.add(TASKS_PATH, kind="503", count=1)  # one failed poll
            for task_id in ids:
                sim.state.update_billing_task(task_id, status="Failed")

            async def settled() -> dict[str, list[tuple[dict[str, str], float]]] | None:
                samples = await scrape()
                done = total(samples, "billnotify_deliveries", action="webhook", status="succeeded")
                return samples if done == len(ids) else None

            after = await until(settled, "three webhooks delivered")
            missing = [name for name in FAMILIES if name not in after]
            assert not missing, missing
            assert len(receiver.answered) == len(ids)

    labels = {"source": "acme", "resource": "billing_tasks"}
    moved = {
        name: (total(before, name, **want), total(after, name, **want))
        for name, want in (
            ("billnotify_polls_total", labels),
            ("billnotify_poll_errors_total", labels),
            ("billnotify_poll_duration_seconds_count", labels),
            ("billnotify_events_total", {"type": "billing_task.status_changed"}),
            ("billnotify_mqtt_published_events_total", {}),
            ("billnotify_deliveries", {"action": "webhook"}),
            ("billnotify_delivery_attempts_total", {"action": "webhook", "outcome": "success"}),
        )
    }
    assert all(b < a for b, a in moved.values()), moved
    assert moved["billnotify_poll_errors_total"][1] - moved["billnotify_poll_errors_total"][0] == 1
    assert moved["billnotify_events_total"][1] == len(ids)
    assert moved["billnotify_delivery_attempts_total"][1] == len(ids)
    assert total(after, "billnotify_source_up", **labels) == 1
    assert total(after, "billnotify_mqtt_connected") == 1
    assert {lbl["consumer"] for lbl, _ in after["billnotify_log_backlog_events"]} == {
        "mqtt",
        "rules",
    }
    for gauge in (
        "billnotify_retry_queue_depth",
        "billnotify_oldest_pending_delivery_age_seconds",
        "billnotify_mqtt_publish_lag_seconds",
    ):
        assert total(after, gauge) >= 0, gauge


# -- 3. graceful shutdown ----------------------------------------------------------------


async def test_sigterm_drains_deliveries_and_publishes_every_logged_event(
    tmp_path: Path,
    mosquitto: Mosquitto,
    mqtt_prefix: str,
    mqtt_subscriber: Callable[..., contextlib.AbstractAsyncContextManager[Subscriber]],
) -> None:
    grace = 5.0
    db = tmp_path / "state.db"
    async with (
        Receiver(delay=0.5) as receiver,
        simulator() as sim,
        mqtt_subscriber(mosquitto, f"{mqtt_prefix}/#") as sub,
    ):
        ids = [sim.state.add_billing_task(status="Pending")["id"] for _ in range(20)]
        raw = raw_config(tmp_path, sim, mosquitto, mqtt_prefix, webhook_url=receiver.url)
        raw["service"]["http"] = ""
        raw["service"]["shutdown_grace"] = f"{grace:g}s"
        config_file = tmp_path / "config.toml"
        config_file.write_text(toml_config(raw))

        async def churn() -> None:
            """Changes keep coming: priorities every 20 ms, a status now and then."""
            statuses = ("Running", "Failed", "Completed")
            step = 0
            while True:
                step += 1
                task_id = ids[step % len(ids)]
                if step % 8 == 0:
                    sim.state.update_billing_task(task_id, status=statuses[step % 3])
                else:
                    sim.state.update_billing_task(task_id, priority=str(step))
                await asyncio.sleep(0.02)  # the pace of the platform, not a test wait

        with billnotify_run(config_file, tmp_path / "stderr.log") as proc:
            await sub.wait_for(
                lambda _: sub.payloads(f"{mqtt_prefix}/status")[-1:] == [b"online"], timeout=15
            )
            changes = asyncio.create_task(churn())
            try:

                async def flowing() -> bool:
                    return receiver.in_flight > 0 and len(event_ids(sub)) >= 20

                await until(flowing, "events published and a webhook in flight", 15)
                in_flight_at_sigterm = receiver.in_flight
                status, took = await stop_gracefully(proc, grace)
            finally:
                changes.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await changes

        assert status == 0, (tmp_path / "stderr.log").read_text()[-3000:]
        assert took < grace, f"took {took:.1f}s to stop"
        assert in_flight_at_sigterm > 0
        assert receiver.in_flight == 0  # every request that was in flight got its answer

        # nothing lost: the log's end was acknowledged by the broker, and every event in
        # the log reached the subscriber
        ((last,),) = query(db, "SELECT coalesce(max(seq), 0) FROM events")
        ((position,),) = query(db, "SELECT seq FROM positions WHERE consumer = 'mqtt'")
        assert position == last
        logged = {row[0] for row in query(db, "SELECT id FROM events")}
        assert len(logged) >= 20

        async def all_received() -> bool:
            return logged <= event_ids(sub)

        await until(all_received, "every logged event received from the broker", 5)

    # the drain: no delivery left 'sending'; each one the receiver answered is recorded
    states = dict(query(db, "SELECT id, status FROM deliveries"))
    assert "sending" not in states.values(), states
    answered = {h["webhook-id"] for h in receiver.answered}
    assert answered and all(states[i] == "succeeded" for i in answered), (answered, states)

    # the retained availability is 'offline'
    async with mqtt_subscriber(mosquitto, f"{mqtt_prefix}/status") as status_sub:
        await status_sub.wait_for(lambda msgs: bool(msgs), timeout=5)
        assert status_sub.payloads(f"{mqtt_prefix}/status") == [b"offline"]


# -- 4. secrets --------------------------------------------------------------------------


def written_forms(secret: str) -> set[str]:
    """How a secret can appear in a log line: as is, JSON-escaped, or repr()-escaped."""
    return {secret, json.dumps(secret)[1:-1], repr(secret)[1:-1]}


@pytest.mark.parametrize(
    ("log_format", "rogue_key"),
    [
        ("text", "rogue-key-{token}"),
        ("json", "rogue-key-{token}"),
        pytest.param("json", 'rogue"key\\{token}', id="json-quote-in-key"),
    ],
)
async def test_secrets_never_reach_the_logs(
    tmp_path: Path, mosquitto: Mosquitto, mqtt_prefix: str, log_format: str, rogue_key: str
) -> None:
    """Every secret comes from the environment; debug logs of a source whose platform
    quotes the refused key back, a property source logging in, a failing webhook and an
    unreachable SMTP server never show one of them."""
    token = secrets.token_hex(6)
    env = {
        "ACME_API_KEY": f"acme-key-{token}",
        "ROGUE_API_KEY": rogue_key.format(token=token),
        "METERING_USER": f"metering-user-{token}",
        "METERING_PASSWORD": f"metering-password-{token}",
        "MQTT_PASSWORD": f"mqtt-password-{token}",
        "SMTP_PASSWORD": f"smtp-password-{token}",
        "HOOK_SECRET": "whsec_" + base64.b64encode(f"hook-key-{token}".encode()).decode(),
    }
    leaks = [*env.values(), env["HOOK_SECRET"].removeprefix("whsec_")]
    prop = "2eff1042c50c1eda889e61573e3c194c"
    templates = DEFAULT_TEMPLATES
    async with (
        Receiver(status=500) as receiver,
        echoing_platform() as rogue_url,
        simulator(
            api_key=env["ACME_API_KEY"],
            username=env["METERING_USER"],
            password=env["METERING_PASSWORD"],
        ) as sim,
    ):
        task_id = sim.state.add_billing_task(status="Running")["id"]
        sim.state.add_billing_header(prop)
        acme = {
            "kind": "billing_platform",
            "base_url": sim.billing_base_url,
            "poll_interval": "200ms",
            "watch": ["billing_tasks"],
            "timeout": "2s",
            "max_attempts": 1,
        }
        raw: dict[str, Any] = {
            "service": {
                "state": "state.db",
                "templates": str(templates),
                "http": "",
                "log_level": "debug",
                "log_format": log_format,
                "shutdown_grace": "2s",
            },
            "mqtt": {
                "url": mosquitto.url(),
                "client_id": f"billnotify-{mqtt_prefix}",
                "prefix": mqtt_prefix,
                "username": "billnotify",
                "password": "env:MQTT_PASSWORD",
            },
            "sources": [
                {"name": "acme", "api_key": "env:ACME_API_KEY", **acme},
                {"name": "rogue", **acme, "api_key": "env:ROGUE_API_KEY", "base_url": rogue_url},
                {
                    "name": "metering",
                    "kind": "property_billing",
                    "base_url": sim.property_base_url,
                    "auth_url": sim.auth_url,
                    "username": "env:METERING_USER",
                    "password": "env:METERING_PASSWORD",
                    "administrator_ids": ["1234"],
                    "properties": [prop],
                    "poll_interval": "1s",
                },
            ],
            "smtp": {
                "host": "127.0.0.1",
                "port": free_tcp_port(),
                "username": "billing@example.com",
                "password": "env:SMTP_PASSWORD",
                "allow_plaintext_auth": True,  # it would go out: it must not be logged
                "from": "Billing <billing@example.com>",
                "timeout": "2s",
            },
            "webhooks": [
                {
                    "name": "ops",
                    "url": receiver.url,
                    "secret": "env:HOOK_SECRET",
                    "allow_private": True,
                    "retry_schedule": ["0s", "500ms"],
                }
            ],
            "rules": [
                {
                    "name": "alert",
                    "on": ["billing_task.status_changed"],
                    "actions": [
                        {"type": "webhook", "endpoint": "ops"},
                        {
                            "type": "email",
                            "to": ["ops@example.com"],
                            "template": "task_failed",
                            "at_least_once": True,
                        },
                    ],
                }
            ],
        }
        config_file = tmp_path / "config.toml"
        config_file.write_text(toml_config(raw))
        stderr = tmp_path / "stderr.log"
        with billnotify_run(config_file, stderr, env) as proc:

            async def logged(*needles: str) -> bool:
                text = stderr.read_text(errors="replace")
                if proc.poll() is not None:
                    pytest.fail(f"billnotify exited with {proc.returncode}:\n{text[-3000:]}")
                return all(n in text for n in needles)

            await until(
                lambda: logged("poll acme/billing_tasks", "poll metering/", "MQTT broker"),
                "the baseline of both sources",
                15,
            )
            sim.state.update_billing_task(task_id, status="Failed")
            await until(
                lambda: logged(
                    "poll rogue/billing_tasks failed",
                    "attempt 2: retryable -> dead",  # the webhook, twice 500
                    "(alert ops@example.com) attempt 1: retryable",  # SMTP refused
                ),
                "a failing source, webhook and SMTP server in the log",
                15,
            )
            status, _ = await stop_gracefully(proc, 2)

    text = stderr.read_text(errors="replace")
    assert status == 0, text[-3000:]
    assert len(receiver.answered) == 2
    assert receiver.answered[0]["webhook-signature"].startswith("v1,")
    assert ("DEBUG" if log_format == "text" else '"level": "debug"') in text
    found = [form for secret in leaks for form in written_forms(secret) if form in text]
    assert not found, f"secrets in the log: {found}"
    assert "unknown API key **********" in text  # the echoed key did reach a message
    if log_format == "json":
        lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        dead = next(line for line in lines if "retryable -> dead" in line["message"])
        assert dead["rule"] == "alert"
        assert dead["delivery_id"].startswith("dlv_") and dead["event_id"].startswith("evt_")
        polled = next(
            line for line in lines if "poll rogue/billing_tasks failed" in line["message"]
        )
        assert polled["source"] == "rogue"
