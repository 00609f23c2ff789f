"""A grouped rule in the running service: ``billnotify run`` polls the simulator, a burst
of failed tasks becomes one digest email (aiosmtpd) and one digest webhook per task type,
then the later failures of one type a second digest of those alone."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path

from standardwebhooks import Webhook

from billnotify.simulator import Simulator
from servers import SmtpSink, WebhookReceiver, free_port, sim_source, toml_config

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _cursors(db: Path) -> int:
    if not db.exists():
        return 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return int(con.execute("SELECT count(*) FROM cursors").fetchone()[0])
    except sqlite3.OperationalError:
        return 0  # schema not created yet
    finally:
        con.close()


async def _until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_a_burst_of_failures_is_one_digest_per_task_type(
    tmp_path: Path, sim: Simulator, sink: SmtpSink, receiver: WebhookReceiver
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        toml_config(
            {
                "service": {
                    "state": "state.db",
                    "http": f"127.0.0.1:{free_port()}",
                    "log_level": "warning",
                },
                "mqtt": {"enabled": False},
                "sources": [sim_source(sim, poll_interval="200ms", watch=["billing_tasks"])],
                "smtp": {"host": "127.0.0.1", "port": sink.port, "from": "b@example.com"},
                "webhooks": [
                    {
                        "name": "ops",
                        "url": receiver.url("/ok"),
                        "secret": SECRET,
                        "allow_private": True,
                    }
                ],
                "rules": [
                    {
                        "name": "failed-tasks-digest",
                        "on": ["billing_task.status_changed"],
                        "when": "event.data.object.status in ['Failed', 'Error']",
                        "group_by": ["source", "object.billingTaskType"],
                        "group_wait": "1500ms",
                        "group_interval": "2s",
                        "actions": [
                            {
                                "type": "email",
                                "to": ["ops@example.com"],
                                "template": "task_failed_digest",
                            },
                            {"type": "webhook", "endpoint": "ops"},
                        ],
                    }
                ],
            }
        )
    )
    imports = [sim.state.add_billing_task(billingTaskType="Import CDRs")["id"] for _ in range(30)]
    invoices = [
        sim.state.add_billing_task(billingTaskType="Generate Invoice")["id"] for _ in range(3)
    ]
    log = tmp_path / "stderr.log"
    with log.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "billnotify",
            "run",
            "-c",
            str(config),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            db = tmp_path / "state.db"
            # the baseline poll: these tasks are known from then on, not new
            await _until(lambda: _cursors(db) > 0, 30, "the baseline")
            for rid in imports[:20]:
                sim.state.update_billing_task(rid, status="Failed")
            for rid in invoices:
                sim.state.update_billing_task(rid, status="Error")
            await _until(lambda: len(sink.messages) >= 2, 30, "the first digests")
            for rid in imports[20:]:
                sim.state.update_billing_task(rid, status="Failed")
            await _until(lambda: len(sink.messages) >= 3, 30, "the second digest")
            await asyncio.sleep(2.5)  # a group interval with nothing new: nothing more is sent
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    errors = log.read_text()
    subjects = [m.message["Subject"] for m in sink.messages]
    assert sorted(subjects[:2]) == [
        "[acme] 20 billing tasks failed: Import CDRs",
        "[acme] 3 billing tasks errored: Generate Invoice",
    ], errors
    assert subjects[2:] == ["[acme] 10 billing tasks failed: Import CDRs"]
    bodies = [Webhook(SECRET).verify(hit.body, hit.headers) for hit in receiver.hits]
    counts = sorted((b["group"]["object.billingTaskType"], b["count"]) for b in map(dict, bodies))
    assert counts == [("Generate Invoice", 3), ("Import CDRs", 10), ("Import CDRs", 20)]
    ids = [e["data"]["object"]["id"] for b in bodies for e in b["events"]]
    assert sorted(ids) == sorted(imports + invoices)  # every failure once, none twice
    assert len({hit.headers["webhook-id"] for hit in receiver.hits}) == 3
    assert json.loads(receiver.hits[0].body)["events"][0]["type"] == ("billing_task.status_changed")
