"""Customer emails with `billnotify run` SIGKILLed again and again, more delivery slots
than SMTP connections (issue 10, item 4): none sent twice, none lost, and a kill leaves
``uncertain`` only emails whose message was really leaving.

Before, a customer email was recorded ``sending`` as soon as a delivery slot took it,
while it still queued for one of the few SMTP connections: each kill left every slot's
email ``uncertain`` although most had never reached the server. Now an email is prepared
and its connection taken first, so only emails on a connection can be ``sending``.

The service runs as a subprocess against the simulator; an aiosmtpd sink in this process
takes its time to answer DATA (so kills land with messages in flight) and records each
recipient it saw (RCPT) and each message it received (DATA). Each invoice's email goes
to its own address, so the sink's records say what happened to each delivery.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from billnotify.simulator import Simulator
from processes import BillnotifyRun, count, query
from servers import SmtpSink, _Handler, sim_source, toml_config

pytestmark = [pytest.mark.fault, pytest.mark.timeout(120)]

INVOICES = 120
KILLS = 8
MAILS_BETWEEN_KILLS = 8
CONNECTIONS = 2
SLOTS = 8
DATA_STALL = 0.1
"""Seconds the sink waits (the message stored) before answering DATA."""


@dataclass
class _Recording(_Handler):
    """The sink's handler, noting every recipient it was given (the envelope began)."""

    seen: Counter[str] = field(default_factory=Counter)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        with self.lock:
            self.seen[address] += 1
        return await super().handle_RCPT(server, session, envelope, address, options)


def _address(invoice_id: object) -> str:
    return f"customer-{invoice_id}@example.com"


def _write_config(folder: Path, sim: Simulator, smtp_port: int) -> Path:
    templates = folder / "templates"
    templates.mkdir()
    (templates / "invoice_ready.subject.j2").write_text("Your invoice {{ object.id }}")
    (templates / "invoice_ready.txt.j2").write_text("Invoice {{ object.id }} is approved.\n")
    raw = {
        "service": {
            "name": "customer-emails",
            "state": "state.db",
            "http": "",
            "log_level": "info",
            "delivery_concurrency": SLOTS,
            "shutdown_grace": "5s",
        },
        "mqtt": {"enabled": False},
        "sources": [sim_source(sim, poll_interval="1s", watch=["invoices"], timeout="2s")],
        "smtp": {
            "host": "127.0.0.1",
            "port": smtp_port,
            "from": "Billing <billing@example.com>",
            "max_connections": CONNECTIONS,
            "timeout": "5s",
        },
        "rules": [
            {
                "name": "tell-the-customer",
                "on": ["invoice.status_changed"],
                "when": "'Approved' in event.data.added",
                "actions": [
                    {
                        "type": "email",
                        "to": ["customer-{{ object.id }}@example.com"],
                        "template": "invoice_ready",
                    }
                ],
            }
        ],
    }
    path = folder / "config.toml"
    path.write_text(toml_config(raw))
    return path


async def test_sigkills_leave_uncertain_only_customer_emails_that_were_in_flight(
    tmp_path: Path,
) -> None:
    sink = SmtpSink()
    handler = _Recording(data_stall=DATA_STALL)
    sink.handler = sink.controller.handler = handler
    sink.start()
    try:
        async with Simulator() as sim:
            invoices = [sim.state.add_invoice(status=["Raised"]) for _ in range(INVOICES)]
            addresses = {_address(invoice["id"]): invoice["id"] for invoice in invoices}
            config = _write_config(tmp_path, sim, sink.port)
            db = tmp_path / "state.db"

            def received() -> Counter[str]:
                return Counter(to for message in sink.messages for to in message.rcpt_tos)

            in_flight_at_kill = []
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

                def emails() -> int:
                    return sum(received().values())

                async for _ in service.kill_every(MAILS_BETWEEN_KILLS, emails, "emails", KILLS):
                    in_flight_at_kill.append(
                        count(db, "SELECT count(*) FROM deliveries WHERE status='sending'")
                    )

                def settled() -> bool:
                    rows = dict(query(db, "SELECT status, count(*) FROM deliveries GROUP BY 1"))
                    done = rows.get("succeeded", 0) + rows.get("uncertain", 0)
                    return done == INVOICES == sum(rows.values())  # type: ignore[operator]

                await service.until(settled, "every delivery to settle", 40)
                assert await service.stop() == 0
    finally:
        sink.stop()

    rows = query(db, "SELECT id, target, status FROM deliveries")
    status_of = {str(target): str(status) for _id, target, status in rows}
    got, seen = received(), Counter(handler.seen)
    uncertain = {to for to, status in status_of.items() if status == "uncertain"}
    succeeded = {to for to, status in status_of.items() if status == "succeeded"}
    twice = {to for to in addresses if got[to] > 1}
    lost = {to for to in addresses if got[to] == 0 and to not in uncertain}
    false_success = {to for to in succeeded if got[to] == 0}
    uncertain_sent = {to for to in uncertain if got[to]}
    uncertain_unsent = uncertain - uncertain_sent
    never_on_the_wire = {to for to in uncertain if seen[to] == 0}
    print(
        f"\n{INVOICES} customer emails, {SLOTS} slots, {CONNECTIONS} SMTP connections, "
        f"{service.kills} SIGKILLs (rows 'sending' at each kill: {in_flight_at_kill}): "
        f"succeeded {len(succeeded)}, uncertain {len(uncertain)} "
        f"({len(uncertain_sent)} received by the server, {len(uncertain_unsent)} not, "
        f"{len(never_on_the_wire)} never on the wire), lost {len(lost)}, "
        f"twice {len(twice)}, false success {len(false_success)}"
    )
    assert set(status_of) == set(addresses)
    assert (twice, lost, false_success) == (set(), set(), set())
    # only an email on a connection can be 'sending': each kill leaves at most as many
    # uncertain as there are connections, and every one of them had reached the server
    assert len(uncertain) <= service.kills * CONNECTIONS
    assert max(in_flight_at_kill) <= CONNECTIONS + 1  # + an outcome being committed
    assert never_on_the_wire == set()
    assert service.kills == KILLS
