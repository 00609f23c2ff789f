"""SIGKILL ``billnotify run`` in the middle of deleted-records reconciles (SPEC §7.5).

The simulator answers the task listing slowly (every request waits 0.3 s), so a
reconcile round takes seconds; the service is killed after the 1st, a middle and the
closing (empty) page of a round, three rounds in a row, while tasks are deleted, created,
changed, and one is deleted and restored before any round could see it gone. Then it
runs to the end. The log and MQTT must hold exactly one ``billing_task.deleted`` per
task really deleted (the same CloudEvent id on both), none for any other task, and no
``restored``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from billnotify.simulator import Simulator
from conftest import Mosquitto, Subscriber
from processes import BillnotifyRun, query
from servers import free_port, sim_source, toml_config

SubscriberFactory = Callable[..., contextlib.AbstractAsyncContextManager[Subscriber]]
TASKS = "/backend/api/v1/billingTasks"
PAGE = 5
DELAY = 0.3
KILL_AT = (1, 4, 0)
"""The request of a round at which the service dies (0: the closing, empty page)."""


@pytest.fixture
def sim_options() -> dict[str, Any]:
    return {"page_max": PAGE}


def _logged(db: Path, type_: str) -> list[tuple[str, str]]:
    """(event id, subject) of the logged events of one type, in log order."""
    rows = query(db, f"SELECT id, subject FROM events WHERE type = '{type_}' ORDER BY seq")
    return [(str(i), str(s)) for i, s in rows]


class _Listings:
    """The reconcile's full listings of tasks as the simulator receives them: the first
    request of a round has no ``idAfter``; the poll's requests carry ``updatedSince``."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.start = self.after = len(sim.requests)

    def _since_start(self) -> list[str]:
        return [
            r
            for r in list(self.sim.requests)[self.start :]
            if r.startswith(f"GET {TASKS}") and "Since" not in r
        ]

    async def next_round(self, timeout: float = 30) -> None:
        """Wait for a round that starts after the last one seen."""
        deadline = time.monotonic() + timeout
        while True:
            seen = list(self.sim.requests)
            for index in range(self.after, len(seen)):
                r = seen[index]
                if r.startswith(f"GET {TASKS}") and "Since" not in r and "idAfter" not in r:
                    self.start, self.after = index, index + 1
                    return
            assert time.monotonic() < deadline, "no reconcile round started"
            await asyncio.sleep(0.01)

    async def requests(self, count: int, timeout: float = 30) -> list[str]:
        """Wait until the latest round made ``count`` requests."""
        deadline = time.monotonic() + timeout
        while len(found := self._since_start()) < count:
            assert time.monotonic() < deadline, f"the round made {len(found)} requests"
            await asyncio.sleep(0.01)
        assert all("idAfter" in r for r in found[1:count]), f"the round ended early: {found}"
        return found[:count]


@pytest.mark.fault
@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_sigkill_mid_reconcile_reports_each_deletion_once_and_nothing_else(
    tmp_path: Path,
    sim: Simulator,
    mosquitto: Mosquitto,
    mqtt_prefix: str,
    mqtt_subscriber: SubscriberFactory,
) -> None:
    ids = [str(sim.state.add_billing_task(status="Pending")["id"]) for _ in range(28)]
    db = tmp_path / "state.db"
    config = tmp_path / "config.toml"
    raw = {
        "service": {
            "name": "delkill",
            "state": "state.db",
            "http": f"127.0.0.1:{free_port()}",
            "log_level": "warning",
        },
        "mqtt": {"url": mosquitto.url(), "client_id": f"bn-{mqtt_prefix}", "prefix": mqtt_prefix},
        "sources": [
            sim_source(
                sim,
                watch=["billing_tasks"],
                poll_interval="500ms",
                reconcile_interval="1s",
                timeout="5s",
            )
        ],
    }
    config.write_text(toml_config(raw))
    gone: list[str] = []  # really deleted on the platform
    created: list[str] = []
    async with (
        mqtt_subscriber(mosquitto, f"{mqtt_prefix}/events/#") as sub,
        BillnotifyRun(config) as service,
    ):
        await service.start()
        await service.until(
            lambda: query(db, "SELECT 1 FROM cursors WHERE resource = 'reconcile:billing_tasks'"),
            "the baseline and the reconcile's first due time",
        )
        sim.faults.add(TASKS, kind="slow", count=-1, delay=DELAY)
        listings = _Listings(sim)
        pages: list[int] = []
        for round_, kill_at in enumerate(KILL_AT):
            await listings.next_round()
            # while the round lists: two tasks deleted, one created, one changed, and
            # one deleted that comes back before any round can see it gone
            doomed = [ids[3 + 7 * round_], ids[6 + 7 * round_]]
            ghost = ids[5 + 7 * round_]
            for rid in [*doomed, ghost]:
                sim.state.delete_record("billing_tasks", rid)
            gone += doomed
            created.append(str(sim.state.add_billing_task(status="Pending")["id"]))
            sim.state.update_billing_task(ids[4 + 7 * round_], status="Running")
            live = len(ids) - len(gone) - 1 + len(created)
            total = -(-live // PAGE) + 1  # its pages and the closing empty one
            made = await listings.requests(kill_at or total)
            await service.kill()
            pages.append(len(made))
            assert _logged(db, "billing_task.deleted") == [], f"round {round_}: committed"
            sim.state.restore_record("billing_tasks", ghost)
            await service.start()

        # it runs to the end: every deletion is found, once
        def all_logged() -> list[tuple[str, str]]:
            found = _logged(db, "billing_task.deleted")
            return found if len(found) >= len(gone) else []

        await service.until(all_logged, "every deletion in the log", timeout=60)
        await sub.wait_for(
            lambda messages: len({m.topic.value for m in messages if _is_deleted(m)}) >= len(gone),
            timeout=30,
        )
        # two more complete rounds find nothing new
        for _ in range(3):
            await listings.next_round()
        assert await service.stop() == 0

    logged = _logged(db, "billing_task.deleted")
    subjects = [subject for _, subject in logged]
    assert sorted(subjects) == sorted(f"billing_tasks/{rid}" for rid in gone)  # once each
    assert _logged(db, "billing_task.restored") == []
    on_mqtt: dict[str, set[str]] = {}
    copies = 0
    for message in sub.messages:
        if _is_deleted(message):
            event = json.loads(bytes(message.payload))  # type: ignore[arg-type]
            on_mqtt.setdefault(event["subject"], set()).add(event["id"])
            copies += 1
    assert on_mqtt == {subject: {event_id} for event_id, subject in logged}
    print(
        f"\nkills={service.kills} (after request {'/'.join(map(str, pages))} of a round) "
        f"deletions={len(gone)} logged={len(logged)} on MQTT={len(on_mqtt)} ids "
        f"({copies} copies) false=0 restored=0"
    )


def _is_deleted(message: Any) -> bool:
    topic = str(message.topic.value)
    return topic.endswith("/deleted") and "/billing_task/" in topic
