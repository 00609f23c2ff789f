"""The operator console in a real browser (SPEC §7.4), against the real service.

``billnotify``'s service runs in this loop with a ``console_token``, polling the billing
simulator over HTTP, publishing to mosquitto, emailing through an aiosmtpd sink that
takes each message but answers DATA too late (so a customer email ends ``uncertain``)
and sending webhooks to a receiver, one of whose endpoints answers ``410 Gone``.
Debian's chromium, driven by Playwright, logs in, resolves the uncertain delivery
through the page, re-enables the disabled endpoint and previews a rule; the CLI
(``billnotify deliveries show`` as a subprocess) then agrees, with who and why. Without
a session nothing is shown and nothing is done, and a POST without the session's CSRF
token is refused. Each page is saved as ``<page>.png``: into ``docs/console/`` for the
README with ``BILLNOTIFY_SCREENSHOTS=1``, else into the test's temp folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from billnotify.app import Service
from billnotify.deliveries.base import DeliveryStatus
from billnotify.simulator import Simulator
from conftest import Mosquitto
from processes import cli
from servers import SmtpSink, WebhookReceiver, sim_source, toml_config
from service_harness import running_service, until

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="no /usr/bin/chromium (apt-get install -y chromium)"
)
playwright_api = pytest.importorskip(
    "playwright.async_api", reason="playwright is not installed (the dev extra)"
)

TOKEN = "console-" + "Hq7Zt2Wm9Ls4Px8Rv"
SHOTS = Path(__file__).resolve().parents[1] / "docs" / "console"
"""Where the screenshots go with ``BILLNOTIFY_SCREENSHOTS=1`` (the README's pictures);
otherwise into the test's temp folder, so a test run leaves the tree as it was."""
REASON = "customer confirmed by phone: mail arrived"


def _config(
    tmp_path: Path, sim: Simulator, broker: Mosquitto, prefix: str, sink: SmtpSink, gone: str
) -> dict[str, Any]:
    (tmp_path / "templates").mkdir(exist_ok=True)
    return {
        "service": {
            "name": "bn-console",
            "state": "state.db",
            "http": "127.0.0.1:0",
            "console_token": "env:BN_TEST_CONSOLE_TOKEN",
            "shutdown_grace": "2s",
        },
        "mqtt": {"url": broker.url(), "client_id": f"bn-{prefix}", "prefix": prefix},
        "sources": [
            sim_source(
                sim, poll_interval="200ms", watch=["billing_tasks"], timeout="2s", max_attempts=1
            )
        ],
        "smtp": {
            "host": "127.0.0.1",
            "port": sink.port,
            "from": "Billing <billing@example.com>",
            "timeout": "500ms",
        },
        "webhooks": [
            {
                "name": "gone",
                "url": gone,
                "secret": "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "allow_private": True,
                "retry_schedule": ["0s"],
            }
        ],
        "rules": [
            {
                "name": "failed-tasks",
                "on": ["billing_task.status_changed"],
                "when": "event.data.object.status == 'Failed'",
                "actions": [
                    {"type": "email", "to": ["customer@example.com"], "template": "task_failed"}
                ],
            },
            {
                "name": "new-tasks",
                "on": ["billing_task.created"],
                "when": "event.data.object.status == 'Pending'",
                "actions": [{"type": "webhook", "endpoint": "gone"}],
            },
        ],
    }


@contextlib.asynccontextmanager
async def running(raw: dict[str, Any], tmp_path: Path) -> AsyncIterator[tuple[Service, str]]:
    """The service in this loop, polled once; yields it and its ``http://127.0.0.1:PORT``."""
    async with running_service(raw, tmp_path) as service:
        assert service.health is not None
        yield service, f"http://127.0.0.1:{service.health.port}"
        stopping = time.monotonic()
    # an open live stream must not hold the stop up
    assert time.monotonic() - stopping < 10


async def test_an_operator_resolves_an_uncertain_email_in_the_browser_and_the_cli_agrees(
    tmp_path: Path,
    mosquitto: Mosquitto,
    mqtt_prefix: str,
    sink: SmtpSink,
    receiver: WebhookReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BN_TEST_CONSOLE_TOKEN", TOKEN)
    shots = SHOTS if os.environ.get("BILLNOTIFY_SCREENSHOTS") else tmp_path / "shots"
    shots.mkdir(parents=True, exist_ok=True)
    sink.handler.data_stall = 3.0  # takes the mail, answers too late: uncertain
    async with Simulator(page_max=50) as sim:
        task = sim.state.add_billing_task(status="Running")
        raw = _config(tmp_path, sim, mosquitto, mqtt_prefix, sink, receiver.url("/status/410"))
        config_file = tmp_path / "config.toml"
        config_file.write_text(toml_config(raw))
        async with (
            running(raw, tmp_path) as (service, url),
            playwright_api.async_playwright() as pw,
        ):
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            try:
                await _scenario(service, url, browser, sim, task, config_file, shots)
            finally:
                await browser.close()


async def _scenario(
    service: Service,
    url: str,
    browser: Any,
    sim: Simulator,
    task: dict[str, Any],
    config: Path,
    shots: Path,
) -> None:
    store = service.store
    sim.state.update_billing_task(task["id"], status="Failed")
    sim.state.add_billing_task(status="Pending")  # its webhook meets the 410

    async def uncertain() -> list[Any]:
        return await store.list_deliveries([DeliveryStatus.UNCERTAIN])

    async def disabled() -> dict[str, str]:
        return await store.disabled_endpoints()

    (delivery,) = await until(uncertain, "the customer email ends uncertain")
    await until(disabled, "the 410 disables the endpoint")

    # -- without a session: the login page, no data, no action -------------------------
    stranger = await browser.new_context()
    page = await stranger.new_page()
    response = await page.goto(f"{url}/deliveries?status=uncertain")
    assert page.url == f"{url}/login"
    assert delivery.id not in await page.content()
    assert response is not None
    await page.screenshot(path=str(shots / "login.png"))
    refused = await stranger.request.post(
        f"{url}/deliveries/{delivery.id}/resolve",
        form={"outcome": "sent", "reason": "x", "csrf": "x"},
        max_redirects=0,
    )
    assert refused.status == 401
    assert delivery.id not in await refused.text()
    await stranger.close()

    # -- log in -------------------------------------------------------------------------
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    complaints: list[str] = []  # the browser's own word on CSP violations and script errors
    page.on("console", lambda m: complaints.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: complaints.append(str(e)))
    await page.goto(f"{url}/")
    await page.fill("input[name=token]", TOKEN)
    await page.fill("input[name=name]", "ann")
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{url}/")
    headers = (await page.request.get(f"{url}/")).headers
    assert "unsafe-inline" not in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY" and headers["cache-control"] == "no-store"
    cookies = {c["name"]: c for c in await context.cookies()}
    session = cookies["billnotify_console"]
    assert session["httpOnly"] and session["sameSite"] == "Strict" and TOKEN not in session["value"]

    # -- the overview moves while billing runs ------------------------------------------
    await page.wait_for_selector("#live-status:text('live')")
    before = int(await page.inner_text("#events-total"))
    sim.state.update_billing_task(task["id"], status="Completed")
    await page.wait_for_function(
        "n => Number(document.getElementById('events-total').textContent) > n", arg=before
    )
    assert await page.inner_text("#deliveries-uncertain") == "1"
    await page.screenshot(path=str(shots / "overview.png"), full_page=True)
    # a failing source shows, with its error, and recovers, without a reload
    state = "[data-live='source.acme/billing_tasks.state']"
    error = "[data-live='source.acme/billing_tasks.error']"
    sim.faults.add("/backend/api/v1/billingTasks", kind="503", count=-1)
    await page.wait_for_selector(f"{state}:text('failing')")
    assert "503" in await page.inner_text(error)
    sim.faults.clear()
    await page.wait_for_selector(f"{state}:text('ok')")
    assert await page.inner_text(error) == "none"

    # -- a POST without the session's CSRF token is refused ----------------------------
    for form in (
        {"outcome": "sent", "reason": "x"},
        {"outcome": "sent", "reason": "x", "csrf": "bad"},
    ):
        answer = await page.request.post(
            f"{url}/deliveries/{delivery.id}/resolve", form=form, max_redirects=0
        )
        assert answer.status == 403
    still = await store.get_delivery(delivery.id)
    assert still is not None and still.status is DeliveryStatus.UNCERTAIN

    # -- events: a new one appears without a reload ------------------------------------
    await page.click("nav >> text=Events")
    await page.wait_for_url(f"{url}/events")
    await page.wait_for_selector("#live-status:text('live')")
    sim.state.add_billing_task(status="Running")  # no webhook: the rule wants Pending ones
    changed = time.monotonic()
    await page.wait_for_selector("#event-rows tr.new >> text=billing_task.created")
    # the poll (200 ms) plus one live interval (1 s) at most
    print(f"\nconsole: a new event on the page {time.monotonic() - changed:.2f}s after the change")
    await page.screenshot(path=str(shots / "events.png"), full_page=True)
    await page.goto(f"{url}/events/{delivery.event_id}")
    assert '"type": "billing_task.status_changed"' in await page.inner_text("pre.json")
    await page.screenshot(path=str(shots / "event.png"), full_page=True)
    await page.fill("input[name=reason]", "checking the rules")
    await page.click("button:text('Replay')")
    await page.wait_for_selector(".flash:text('replayed to rules: 0 new')")
    (replayed,) = await store.operator_actions(delivery.event_id)
    assert (replayed.who, replayed.action, replayed.reason) == (
        "console:ann",
        "replay",
        "checking the rules",
    )

    # -- deliveries: find the uncertain one, resolve it through the page ----------------
    await page.goto(f"{url}/deliveries")
    await page.select_option("select[name=status]", "uncertain")
    await page.click("form.filters button[type=submit]")
    await page.wait_for_url(f"{url}/deliveries?status=uncertain&rule=&endpoint=")
    await page.screenshot(path=str(shots / "deliveries.png"), full_page=True)
    await page.click(f"text={delivery.id}")
    await page.wait_for_url(f"{url}/deliveries/{delivery.id}")
    assert "no reply to DATA" in await page.inner_text("table")
    await page.check("input[name=outcome][value=sent]")
    await page.fill("#resolve-form input[name=reason]", REASON)
    await page.screenshot(path=str(shots / "delivery.png"), full_page=True)
    await page.click("#resolve-form button[type=submit]")
    await page.wait_for_selector(".flash:text('uncertain -> succeeded')")
    assert await page.inner_text("#delivery-status") == "succeeded"
    assert REASON in await page.inner_text("table.actions")
    await page.screenshot(path=str(shots / "delivery-resolved.png"), full_page=True)

    code, out, err = await cli("deliveries", "show", delivery.id, "-c", str(config))
    assert code == 0, err
    shown = json.loads(out)
    assert shown["status"] == "succeeded"
    (action,) = shown["operator_actions"]
    assert (action["who"], action["action"], action["reason"]) == (
        "console:ann",
        "resolve_sent",
        REASON,
    )

    # -- endpoints: re-enable the one the 410 disabled ---------------------------------
    await page.goto(f"{url}/endpoints")
    await page.screenshot(path=str(shots / "endpoints.png"), full_page=True)
    listed = await page.inner_text("main")
    assert "disabled: 410 Gone on delivery dlv_" in listed and " (since " in listed  # when
    await page.fill("input[name=reason]", "the receiver is back")
    await page.click("button:text('Re-enable')")
    await page.wait_for_selector(".flash:text('gone: enabled')")
    assert await store.disabled_endpoints() == {}
    (enabled,) = await store.operator_actions("gone")
    assert (enabled.who, enabled.reason) == ("console:ann", "the receiver is back")

    # -- rules: preview what a rule would send for the event ---------------------------
    await page.goto(f"{url}/rules?rule=failed-tasks&event={delivery.event_id}")
    preview = await page.inner_text("#preview")
    assert "Action 0: email" in preview and "customer@example.com" in preview
    await page.screenshot(path=str(shots / "rules.png"), full_page=True)

    # -- on a phone ---------------------------------------------------------------------
    phone = await browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    await phone.add_cookies([session])
    small = await phone.new_page()
    await small.goto(f"{url}/")
    width = await small.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the overview needs {width}px on a 390px phone"
    await small.screenshot(path=str(shots / "overview-phone.png"), full_page=True)
    await phone.close()

    assert complaints == []

    # -- logout ends the session --------------------------------------------------------
    await page.click("button:text('Log out')")
    await page.wait_for_url(f"{url}/login")
    await page.goto(f"{url}/deliveries")
    assert page.url == f"{url}/login"
    await context.close()
