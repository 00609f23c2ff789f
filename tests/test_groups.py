"""Grouped rules end to end on SQLite and PostgreSQL: events collected per group, one
digest per flush to a real webhook receiver and a real SMTP server, time moved by an
injected clock."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from standardwebhooks import Webhook

import pg
from billnotify.actions.email import EmailExecutor
from billnotify.actions.webhook import WebhookExecutor
from billnotify.components import delivery_settings, rule_settings
from billnotify.config.loader import parse_config
from billnotify.config.models import DEFAULT_TEMPLATES, Config
from billnotify.deliveries.base import DeliveryStatus
from billnotify.deliveries.worker import DeliveryWorker
from billnotify.events import build_event
from billnotify.rules.engine import RuleHandler
from billnotify.store import Delivery, SqliteStore, Store
from billnotify.store.postgres import PgStore
from billnotify.templating import TemplateRenderer
from servers import Clock, SmtpSink, serving

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@dataclass
class Receiver:
    requests: list[tuple[dict[str, str], bytes]]

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        return web.Response(text="ok")

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.requests]


@dataclass
class Rig:
    receiver: Receiver
    sink: SmtpSink
    store: Store
    clock: Clock
    handler: RuleHandler
    worker: DeliveryWorker
    seq: int = 0

    async def fail(self, task: str, task_type: str = "Invoice run", source: str = "acme") -> None:
        """A billing task of ``task_type`` failed (one event, through the rules)."""
        self.seq += 1
        event = build_event(
            source=source,
            entity="billing_task",
            object_id=task,
            type_="billing_task.status_changed",
            key=str(self.seq),
            time=self.clock(),
            data={
                "object": {"id": task, "status": "Failed", "billingTaskType": task_type},
                "previous": {"status": "Running"},
                "changed": ["status"],
            },
        )
        await self.store.commit(source, [], [event])
        await self.handler.catch_up()

    async def tick(self, seconds: float = 0) -> None:
        """Move the clock, flush what is due, send what the flush recorded."""
        self.clock.advance(seconds)
        await self.handler.grouper.flush_due()
        await self.worker.run_once()

    async def rows(self, action_type: str) -> list[Delivery]:
        rows = [d for d in await self.store.list_deliveries() if d.action_type == action_type]
        return sorted(rows, key=lambda d: d.event_seq)


def _config(hook_url: str, smtp_port: int, base_dir: Path, **rule: Any) -> Config:
    return parse_config(
        {
            "sources": [
                {
                    "name": "acme",
                    "kind": "billing_platform",
                    "base_url": "http://x",
                    "api_key": "k",
                },
                {
                    "name": "beta",
                    "kind": "billing_platform",
                    "base_url": "http://y",
                    "api_key": "k",
                },
            ],
            "smtp": {"host": "127.0.0.1", "port": smtp_port, "from": "Billing <b@example.com>"},
            "webhooks": [{"name": "ops", "url": hook_url, "secret": SECRET, "allow_private": True}],
            "rules": [
                {
                    "name": "failed-tasks-digest",
                    "on": ["billing_task.status_changed"],
                    "when": "event.data.object.status in ['Failed', 'Error']",
                    "group_by": ["source", "object.billingTaskType"],
                    "group_wait": "30s",
                    "group_interval": "5m",
                    "actions": [
                        {"type": "webhook", "endpoint": "ops"},
                        {
                            "type": "email",
                            "to": ["ops@example.com"],
                            "template": "task_failed_digest",
                        },
                    ],
                    **rule,
                }
            ],
        },
        base_dir=base_dir,
    )


@pytest.fixture
def rule() -> dict[str, Any]:
    return {}


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "postgres":
        return PgStore(pg.shared().database())
    return SqliteStore(tmp_path / "state.db")


@pytest.fixture
async def rig(tmp_path: Path, rule: dict[str, Any], backend: Store) -> AsyncIterator[Rig]:
    receiver, sink = Receiver([]), SmtpSink().start()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    try:
        async with serving(app) as base:
            config = _config(f"{base}/hook", sink.port, tmp_path, **rule)
            templates = TemplateRenderer(DEFAULT_TEMPLATES)
            executors: dict[str, Any] = {
                "webhook": WebhookExecutor(config.webhooks, templates),
                "email": EmailExecutor(config.smtp, templates),
            }
            clock = Clock(T0)
            try:
                await backend.open()
                try:
                    store = backend
                    worker = DeliveryWorker(delivery_settings(config), store, executors, clock)
                    handler = RuleHandler(rule_settings(config), store, templates, executors, clock)
                    yield Rig(receiver, sink, store, clock, handler, worker)
                finally:
                    await backend.close()
            finally:
                for executor in executors.values():
                    await executor.close()
    finally:
        sink.stop()


async def test_a_group_waits_then_sends_one_digest_of_its_events(rig: Rig) -> None:
    for task in ("1", "2", "3"):
        await rig.fail(task)
        await rig.tick(5)
    assert rig.receiver.requests == [] and rig.sink.messages == []  # still collecting
    assert await rig.store.list_deliveries() == []
    await rig.tick(15)  # 30 s after the first event
    (hook,) = await rig.rows("webhook")
    (mail,) = await rig.rows("email")
    assert hook.status is DeliveryStatus.SUCCEEDED and mail.status is DeliveryStatus.SUCCEEDED
    assert hook.event_id == mail.event_id and hook.event_id.startswith("grp_")
    ((headers, raw),) = rig.receiver.requests
    body = Webhook(SECRET).verify(raw, headers)  # signed like any webhook
    assert headers["webhook-id"] == hook.id
    assert body["group"] == {"source": "acme", "object.billingTaskType": "Invoice run"}
    assert body["count"] == 3
    assert [e["data"]["object"]["id"] for e in body["events"]] == ["1", "2", "3"]
    assert {e["type"] for e in body["events"]} == {"billing_task.status_changed"}
    (received,) = rig.sink.messages
    message = received.message
    assert message["Subject"] == "[acme] 3 billing tasks failed: Invoice run"
    text = message.get_body(("plain",)).get_content()
    assert "- Task 1 (Invoice run): Failed" in text and "- Task 3 (Invoice run)" in text


async def test_later_flushes_carry_only_new_events_at_most_once_per_interval(rig: Rig) -> None:
    await rig.fail("1")
    await rig.tick(30)
    assert [b["count"] for b in rig.receiver.bodies()] == [1]
    await rig.fail("2")
    await rig.tick(60)
    await rig.fail("3")
    await rig.tick(60)
    assert len(rig.receiver.requests) == 1  # within the 5 min interval: held
    await rig.tick(180)  # 5 min after the first flush
    second = rig.receiver.bodies()[1]
    assert [e["data"]["object"]["id"] for e in second["events"]] == ["2", "3"]
    await rig.tick(300)  # nothing new: no flush, and the group closes
    assert len(rig.receiver.requests) == 2
    assert await rig.store.next_group_flush_at() is None
    await rig.fail("4")  # a new group: waits group_wait again
    await rig.tick(29)
    assert len(rig.receiver.requests) == 2
    await rig.tick(1)
    assert [b["count"] for b in rig.receiver.bodies()] == [1, 2, 1]
    assert len(rig.sink.messages) == 3
    hooks = await rig.rows("webhook")
    assert len({d.id for d in hooks}) == 3 and all(
        d.status is DeliveryStatus.SUCCEEDED for d in hooks
    )


async def test_each_group_is_flushed_on_its_own(rig: Rig) -> None:
    await rig.fail("1", "Invoice run")
    await rig.fail("2", "CDR import")
    await rig.fail("3", "Invoice run", source="beta")
    await rig.fail("4", "CDR import")
    await rig.fail("5", "Archived", source="acme")
    await rig.tick(30)
    groups = {
        (b["group"]["source"], b["group"]["object.billingTaskType"]): [
            e["data"]["object"]["id"] for e in b["events"]
        ]
        for b in rig.receiver.bodies()
    }
    assert groups == {
        ("acme", "Invoice run"): ["1"],
        ("acme", "CDR import"): ["2", "4"],
        ("beta", "Invoice run"): ["3"],
        ("acme", "Archived"): ["5"],
    }
    subjects = sorted(m.message["Subject"] for m in rig.sink.messages)
    assert subjects == [
        "[acme] 1 billing task failed: Archived",
        "[acme] 1 billing task failed: Invoice run",
        "[acme] 2 billing tasks failed: CDR import",
        "[beta] 1 billing task failed: Invoice run",
    ]


async def test_events_the_when_refuses_are_not_collected(rig: Rig) -> None:
    rig.seq += 1
    event = build_event(
        source="acme",
        entity="billing_task",
        object_id="9",
        type_="billing_task.status_changed",
        key="ok",
        time=T0,
        data={"object": {"id": "9", "status": "Completed"}, "previous": {}, "changed": []},
    )
    await rig.store.commit("acme", [], [event])
    await rig.handler.catch_up()
    assert await rig.store.next_group_flush_at() is None
    await rig.tick(3600)
    assert rig.receiver.requests == []


async def test_a_batch_read_again_collects_nothing_twice(rig: Rig) -> None:
    await rig.fail("1")
    await rig.fail("2")
    await rig.store.set_position("rules", 0)  # as if the process died before recording
    await rig.handler.catch_up()
    await rig.tick(30)
    assert [b["count"] for b in rig.receiver.bodies()] == [2]
    await rig.store.set_position("rules", 0)  # and again, after the flush
    await rig.handler.catch_up()
    await rig.tick(300)
    assert [b["count"] for b in rig.receiver.bodies()] == [2]


@pytest.mark.parametrize("rule", [{"group_by": []}])
async def test_an_empty_group_by_is_one_group(rig: Rig) -> None:
    await rig.fail("1", "Invoice run")
    await rig.fail("2", "CDR import", source="beta")
    await rig.tick(30)
    (body,) = rig.receiver.bodies()
    assert body["group"] == {} and body["count"] == 2
    (received,) = rig.sink.messages
    assert received.message["Subject"] == "[several] 2 billing tasks failed"


@pytest.mark.parametrize("rule", [{"dry_run": True}])
async def test_a_dry_run_digest_is_rendered_and_recorded_not_sent(rig: Rig) -> None:
    await rig.fail("1")
    await rig.fail("2")
    await rig.tick(30)
    assert rig.receiver.requests == [] and rig.sink.messages == []
    (mail,) = await rig.rows("email")
    assert mail.status is DeliveryStatus.DRY_RUN
    rendered = json.loads(await rig.store.get_rendered(mail.id) or "{}")
    assert rendered["summary"]["subject"] == "[acme] 2 billing tasks failed: Invoice run"


async def test_state_copy_carries_open_groups_and_flushed_digests(tmp_path: Path) -> None:
    from billnotify.store.group_records import GroupFlush, GroupMember
    from billnotify.store.transfer import copy_state

    later = T0 + timedelta(seconds=30)
    async with SqliteStore(tmp_path / "state.db") as sqlite:
        await sqlite.add_group_members(
            [GroupMember("r", "{}", "e1", 1, later), GroupMember("r", '{"a":1}', "e2", 2, later)],
            T0,
        )
        await sqlite.flush_group(GroupFlush("r", "{}", "grp_1", '{"id":"grp_1"}', ("e1",)), T0)
    target = pg.shared().database()
    report = await copy_state(tmp_path / "state.db", target)
    assert (report.counts["rule_groups"], report.counts["group_members"]) == (2, 2)
    assert report.counts["group_flushes"] == 1
    async with PgStore(target) as copied:
        assert await copied.get_digest("grp_1") == '{"id":"grp_1"}'
        due = {g.key: g.members for g in await copied.due_groups(later)}
        assert due == {"{}": (), '{"a":1}': (("e2", 2),)}


async def test_a_long_catch_up_does_not_hold_a_due_digest_back(rig: Rig) -> None:
    await rig.fail("1")
    rig.clock.advance(30)
    others = [
        build_event(
            source="acme",
            entity="billing_task",
            object_id=str(n),
            type_="billing_task.updated",
            key=str(n),
            time=T0,
            data={"object": {"id": str(n)}, "previous": {}, "changed": []},
        )
        for n in range(100, 600)
    ]
    await rig.store.commit("acme", [], others)
    rig.handler.grouper.look_every = 0  # as if each batch took a second
    flushed_during = []
    real = rig.handler.process_batch

    async def batch() -> int:
        flushed_during.append(await rig.store.next_group_flush_at())
        return await real()

    rig.handler.process_batch = batch  # type: ignore[method-assign]
    await rig.handler.catch_up()
    # the group was due before the first batch and flushed after it, not after the last
    assert flushed_during[0] == T0 + timedelta(seconds=30)
    assert flushed_during[1] == rig.clock() + timedelta(minutes=5)
    await rig.worker.run_once()
    assert [b["count"] for b in rig.receiver.bodies()] == [1]


async def test_replay_to_rules_collects_what_was_not_collected_and_nothing_twice(
    rig: Rig,
) -> None:
    from billnotify.cli.commands import replay_to_rules

    await rig.fail("1")
    await rig.tick(30)
    skipped = build_event(
        source="acme",
        entity="billing_task",
        object_id="2",
        type_="billing_task.status_changed",
        key="skipped",
        time=T0,
        data={"object": {"id": "2", "status": "Failed", "billingTaskType": "Invoice run"}},
    )
    await rig.store.commit("acme", [], [skipped])
    await rig.store.set_position("rules", await rig.store.last_seq())  # the rules never saw it
    everything = await rig.store.list_events()
    await replay_to_rules(rig.handler, everything, force=True)
    await rig.tick(300)
    assert [[e["data"]["object"]["id"] for e in b["events"]] for b in rig.receiver.bodies()] == [
        ["1"],
        ["2"],
    ]
