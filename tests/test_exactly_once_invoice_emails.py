"""A burst of invoice approvals with `billnotify run` SIGKILLed again and again: every
approved invoice is emailed exactly once (SPEC §4.1 "never sent twice").

The service runs as a subprocess against an in-test simulator whose invoice actions are
slowed down, so that kills land while emails are in flight. Every kill leaves some
deliveries ``sending``; the next start makes them ``uncertain``, and reconciliation
against the platform's ``undelivered`` filter settles each one: delivered (the email
went out before the kill) or sent again (it did not).

Ten emails also lose their answer after the platform acted (a connection reset), which
makes them ``uncertain`` without a kill; they reconcile as delivered.

The count comes from the simulator's own action log, not from billnotify.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from billnotify.simulator import Simulator
from servers import PYTHON, sim_source, toml_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

INVOICES = 200
KILLS = 6
EMAILS_BETWEEN_KILLS = 15
ACTION_DELAY = 0.25


def _write_config(folder: Path, sim: Simulator) -> Path:
    (folder / "templates").mkdir()
    raw = {
        "service": {
            "name": "exactly-once",
            "state": "state.db",
            "http": "",
            "log_level": "info",
            "delivery_concurrency": 4,
            "shutdown_grace": "5s",
        },
        "mqtt": {"enabled": False},
        "sources": [sim_source(sim, poll_interval="1s", watch=["invoices"], timeout="2s")],
        "rules": [
            {
                "name": "email-approved-invoices",
                "on": ["invoice.status_changed"],
                "when": "'Approved' in event.data.added",
                "actions": [
                    {"type": "invoice_action", "action": "email", "params": {"billStyle": "Full"}}
                ],
            }
        ],
    }
    path = folder / "config.toml"
    path.write_text(toml_config(raw))
    return path


def _query(db: Path, sql: str) -> list[tuple[object, ...]]:
    """Read the service's ledger (WAL: readers do not block the writer)."""
    if not db.exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            return list(conn.execute(sql).fetchall())
    except sqlite3.OperationalError:  # the schema is not there yet
        return []


async def _until(
    predicate: Callable[[], bool],
    what: str,
    timeout: float,
    proc: asyncio.subprocess.Process,
    log: Path,
) -> None:
    """Wait for ``predicate`` with a deadline, failing early if the service died."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if proc.returncode is not None:
            tail = log.read_text()[-3000:]
            raise AssertionError(
                f"billnotify exited ({proc.returncode}) waiting for {what}\n{tail}"
            )
        if asyncio.get_running_loop().time() > deadline:
            tail = log.read_text()[-3000:]
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tail}")
        await asyncio.sleep(0.05)


async def test_a_burst_of_approvals_with_repeated_sigkills_emails_each_invoice_once(
    tmp_path: Path,
) -> None:
    async with Simulator() as sim:
        invoices = [sim.state.add_invoice(status=["Raised"]) for _ in range(INVOICES)]
        ids = {invoice["id"] for invoice in invoices}
        config = _write_config(tmp_path, sim)
        db, log = tmp_path / "state.db", tmp_path / "billnotify.log"

        def email_calls() -> Counter[str]:
            return Counter(
                entry["invoice_id"] for entry in sim.state.action_log if entry["action"] == "email"
            )

        async def start() -> asyncio.subprocess.Process:
            with log.open("ab") as out:
                return await asyncio.create_subprocess_exec(
                    PYTHON, "-m", "billnotify", "run", "-c", str(config),
                    stdout=out, stderr=out, cwd=tmp_path,
                )  # fmt: skip

        proc = await start()
        try:
            await _until(
                lambda: (
                    _query(db, "SELECT count(*) FROM snapshots WHERE entity = 'invoice'")
                    == [(INVOICES,)]
                ),
                "the baseline of every invoice",
                60,
                proc,
                log,
            )
            # the first emails are performed but their answers lost (uncertain without a
            # kill); every email takes a while, so kills land with requests in flight
            prefix = "/backend/api/v1/invoices/"
            sim.faults.add(prefix, "reset_after", count=10, delay=ACTION_DELAY, method="POST")
            sim.faults.add(prefix, "slow", count=-1, delay=ACTION_DELAY, method="POST")
            for invoice in invoices:
                sim.state.update_invoice(invoice["id"], status=["Raised", "Approved"])

            kills = 0
            while kills < KILLS:
                target = sum(email_calls().values()) + EMAILS_BETWEEN_KILLS
                await _until(
                    lambda t=target: sum(email_calls().values()) >= t,
                    f"{target} email calls before kill {kills + 1}",
                    60,
                    proc,
                    log,
                )
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
                kills += 1
                in_flight = _query(db, "SELECT count(*) FROM deliveries WHERE status = 'sending'")
                print(f"kill {kills}: {sum(email_calls().values())} calls, in flight {in_flight}")
                proc = await start()

            def settled() -> bool:
                rows = dict(_query(db, "SELECT status, count(*) FROM deliveries GROUP BY status"))
                return rows.get("succeeded") == INVOICES and set(email_calls()) == ids

            await _until(settled, "every delivery to settle", 180, proc, log)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

        calls = email_calls()
        once = sum(1 for i in ids if calls[i] == 1)
        twice = sum(1 for i in ids if calls[i] >= 2)
        never = sum(1 for i in ids if calls[i] == 0)
        statuses = dict(_query(db, "SELECT status, count(*) FROM deliveries GROUP BY status"))
        notes = dict(_query(db, "SELECT note, count(*) FROM deliveries GROUP BY note"))
        print(
            f"\nexpected {INVOICES} | once {once} | twice or more {twice} | never {never}"
            f" | kills {kills} | ledger {statuses} | notes {notes}"
        )
        assert (once, twice, never) == (INVOICES, 0, 0)
        assert kills >= 5
