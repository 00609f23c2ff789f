"""Where an operator sees grouped rules at work (SPEC §7.2): ``billnotify deliveries show``
of a digest's delivery prints the flush's group, count and event ids (its event, the
digest, is not in the log); ``/metrics`` has the open groups, the events waiting and the
flushes per rule."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from billnotify.components import build_actions, build_rule_handler
from billnotify.config import load_config
from billnotify.simulator import Simulator
from billnotify.store import SqliteStore
from processes import cli
from servers import Clock, WebhookReceiver, sim_source
from service_harness import running_service, until
from test_groups_cli import CONFIG, NOW, _task

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


async def test_deliveries_show_prints_the_digest_of_a_grouped_delivery(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    config = load_config(path)
    actions = build_actions(config)
    clock = Clock(NOW)
    events = [_task("1"), _task("2", status="Error"), _task("3", task_type="CDR import")]
    try:
        async with SqliteStore(tmp_path / "state.db") as store:
            handler = build_rule_handler(config, store, actions, clock)
            await store.commit("acme", [], events)
            await handler.catch_up()
            clock.now += timedelta(seconds=30)
            await handler.grouper.flush_due()
            rows = await store.list_deliveries()
    finally:
        await actions.close()
    # two groups (Invoice run: 1 and 2; CDR import: 3), an email and a webhook each
    assert len(rows) == 4 and all(r.event_id.startswith("grp_") for r in rows)
    emails = [r for r in rows if r.action_type == "email"]
    shown = []
    for email in emails:
        code, out, err = await cli("deliveries", "show", email.id, "-c", str(path))
        assert code == 0, err
        shown.append(json.loads(out)["digest"])
    shown.sort(key=lambda digest: -digest["count"])
    assert shown == [
        {
            "id": shown[0]["id"],
            "group": {"source": "acme", "object.billingTaskType": "Invoice run"},
            "count": 2,
            "events": [events[0].id, events[1].id],
        },
        {
            "id": shown[1]["id"],
            "group": {"source": "acme", "object.billingTaskType": "CDR import"},
            "count": 1,
            "events": [events[2].id],
        },
    ]
    assert {d["id"] for d in shown} == {e.event_id for e in emails}


def _sample(text: str, name: str) -> float:
    """One sample's value from the Prometheus text (``name`` with its labels)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not exported")


async def test_metrics_show_open_groups_waiting_events_and_flushes(
    tmp_path: Path, sim: Simulator, receiver: WebhookReceiver
) -> None:
    raw = {
        "service": {"name": "groups", "state": "state.db", "http": "", "shutdown_grace": "5s"},
        "mqtt": {"enabled": False},
        "sources": [sim_source(sim, poll_interval="100ms", watch=["billing_tasks"])],
        "webhooks": [
            {"name": "ops", "url": receiver.url("/ok"), "secret": SECRET, "allow_private": True}
        ],
        "rules": [
            {
                "name": "failed-tasks-digest",
                "on": ["billing_task.status_changed"],
                "when": "event.data.object.status in ['Failed', 'Error']",
                "group_by": ["object.billingTaskType"],
                "group_wait": "1500ms",
                "group_interval": "1h",
                "actions": [{"type": "webhook", "endpoint": "ops"}],
            }
        ],
    }
    imports = [sim.state.add_billing_task(billingTaskType="Import CDRs")["id"] for _ in range(3)]
    invoice = sim.state.add_billing_task(billingTaskType="Generate Invoice")["id"]
    async with running_service(raw, tmp_path) as service:

        async def scrape() -> str:
            await service.refresh_metrics()  # what /metrics does before it renders
            return service.metrics.render().decode()

        text = await scrape()
        assert _sample(text, "billnotify_groups_open") == 0
        assert _sample(text, "billnotify_group_events_waiting") == 0
        rule = 'billnotify_digest_flushes_total{rule="failed-tasks-digest"}'
        assert _sample(text, rule) == 0
        for rid in imports:
            sim.state.update_billing_task(rid, status="Failed")
        sim.state.update_billing_task(invoice, status="Error")

        async def collected() -> str | None:
            text = await scrape()
            return text if _sample(text, "billnotify_group_events_waiting") == 4 else None

        text = await until(collected, "4 events collected")
        assert _sample(text, "billnotify_groups_open") == 2
        assert _sample(text, rule) == 0 and not receiver.hits

        async def flushed() -> str | None:
            text = await scrape()
            return text if _sample(text, rule) == 2 else None

        text = await until(flushed, "both groups flushed")
        # flushed, and open for their interval (an hour): nothing waits
        assert _sample(text, "billnotify_group_events_waiting") == 0
        assert _sample(text, "billnotify_groups_open") == 2
        await until(lambda: len(receiver.hits) == 2, "two digests delivered")
