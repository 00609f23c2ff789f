"""A grouped rule under SIGKILL: a real ``billnotify run`` process killed between collecting
a group's events and flushing it, and at random while waves of tasks fail, neither loses
nor repeats a flush (SPEC §7.2: the flush id is (rule, group key, first event id), and
a flush is one store transaction).

What is counted: every failed task's event is in exactly one flush; every flush reached
the webhook receiver (under one ``webhook-id``, however often a retry re-sent it); no
event reached the receiver in two different flushes.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from pathlib import Path

import pytest

from billnotify.simulator import Simulator
from processes import BillnotifyRun, count, query
from servers import WebhookReceiver, free_port, sim_source, toml_config

TYPES = ("Generate Invoice", "CDR import", "Email invoices")
TASKS = 60
WAVES = 6


def _write_config(path: Path, sim: Simulator, http_port: int, hook_url: str) -> None:
    raw = {
        "service": {
            "name": "groupkill",
            "state": "state.db",
            "http": f"127.0.0.1:{http_port}",
            "log_level": "warning",
        },
        "mqtt": {"enabled": False},
        "sources": [sim_source(sim, poll_interval="200ms", overlap="2s", watch=["billing_tasks"])],
        "webhooks": [
            {
                "name": "ops",
                "url": hook_url,
                "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "allow_private": True,
                "retry_schedule": ["0s", "200ms", "500ms", "1s", "1s", "1s", "1s", "1s"],
            }
        ],
        "rules": [
            {
                "name": "failed-tasks-digest",
                "on": ["billing_task.status_changed"],
                "when": "event.data.object.status == 'Failed'",
                "group_by": ["object.billingTaskType"],
                "group_wait": "2s",
                "group_interval": "3s",
                "actions": [{"type": "webhook", "endpoint": "ops"}],
            }
        ],
    }
    path.write_text(toml_config(raw))


def _state(db: Path) -> str:
    """What the store holds, for a failure's message."""
    return "; ".join(
        f"{sql}: {query(db, sql)}"
        for sql in (
            "SELECT count(*), count(flush_id) FROM group_members",
            "SELECT key, flush_at, flushes FROM rule_groups",
            "SELECT status, count(*) FROM deliveries GROUP BY 1",
            "SELECT count(*) FROM events",
            "SELECT * FROM leases",
        )
    )


@pytest.mark.fault
@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_sigkill_between_collect_and_flush_neither_loses_nor_repeats_a_flush(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    rng = random.Random(int(os.environ.get("BILLNOTIFY_TEST_SEED", "14")))
    sim = Simulator()
    await sim.start()
    config, db, http_port = tmp_path / "config.toml", tmp_path / "state.db", free_port()
    _write_config(config, sim, http_port, receiver.url("/ok"))
    ids = [
        sim.state.add_billing_task(status="Pending", billingTaskType=TYPES[n % len(TYPES)])["id"]
        for n in range(TASKS)
    ]
    try:
        async with BillnotifyRun(config, http_port=http_port) as service:
            await service.start()
            await service.until(
                lambda: count(db, "SELECT count(*) FROM cursors") > 0, "the baseline", 60
            )

            # 1. deterministic: killed once the events are collected and before the flush
            for rid in ids[:5]:
                sim.state.update_billing_task(rid, status="Failed")
            await service.until(
                lambda: count(db, "SELECT count(*) FROM group_members") == 5, "collecting"
            )
            assert count(db, "SELECT count(*) FROM group_flushes") == 0
            await service.restart()
            await service.until(
                lambda: count(db, "SELECT count(*) FROM group_members WHERE flush_id IS NULL") == 0,
                "the flush after the restart",
                60,
            )

            # 2. waves of failures, killed at random (during polls, collects, flushes, sends)
            rest = ids[5:]
            for wave in range(WAVES):
                for rid in rest[wave::WAVES]:
                    sim.state.update_billing_task(rid, status="Failed")
                await asyncio.sleep(rng.uniform(0.2, 2.5))
                await service.restart()
            await service.until(
                lambda: (
                    count(db, "SELECT count(*) FROM group_members WHERE flush_id IS NOT NULL")
                    == TASKS
                ),
                "every event flushed",
                120,
                detail=lambda: _state(db),
            )
            await service.until(
                lambda: (
                    count(db, "SELECT count(*) FROM deliveries WHERE status NOT IN ('succeeded')")
                    == 0
                ),
                "every digest delivered",
                60,
            )
            assert await service.stop() == 0
    finally:
        await sim.stop()

    # the ledger: every failed task in exactly one flush, one delivery per flush
    flushes = {str(fid) for (fid,) in query(db, "SELECT id FROM group_flushes")}
    members = query(db, "SELECT event_id, flush_id FROM group_members")
    assert len(members) == TASKS and {str(f) for _, f in members} == flushes
    deliveries = query(db, "SELECT id, event_id FROM deliveries")
    assert sorted(str(e) for _, e in deliveries) == sorted(flushes)

    # the receiver: each flush under one webhook-id, each task in exactly one flush
    by_id: dict[str, list[str]] = {}
    for hit in receiver.hits:
        body = json.loads(hit.body)
        tasks = [e["data"]["object"]["id"] for e in body["events"]]
        assert body["count"] == len(tasks)
        assert by_id.setdefault(hit.headers["webhook-id"], tasks) == tasks  # a retry: the same
    seen: dict[str, int] = {}
    for tasks in by_id.values():
        for task in tasks:
            seen[task] = seen.get(task, 0) + 1
    lost = len(set(map(str, ids)) - set(seen))
    repeated = sum(1 for n in seen.values() if n > 1)
    print(
        f"kills={service.kills} flushes={len(flushes)} requests={len(receiver.hits)} "
        f"delivered flushes={len(by_id)} lost={lost} repeated={repeated}"
    )
    assert service.kills >= WAVES + 1
    assert (lost, repeated) == (0, 0)
    assert set(by_id) == {str(d) for d, _ in deliveries}
