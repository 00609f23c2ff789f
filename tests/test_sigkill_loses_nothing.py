"""SIGKILL the service at random points during a burst of changes: the log ends with
every change exactly once (SPEC §2: deterministic ids, atomic commits)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from billnotify.simulator import Simulator
from processes import BillnotifyRun, count, query
from servers import free_port, sim_source, toml_config

TASKS = 150
ROUNDS = 22


def _write_config(path: Path, sim: Simulator, http_port: int) -> None:
    raw = {
        "service": {
            "name": "killtest",
            "state": "state.db",
            "http": f"127.0.0.1:{http_port}",
            "log_level": "warning",
        },
        "mqtt": {"enabled": False},
        "sources": [sim_source(sim, poll_interval="200ms", overlap="2s", watch=["billing_tasks"])],
    }
    path.write_text(toml_config(raw))


async def _wait(
    condition: Callable[[], bool],
    deadline: float,
    what: str,
    service: BillnotifyRun,
    rng: random.Random,
) -> None:
    """Wait for ``condition`` while killing and restarting the service at random."""
    next_kill = time.monotonic() + rng.uniform(0.1, 0.9)
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{service.tail()}")
        if time.monotonic() >= next_kill:
            await service.restart()
            next_kill = time.monotonic() + rng.uniform(0.2, 1.2)
        await asyncio.sleep(0.05)


@pytest.mark.slow
@pytest.mark.timeout(400)
async def test_sigkill_during_a_burst_logs_every_change_exactly_once(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("BILLNOTIFY_TEST_SEED", "7")))
    sim = Simulator(page_max=50)
    await sim.start()
    config = tmp_path / "config.toml"
    db = tmp_path / "state.db"
    http_port = free_port()
    _write_config(config, sim, http_port)
    ids = [sim.state.add_billing_task(status="Pending", priority="0")["id"] for _ in range(TASKS)]
    try:
        async with BillnotifyRun(config, http_port=http_port) as service:
            await service.start()

            def baseline_done() -> bool:
                return count(db, "SELECT count(*) FROM cursors") > 0

            await _wait(
                baseline_done, time.monotonic() + 60, "the baseline", service, random.Random(0)
            )
            for round_ in range(1, ROUNDS + 1):
                for rid in ids:
                    sim.state.update_billing_task(rid, priority=str(round_))

                def round_logged(value: str = str(round_)) -> bool:
                    rows = query(
                        db,
                        "SELECT count(DISTINCT subject) FROM events WHERE "
                        "json_extract(body, '$.data.object.priority') = ?",
                        (value,),
                    )
                    return bool(rows) and rows[0][0] == TASKS

                await _wait(round_logged, time.monotonic() + 60, f"round {round_}", service, rng)
                if service.kills < round_:  # at least one kill per round
                    await service.restart()
            assert await service.stop() == 0
    finally:
        await sim.stop()

    rows = query(db, "SELECT body FROM events")
    seen: dict[tuple[str, str], int] = {}
    for (body,) in rows:
        event = json.loads(str(body))
        assert event["type"] == "billing_task.updated", event["type"]
        key = (event["subject"], event["data"]["object"]["priority"])
        seen[key] = seen.get(key, 0) + 1
    expected = {(f"billing_tasks/{rid}", str(r)) for rid in ids for r in range(1, ROUNDS + 1)}
    duplicated = sum(1 for k, n in seen.items() if n > 1)
    missing = len(expected - set(seen))
    print(
        f"kills={service.kills} expected={len(expected)} logged={len(rows)} "
        f"duplicated={duplicated} missing={missing}"
    )
    assert service.kills >= 20
    assert (duplicated, missing, len(rows)) == (0, 0, len(expected))
