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

from collections import Counter
from pathlib import Path

import pytest

from billnotify.simulator import Simulator
from processes import BillnotifyRun, query
from servers import sim_source, toml_config

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


async def test_a_burst_of_approvals_with_repeated_sigkills_emails_each_invoice_once(
    tmp_path: Path,
) -> None:
    async with Simulator() as sim:
        invoices = [sim.state.add_invoice(status=["Raised"]) for _ in range(INVOICES)]
        ids = {invoice["id"] for invoice in invoices}
        config = _write_config(tmp_path, sim)
        db = tmp_path / "state.db"

        def email_calls() -> Counter[str]:
            return Counter(
                entry["invoice_id"] for entry in sim.state.action_log if entry["action"] == "email"
            )

        async with BillnotifyRun(config) as service:
            await service.start()
            await service.until(
                lambda: (
                    query(db, "SELECT count(*) FROM snapshots WHERE entity = 'invoice'")
                    == [(INVOICES,)]
                ),
                "the baseline of every invoice",
                60,
            )
            # the first emails are performed but their answers lost (uncertain without a
            # kill); every email takes a while, so kills land with requests in flight
            prefix = "/backend/api/v1/invoices/"
            sim.faults.add(prefix, "reset_after", count=10, delay=ACTION_DELAY, method="POST")
            sim.faults.add(prefix, "slow", count=-1, delay=ACTION_DELAY, method="POST")
            for invoice in invoices:
                sim.state.update_invoice(invoice["id"], status=["Raised", "Approved"])

            def calls() -> int:
                return sum(email_calls().values())

            async for kills in service.kill_every(
                EMAILS_BETWEEN_KILLS, calls, "email calls", KILLS, 60
            ):
                in_flight = query(db, "SELECT count(*) FROM deliveries WHERE status = 'sending'")
                print(f"kill {kills}: {calls()} calls, in flight {in_flight}")

            def settled() -> bool:
                rows = dict(query(db, "SELECT status, count(*) FROM deliveries GROUP BY status"))
                return rows.get("succeeded") == INVOICES and set(email_calls()) == ids

            await service.until(settled, "every delivery to settle", 180)
            assert await service.stop() == 0

        calls = email_calls()
        once = sum(1 for i in ids if calls[i] == 1)
        twice = sum(1 for i in ids if calls[i] >= 2)
        never = sum(1 for i in ids if calls[i] == 0)
        statuses = dict(query(db, "SELECT status, count(*) FROM deliveries GROUP BY status"))
        notes = dict(query(db, "SELECT note, count(*) FROM deliveries GROUP BY note"))
        print(
            f"\nexpected {INVOICES} | once {once} | twice or more {twice} | never {never}"
            f" | kills {service.kills} | ledger {statuses} | notes {notes}"
        )
        assert (once, twice, never) == (INVOICES, 0, 0)
        assert service.kills >= 5
