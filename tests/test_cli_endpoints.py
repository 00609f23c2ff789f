"""``billnotify endpoints`` and ``endpoints enable NAME --reason R`` (SPEC §7.4, issue 15).

A real delivery worker sends webhooks to a receiver on loopback that answers ``410 Gone``;
``billnotify`` runs as a subprocess on the same SQLite state, lists the endpoint disabled
(why, when) without reading a secret, re-enables it (recorded, who = ``cli:<os user>``),
and the worker sends to it again.
"""

from __future__ import annotations

import getpass
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from billnotify.actions.webhook import WebhookExecutor
from billnotify.components import delivery_settings, rule_settings
from billnotify.config.loader import parse_config
from billnotify.deliveries.base import DeliveryStatus
from billnotify.deliveries.worker import DeliveryWorker
from billnotify.events import build_event, format_time
from billnotify.rules.engine import RuleHandler
from billnotify.store import Delivery, SqliteStore
from billnotify.templating import TemplateRenderer
from processes import cli
from servers import Clock, serving

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
UNSET = "BILLNOTIFY_TEST_ENDPOINTS_UNSET_SECRET"
TOKEN = "query-token-Qx81"


async def _cli(*args: str) -> tuple[int, str, str]:
    """``billnotify ARGS`` with the config's secret variable unset."""
    return await cli(*args, env={k: v for k, v in os.environ.items() if k != UNSET})


@dataclass
class Receiver:
    """A webhook endpoint answering with ``status`` (changeable)."""

    status: int = 410
    requests: list[bytes] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(await request.read())
        return web.Response(status=self.status, text="gone" if self.status == 410 else "ok")


@dataclass
class Rig:
    receiver: Receiver
    store: SqliteStore
    clock: Clock
    handler: RuleHandler
    worker: DeliveryWorker
    config: str
    """The CLI's config file: same state and endpoints, its secrets unresolvable."""

    async def emit(self, n: int) -> None:
        event = build_event(
            source="acme",
            entity="billing_task",
            object_id=str(n),
            type_="billing_task.status_changed",
            key=str(n),
            time=T0,
            data={"object": {"id": str(n), "status": "Failed"}, "changed": ["status"]},
        )
        await self.store.commit("acme", [], [event])
        await self.handler.catch_up()

    async def hooks(self) -> list[Delivery]:
        rows = [d for d in await self.store.list_deliveries() if d.action_type == "webhook"]
        return sorted(rows, key=lambda d: d.event_seq)


def _cli_config(tmp_path: Path, base: str) -> Path:
    path = tmp_path / "cli.toml"
    path.write_text(
        f"""
[service]
state = "state.db"

[mqtt]
enabled = false

[[sources]]
name = "acme"
kind = "billing_platform"
base_url = "http://127.0.0.1:1/backend/api/v1"
api_key = "env:{UNSET}"

[[webhooks]]
name = "ops"
url = "{base}/hook?token={TOKEN}"
secret = "env:{UNSET}"
allow_private = true

[[webhooks]]
name = "crm"
url = "{base}/crm"
secret = "env:{UNSET}"
allow_private = true
"""
    )
    return path


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    (tmp_path / "templates").mkdir()
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    async with serving(app) as base:
        hook = {"url": f"{base}/hook", "secret": SECRET, "allow_private": True}
        config = parse_config(
            {
                "sources": [
                    {
                        "name": "acme",
                        "kind": "billing_platform",
                        "base_url": "http://x",
                        "api_key": "k",
                    }
                ],
                "webhooks": [{"name": "ops", **hook, "retry_schedule": ["0s"]}],
                "rules": [
                    {
                        "name": "alert",
                        "on": ["billing_task.status_changed"],
                        "actions": [{"type": "webhook", "endpoint": "ops"}],
                    }
                ],
            },
            base_dir=tmp_path,
        )
        templates = TemplateRenderer(tmp_path)
        executor = WebhookExecutor(config.webhooks, templates)
        clock = Clock(T0)
        try:
            async with SqliteStore(tmp_path / "state.db") as store:
                executors: dict[str, Any] = {"webhook": executor}
                worker = DeliveryWorker(delivery_settings(config), store, executors, clock)
                handler = RuleHandler(rule_settings(config), store, templates, executors, clock)
                cli_config = str(_cli_config(tmp_path, base))
                yield Rig(receiver, store, clock, handler, worker, cli_config)
        finally:
            await executor.close()


async def _listed(rig: Rig) -> dict[str, dict[str, Any]]:
    code, out, err = await _cli("endpoints", "--json", "-c", rig.config)
    assert code == 0, err
    assert TOKEN not in out + err  # the URL is shown without its query
    return {row["name"]: row for row in map(json.loads, out.splitlines())}


async def test_a_410_disabled_endpoint_is_listed_and_re_enabled_from_the_cli(rig: Rig) -> None:
    await rig.emit(1)
    await rig.worker.run_once()
    (gone,) = await rig.hooks()
    assert gone.status is DeliveryStatus.DEAD and gone.last_status_code == 410

    listed = await _listed(rig)
    assert list(listed) == ["ops", "crm"]
    ops = listed["ops"]
    assert ops["enabled"] is False and ops["configured"] is True
    assert ops["disabled_reason"] == f"410 Gone on delivery {gone.id}"
    assert ops["delivery"] == gone.id and ops["disabled_at"] == format_time(T0)
    assert ops["url"].endswith("/hook") and ops["operator_actions"] == []
    assert listed["crm"]["enabled"] is True and listed["crm"]["disabled_at"] is None

    code, table, err = await _cli("endpoints", "-c", rig.config)
    assert code == 0, err
    header, first, second = table.splitlines()
    assert header.split()[:3] == ["NAME", "STATE", "SINCE"]
    assert first.split()[:3] == ["ops", "disabled", format_time(T0)] and gone.id in first
    assert second.split()[:2] == ["crm", "enabled"]

    # while it is disabled, a new delivery to it dies unsent
    await rig.emit(2)
    await rig.worker.run_once()
    assert (await rig.hooks())[1].attempts == 0 and len(rig.receiver.requests) == 1

    code, _, err = await _cli("endpoints", "enable", "ops", "-c", rig.config)
    assert code == 2 and "--reason" in err  # the reason is required, nothing done
    assert "ops" in await rig.store.disabled_endpoints()

    reason = "the receiver was moved back (ticket 4411)"
    code, out, err = await _cli("endpoints", "enable", "ops", "--reason", reason, "-c", rig.config)
    assert code == 0, err
    assert out.strip() == f"ops: enabled (was disabled: 410 Gone on delivery {gone.id})"
    # -c before the action counts too
    code, _, err = await _cli("endpoints", "-c", rig.config, "enable", "crm", "--reason", "x")
    assert code == 1 and "crm: is not disabled" in err

    listed = await _listed(rig)
    assert listed["ops"]["enabled"] is True and listed["ops"]["disabled_reason"] is None
    who = f"cli:{getpass.getuser()}"
    (record,) = listed["ops"]["operator_actions"]
    assert (record["who"], record["action"], record["reason"]) == (who, "enable_endpoint", reason)
    (refused,) = listed["crm"]["operator_actions"]
    assert refused["result"] == "is not disabled"
    # the same record the console shows (the console's own function wrote it)
    (kept,) = await rig.store.operator_actions("ops")
    assert (kept.who, kept.action, kept.reason) == (who, "enable_endpoint", reason)

    # the worker sends to it again
    rig.receiver.status = 200
    await rig.emit(3)
    await rig.worker.run_once()
    third = (await rig.hooks())[2]
    assert third.status is DeliveryStatus.SUCCEEDED and len(rig.receiver.requests) == 2


async def test_a_disabled_endpoint_the_config_no_longer_names_is_listed(
    tmp_path: Path,
) -> None:
    async with SqliteStore(tmp_path / "state.db") as store:
        await store.disable_endpoint("old", "410 Gone on delivery dlv_0badc0de", T0)
    config = str(_cli_config(tmp_path, "http://127.0.0.1:9"))
    code, out, err = await _cli("endpoints", "--json", "-c", config)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["name"], r["enabled"], r["configured"]) for r in rows] == [
        ("ops", True, True),
        ("crm", True, True),
        ("old", False, False),
    ]
    old = rows[2]
    assert old["url"] == "" and old["delivery"] == "dlv_0badc0de"
    assert old["disabled_at"] is None  # that delivery is gone: when is not known
    code, out, err = await _cli("endpoints", "enable", "old", "--reason", "gone", "-c", config)
    assert code == 0, err
    async with SqliteStore(tmp_path / "state.db") as store:
        assert await store.disabled_endpoints() == {}
