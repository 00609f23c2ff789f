"""Two ``billnotify run --instance NAME --http HOST:PORT`` processes on one config file
and one PostgreSQL state (SPEC §7.1): each its own MQTT client id (no takeovers: both
stay ``online`` at ``{prefix}/status/{instance}``), ``/readyz`` names each instance, and
``billnotify status`` lists both. Real parts: mosquitto, the simulator over HTTP, a
private PostgreSQL server, the service as subprocesses."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.request
from pathlib import Path

import pytest

import pg
from billnotify.simulator import Simulator
from conftest import Mosquitto
from servers import PYTHON, free_port, sim_source, toml_config, wait_for


def _get(port: int) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as answer:
            return dict(json.loads(answer.read()))
    except urllib.error.HTTPError as answer:
        return dict(json.loads(answer.read()))
    except OSError:
        return None


async def test_two_instances_on_one_config_each_connect_and_report_themselves(
    tmp_path: Path, mosquitto: Mosquitto, mqtt_prefix: str, mqtt_subscriber
) -> None:
    reason = pg.available()
    if reason:
        pytest.skip(reason)
    url = pg.shared().database()
    sim = Simulator(page_max=50)
    await sim.start()
    config = tmp_path / "config.toml"
    raw = {
        "service": {"state": url, "http": "127.0.0.1:1", "log_level": "warning"},
        "mqtt": {"url": mosquitto.url(), "client_id": f"bn-{mqtt_prefix}", "prefix": mqtt_prefix},
        "sources": [sim_source(sim, poll_interval="500ms", watch=["billing_tasks"])],
    }
    config.write_text(toml_config(raw))
    ports = {"a": free_port(), "b": free_port()}
    procs: dict[str, asyncio.subprocess.Process] = {}
    try:
        async with mqtt_subscriber(mosquitto, f"{mqtt_prefix}/status/#") as sub:
            for name, port in ports.items():
                procs[name] = await asyncio.create_subprocess_exec(
                    *[
                        PYTHON,
                        "-m",
                        "billnotify",
                        "run",
                        "-c",
                        str(config),
                        "--instance",
                        name,
                        "--http",
                        f"127.0.0.1:{port}",
                    ],
                    stderr=asyncio.subprocess.DEVNULL,
                )
            for name in ports:
                topic = f"{mqtt_prefix}/status/{name}"
                await sub.wait_for(lambda _m, topic=topic: bool(sub.on(topic)), timeout=20)
            for name, port in ports.items():
                await wait_for(lambda port=port: _get(port) is not None, 20)
                body = _get(port)
                assert body is not None and body["instance"] == name
                assert isinstance(body["leases"], list)
            # a second of both running: with one client id they would knock each other off
            await asyncio.sleep(1.0)  # a window to observe: nothing may change
            for name in ports:
                assert sub.payloads(f"{mqtt_prefix}/status/{name}") == [b"online"]
                assert procs[name].returncode is None
            status = await asyncio.create_subprocess_exec(
                PYTHON,
                "-m",
                "billnotify",
                "status",
                "-c",
                str(config),
                stdout=asyncio.subprocess.PIPE,
            )
            out = (await asyncio.wait_for(status.communicate(), 30))[0].decode()
            assert status.returncode == 0, out
            assert "instances: 2 live" in out, out
            assert "instance a:" in out and "instance b:" in out
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
        await sim.stop()
