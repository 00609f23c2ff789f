"""Chained customer emails with `billnotify run` SIGKILLed again and again (SPEC §7.5, §4.1).

Each approved invoice gets a download link (``generateDownloadLink``, ``id = "link"``)
and then an email to its customer carrying ``results.link.download_url``
(``after = "link"``). The service runs as a subprocess against the simulator over HTTP
and an aiosmtpd sink that takes its time to answer DATA, and is killed whenever a few
more emails have arrived, so kills land in every phase: a link requested, a link's
success committed with its email not moved on yet, an email queued, an email leaving.

Whatever dies when: no customer gets two emails, every chain ends (the link succeeded,
the email ``succeeded``, or ``uncertain`` when a kill cut its own request; nothing left
``waiting``), and every email carries a link the platform made for that very invoice.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from billnotify.simulator import Simulator
from processes import BillnotifyRun, count, query
from servers import SmtpSink, _Handler, sim_source, toml_config

pytestmark = [pytest.mark.fault, pytest.mark.timeout(150)]

INVOICES = 60
KILLS = 6
MAILS_BETWEEN_KILLS = 6
DATA_STALL = 0.05


def _write_config(folder: Path, sim: Simulator, smtp_port: int) -> Path:
    templates = folder / "templates"
    templates.mkdir()
    (templates / "download.subject.j2").write_text("Your invoice {{ object.id }}")
    (templates / "download.txt.j2").write_text(
        "Invoice {{ object.id }}: {{ results.link.download_url }}\n"
    )
    raw = {
        "service": {
            "name": "chained-emails",
            "state": "state.db",
            "http": "",
            "log_level": "info",
            "delivery_concurrency": 8,
            "shutdown_grace": "5s",
        },
        "mqtt": {"enabled": False},
        "sources": [sim_source(sim, poll_interval="1s", watch=["invoices"], timeout="2s")],
        "smtp": {
            "host": "127.0.0.1",
            "port": smtp_port,
            "from": "Billing <billing@example.com>",
            "max_connections": 2,
            "timeout": "5s",
        },
        "rules": [
            {
                "name": "link-to-customer",
                "on": ["invoice.status_changed"],
                "when": "'Approved' in event.data.added",
                "actions": [
                    {
                        "type": "invoice_action",
                        "id": "link",
                        "action": "generateDownloadLink",
                        "params": {"expiryHours": 24},
                    },
                    {
                        "type": "email",
                        "after": "link",
                        "to": ["customer-{{ object.id }}@example.com"],
                        "template": "download",
                    },
                ],
            }
        ],
    }
    path = folder / "config.toml"
    path.write_text(toml_config(raw))
    return path


_WINDOW = (
    "SELECT count(*) FROM deliveries AS d JOIN deliveries AS p ON p.rule = d.rule "
    "AND p.event_id = d.event_id AND p.action_index = 0 "
    "WHERE d.action_index = 1 AND p.status = 'succeeded' AND d.status IN ('waiting', 'pending')"
)
"""Chains between their link's success and their email's start."""


async def test_sigkills_neither_lose_nor_repeat_a_chained_customer_email(tmp_path: Path) -> None:
    sink = SmtpSink()
    sink.handler = sink.controller.handler = _Handler(data_stall=DATA_STALL)
    sink.start()
    try:
        async with Simulator() as sim:
            invoices = [sim.state.add_invoice(status=["Raised"]) for _ in range(INVOICES)]
            config = _write_config(tmp_path, sim, sink.port)
            db = tmp_path / "state.db"

            def received() -> int:
                return len(sink.messages)

            between = []
            async with BillnotifyRun(config) as service:
                await service.start()
                await service.until(
                    lambda: (
                        query(db, "SELECT count(*) FROM snapshots WHERE entity = 'invoice'")
                        == [(INVOICES,)]
                    ),
                    "the baseline of every invoice",
                )
                for invoice in invoices:
                    sim.state.update_invoice(invoice["id"], status=["Raised", "Approved"])
                async for _ in service.kill_every(MAILS_BETWEEN_KILLS, received, "emails", KILLS):
                    between.append(count(db, _WINDOW))

                def settled() -> bool:
                    rows = query(
                        db, "SELECT action_index, status, count(*) FROM deliveries GROUP BY 1, 2"
                    )
                    links = {s: n for i, s, n in rows if i == 0}
                    mails = {s: n for i, s, n in rows if i == 1}
                    done = mails.get("succeeded", 0) + mails.get("uncertain", 0)
                    return links.get("succeeded") == INVOICES and done == INVOICES

                await service.until(settled, "every chain to settle", 60)
                assert await service.stop() == 0
            links = dict(sim.state.download_links)
    finally:
        sink.stop()

    assert service.kills == KILLS
    print(f"chains between their link and their email at each kill: {between}")
    assert any(between), f"no kill landed between a link and its email: {between}"
    rows = query(db, "SELECT target, status, note FROM deliveries WHERE action_index = 1")
    status_of = {str(target): str(status) for target, status, _ in rows}
    assert {str(note) for *_, note in rows} == {"after link: succeeded"}
    got = Counter(to for message in sink.messages for to in message.rcpt_tos)
    assert max(got.values()) == 1, f"a customer emailed twice: {got.most_common(3)}"
    for invoice in invoices:
        address = f"customer-{invoice['id']}@example.com"
        if status_of[address] == "succeeded":
            assert got[address] == 1, f"{address} succeeded but was not emailed"
        else:
            assert status_of[address] == "uncertain"
    # every email carries a link the platform made for its own invoice
    for message in sink.messages:
        text = str(message.message.get_body(preferencelist=("plain",)).get_content())  # type: ignore[union-attr]
        found = re.fullmatch(r"Invoice (\S+): \S+/download/invoice/(\S+)", text.strip())
        assert found is not None, text
        assert links[found.group(2)]["invoice_id"] == found.group(1)


async def test_a_kill_right_after_the_links_success_leaves_emails_that_a_restart_sends_once(
    tmp_path: Path,
) -> None:
    """The narrowest window, made on purpose: each link's success is committed, its
    email still ``waiting`` (the process died before moving it on). The next start's
    sweep moves every one on and each customer gets exactly one email with its link."""
    approved = 5
    sink = SmtpSink()
    sink.handler = sink.controller.handler = _Handler()
    async with Simulator() as sim:
        invoices = [sim.state.add_invoice(status=["Raised"]) for _ in range(approved)]
        config = _write_config(tmp_path, sim, sink.port)  # the sink is not listening yet
        db = tmp_path / "state.db"

        try:
            async with BillnotifyRun(config) as service:
                await service.start()
                await service.until(
                    lambda: query(db, "SELECT count(*) FROM snapshots") == [(approved,)],
                    "the baseline",
                )
                for invoice in invoices:
                    sim.state.update_invoice(invoice["id"], status=["Raised", "Approved"])
                # links made and kept; the emails could not connect (nothing sent), so they wait
                await service.until(
                    lambda: (
                        count(
                            db,
                            "SELECT count(*) FROM deliveries AS d JOIN delivery_results AS r "
                            "ON r.delivery_id = d.id WHERE d.status = 'succeeded'",
                        )
                        == approved
                        and count(
                            db,
                            "SELECT count(*) FROM deliveries WHERE action_index = 1 "
                            "AND status = 'retry_scheduled'",
                        )
                        == approved
                    ),
                    "links kept, emails refused by the closed SMTP port",
                )
                await service.kill()
                # what a kill between a link's commit and its email's move leaves behind
                with contextlib.closing(sqlite3.connect(db)) as conn, conn:
                    conn.execute(
                        "UPDATE deliveries SET status = 'waiting', attempts = 0, note = NULL, "
                        "last_error = NULL WHERE action_index = 1"
                    )
                    conn.execute(
                        "DELETE FROM attempts WHERE delivery_id IN "
                        "(SELECT id FROM deliveries WHERE action_index = 1)"
                    )
                sink.start()
                await service.start()
                await service.until(
                    lambda: (
                        count(
                            db,
                            "SELECT count(*) FROM deliveries WHERE action_index = 1 "
                            "AND status = 'succeeded'",
                        )
                        == approved
                    ),
                    "every email sent after the restart",
                )
                assert await service.stop() == 0
        finally:
            sink.stop()
        links = dict(sim.state.download_links)
    got = Counter(to for message in sink.messages for to in message.rcpt_tos)
    assert got == Counter(f"customer-{invoice['id']}@example.com" for invoice in invoices)
    assert len(links) == approved  # the links were not made again
    for message in sink.messages:
        text = str(message.message.get_body(preferencelist=("plain",)).get_content())  # type: ignore[union-attr]
        found = re.fullmatch(r"Invoice (\S+): \S+/download/invoice/(\S+)", text.strip())
        assert found is not None, text
        assert links[found.group(2)]["invoice_id"] == found.group(1)
