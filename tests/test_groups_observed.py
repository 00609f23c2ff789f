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
from billnotify.store import SqliteStore
from processes import cli
from servers import Clock
from test_groups_cli import CONFIG, NOW, _task


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
