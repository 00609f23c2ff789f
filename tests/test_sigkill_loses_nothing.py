"""SIGKILL the service at random points during a burst of changes: the log ends with
every change exactly once (SPEC §2: deterministic ids, atomic commits)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from billnotify.simulator import Simulator
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


def _query(db: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute(sql, params).fetchall()
    except sqlite3.OperationalError:
        return []  # schema not created yet
    finally:
        con.close()


class Service:
    def __init__(self, config: Path, http_port: int) -> None:
        self.config = config
        self.http_port = http_port
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "billnotify", "run", "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.kills += 1

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/healthz", timeout=1):
                return True
        except OSError:
            return False

    async def stop(self) -> int:
        """SIGTERM once the service is up (a graceful stop, not a kill during start-up)."""
        assert self.proc is not None
        deadline = time.monotonic() + 30
        while not self.healthy():
            assert time.monotonic() < deadline, "the service never came up"
            await asyncio.sleep(0.05)
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


async def _wait(condition, deadline: float, what: str, service: Service, rng: random.Random):
    """Wait for ``condition`` while killing and restarting the service at random."""
    next_kill = time.monotonic() + rng.uniform(0.1, 0.9)
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        if time.monotonic() >= next_kill:
            service.kill()
            service.start()
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
    service = Service(config, http_port)
    service.start()
    try:

        def baseline_done() -> bool:
            rows = _query(db, "SELECT count(*) FROM cursors")
            return bool(rows and rows[0][0])

        await _wait(baseline_done, time.monotonic() + 60, "the baseline", service, random.Random(0))
        for round_ in range(1, ROUNDS + 1):
            for rid in ids:
                sim.state.update_billing_task(rid, priority=str(round_))

            def round_logged(value: str = str(round_)) -> bool:
                rows = _query(
                    db,
                    "SELECT count(DISTINCT subject) FROM events WHERE "
                    "json_extract(body, '$.data.object.priority') = ?",
                    (value,),
                )
                return bool(rows) and rows[0][0] == TASKS

            await _wait(round_logged, time.monotonic() + 60, f"round {round_}", service, rng)
            if service.kills < round_:  # at least one kill per round
                service.kill()
                service.start()
        assert await service.stop() == 0
    finally:
        if service.proc and service.proc.poll() is None:
            service.proc.kill()
        await sim.stop()

    rows = _query(db, "SELECT body FROM events")
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
