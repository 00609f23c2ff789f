"""``billnotify demo``, its sinks, and the example ``config.toml`` at the repository root."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import aiohttp
import aiomqtt
import aiosmtplib
import pytest
from rich.console import Console
from standardwebhooks import Webhook

from billnotify.config import load_config
from billnotify.demo.configfile import DemoPeers, templates_folder, write_demo_config
from billnotify.demo.sinks import SmtpSink, WebhookSink, verify_signature
from billnotify.demo.view import DemoInfo, DemoMonitor, PlainReporter, render_live
from billnotify.store import MemoryStore
from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config.toml"
SECRET = "whsec_" + base64.b64encode(b"a test secret for the demo sink").decode()
EXAMPLE_ENV = {
    "BILLNOTIFY_SIM_API_KEY": "sim-key",
    "BILLNOTIFY_SIM_USERNAME": "sim",
    "BILLNOTIFY_SIM_PASSWORD": "sim-password",
    "BILLNOTIFY_WEBHOOK_SECRET": "whsec_ZGVtby1zZWNyZXQtZm9yLWJpbGxub3RpZnktd2ViaG9va3M=",
}


def _billnotify(
    *args: str, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "billnotify", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("BILLNOTIFY_")}


# -- the example config ------------------------------------------------------------------


def test_example_config_passes_check_with_the_documented_variables() -> None:
    result = _billnotify("check", "-c", str(EXAMPLE), env=_clean_env() | EXAMPLE_ENV, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "config OK" in result.stdout


def test_example_config_documents_every_variable_it_reads() -> None:
    text = EXAMPLE.read_text()
    settings = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    used = set(re.findall(r'"env:([A-Z0-9_]+)"', settings))
    assert used == set(EXAMPLE_ENV)
    for name, value in EXAMPLE_ENV.items():
        assert f"export {name}={value}" in text


def test_example_config_without_the_variables_names_them() -> None:
    result = _billnotify("check", "-c", str(EXAMPLE), env=_clean_env(), timeout=60)
    assert result.returncode == 2
    for name in EXAMPLE_ENV:
        assert name in result.stderr


def test_demo_config_runs_the_example_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in EXAMPLE_ENV.items():
        monkeypatch.setenv(name, value)
    example = load_config(EXAMPLE)
    templates = templates_folder()
    assert templates is not None
    peers = DemoPeers(
        billing_base_url="http://127.0.0.1:1/backend/api/v1",
        property_base_url="http://127.0.0.1:1/api/v1",
        auth_url="http://127.0.0.1:1/users/authenticate",
        api_key="sim-key",
        username="sim",
        password="sim-password",
        administrator_ids=("1234",),
        properties=("2eff1042c50c1eda889e61573e3c194c",),
        mqtt_port=1883,
        smtp_port=8025,
        webhook_base_url="http://127.0.0.1:9000",
        webhook_secret=SECRET,
        http_port=9464,
        templates=templates,
    )
    demo = load_config(write_demo_config(tmp_path, peers))
    assert demo.rules == example.rules
    assert [s.name for s in demo.sources] == [s.name for s in example.sources]
    assert [w.name for w in demo.webhooks] == [w.name for w in example.webhooks]
    assert demo.mqtt.embedded and demo.mqtt.protocol == 4
    assert demo.webhooks[0].secret.reveal() == SECRET
    assert SECRET not in (tmp_path / "config.toml").read_text()


# -- the sinks ---------------------------------------------------------------------------


async def test_webhook_sink_accepts_standard_webhooks_and_rejects_forgeries() -> None:
    sink = WebhookSink(SECRET)
    await sink.start()
    try:
        body = b'{"type": "invoice.paid", "subject": "invoices/5001"}'
        now = int(time.time())
        signed = Webhook(SECRET).sign("msg_1", _utc(now), body.decode())
        good = {"webhook-id": "msg_1", "webhook-timestamp": str(now), "webhook-signature": signed}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{sink.base_url}/hooks/x", data=body, headers=good) as resp:
                assert resp.status == 204
            forged = good | {"webhook-signature": "v1," + base64.b64encode(b"x" * 32).decode()}
            async with http.post(f"{sink.base_url}/hooks/x", data=body, headers=forged) as resp:
                assert resp.status == 401
            async with http.post(
                f"{sink.base_url}/hooks/x", data=body + b" ", headers=good
            ) as resp:
                assert resp.status == 401
        assert [r.valid for r in sink.received] == [True, False, False]
        assert sink.received[0].summary == "invoice.paid invoices/5001"
        assert sink.received[0].path == "/hooks/x"
    finally:
        await sink.stop()


def test_verify_signature_rejects_stale_timestamps() -> None:
    body = b"{}"
    signed = Webhook(SECRET).sign("msg_2", _utc(1_000_000), body.decode())
    headers = {"webhook-id": "msg_2", "webhook-timestamp": "1000000", "webhook-signature": signed}
    assert verify_signature(SECRET, headers, body, now=1_000_010) == (True, "")
    valid, reason = verify_signature(SECRET, headers, body, now=1_000_000 + 3600)
    assert not valid and "too far" in reason


async def test_smtp_sink_keeps_what_it_receives(tmp_path: Path) -> None:
    sink = SmtpSink(folder=tmp_path / "mail")
    await sink.start()
    try:
        message = EmailMessage()
        message["From"] = "billing@example.com"
        message["To"] = "ops@example.com"
        message["Subject"] = "Billing task 7 failed"
        message.set_content("see the activity log")
        await aiosmtplib.send(message, hostname="127.0.0.1", port=sink.port, timeout=10)
        assert [(m.recipients, m.subject) for m in sink.received] == [
            (("ops@example.com",), "Billing task 7 failed")
        ]
        assert b"see the activity log" in (tmp_path / "mail" / "00001.eml").read_bytes()
    finally:
        await sink.stop()


def _utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def test_the_live_view_and_the_plain_lines_show_the_console_address() -> None:
    info = DemoInfo(
        folder="/tmp/demo",
        simulator="http://127.0.0.1:8080",
        mqtt_host="127.0.0.1",
        mqtt_port=1883,
        smtp="127.0.0.1:8025",
        webhooks="http://127.0.0.1:9000/hooks/...",
        console="http://127.0.0.1:9464/ (the operator console)",
        metrics="http://127.0.0.1:9464/metrics",
        log="/tmp/demo/billnotify.log",
        duration=None,
    )
    screen = Console(record=True, width=200)
    screen.print(render_live(info, DemoMonitor(MemoryStore(), SmtpSink(), WebhookSink(SECRET))))
    assert re.search(r"console +http://127\.0\.0\.1:9464/ ", screen.export_text())
    lines: list[str] = []
    PlainReporter(lines.append).intro(info)
    assert "  console        http://127.0.0.1:9464/ (the operator console)" in lines


# -- the whole demo ----------------------------------------------------------------------


def _count(label: str, text: str) -> int:
    match = re.search(rf"^\s+{label}: (\d+)", text, re.MULTILINE)
    assert match, f"no {label!r} line in:\n{text}"
    return int(match.group(1))


async def _watch_mqtt(port: int, seen: list[str], until: asyncio.Event) -> None:
    """Subscribe where the demo says to, as mosquitto_sub would (MQTT 3.1.1)."""
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier="test-demo-watcher", protocol=aiomqtt.ProtocolVersion.V311
    ) as client:
        await client.subscribe("billnotify/#")
        async for message in client.messages:
            seen.append(str(message.topic))
            if until.is_set():
                return


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_demo_runs_everything_and_stops_by_itself(tmp_path: Path) -> None:
    mqtt_port = free_port()
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "billnotify",
        "demo",
        "--duration",
        "20s",
        "--no-live",
        "--mqtt-port",
        str(mqtt_port),
        "--dir",
        str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_clean_env(),
        cwd=ROOT,
    )
    assert proc.stdout is not None and proc.stderr is not None
    lines: list[str] = []
    topics: list[str] = []
    console: tuple[str, int, str] | None = None  # (url, status, page) while it runs
    enough = asyncio.Event()
    watcher: asyncio.Task[None] | None = None
    # drained all along: a full stderr pipe would block the demo
    stderr = asyncio.create_task(proc.stderr.read())
    try:
        async with asyncio.timeout(120):
            while line := (await proc.stdout.readline()).decode():
                lines.append(line)
                if watcher is None and f"mosquitto_sub -h 127.0.0.1 -p {mqtt_port}" in line:
                    watcher = asyncio.create_task(_watch_mqtt(mqtt_port, topics, enough))
                if len(topics) >= 5:
                    enough.set()
                shown = re.match(r"\s+console\s+(http://127\.0\.0\.1:\d+/) ", line)
                if console is None and shown:
                    async with aiohttp.ClientSession() as http, http.get(shown[1]) as resp:
                        console = (shown[1], resp.status, await resp.text())
            errors = (await stderr).decode()
            status = await proc.wait()
    finally:
        stderr.cancel()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await watcher
    out = "".join(lines)
    assert status == 0, out[-3000:] + errors[-3000:]
    assert time.monotonic() - started < 90
    assert "billnotify demo summary" in out
    assert _count("events", out) > 0
    assert _count("deliveries", out) > 0
    assert _count("emails received by the SMTP sink", out) > 0
    webhooks = _count("webhooks received by the webhook sink", out)
    assert webhooks > 0
    assert f"({webhooks} signed ok)" in out
    assert console is not None, out[:3000]  # the address is printed, and it answers
    assert console[1] == 200 and "<h1>Overview</h1>" in console[2], console[:2]
    assert _count("MQTT messages published", out) > 0
    assert any(t.startswith("billnotify/events/acme/") for t in topics), topics
    assert list((tmp_path / "mail").glob("*.eml"))
    assert list((tmp_path / "webhooks").glob("*.json"))
    # what the demo leaves behind works with the other commands
    listed = _billnotify(
        "deliveries", "-c", str(tmp_path / "config.toml"), env=_clean_env(), timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    assert "succeeded" in listed.stdout
