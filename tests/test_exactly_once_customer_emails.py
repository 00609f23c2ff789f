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

import asyncio
import contextlib
import signal
import sqlite3
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from billnotify.simulator import Simulator
from servers import PYTHON, SmtpSink, _Handler, sim_source, toml_config

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
        await asyncio.sleep(0.02)


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
            db, log = tmp_path / "state.db", tmp_path / "billnotify.log"

            def received() -> Counter[str]:
                return Counter(to for message in sink.messages for to in message.rcpt_tos)

            async def start() -> asyncio.subprocess.Process:
                with log.open("ab") as out:
                    return await asyncio.create_subprocess_exec(
                        PYTHON, "-m", "billnotify", "run", "-c", str(config),
                        stdout=out, stderr=out, cwd=tmp_path,
                    )  # fmt: skip

            proc = await start()
            kills, in_flight_at_kill = 0, []
            try:
                await _until(
                    lambda: (
                        _query(db, "SELECT count(*) FROM snapshots WHERE entity = 'invoice'")
                        == [(INVOICES,)]
                    ),
                    "the baseline of every invoice",
                    30,
                    proc,
                    log,
                )
                for invoice in invoices:
                    sim.state.update_invoice(invoice["id"], status=["Raised", "Approved"])
                while kills < KILLS:
                    target = sum(received().values()) + MAILS_BETWEEN_KILLS
                    await _until(
                        lambda t=target: sum(received().values()) >= t,
                        f"{target} emails before kill {kills + 1}",
                        30,
                        proc,
                        log,
                    )
                    proc.send_signal(signal.SIGKILL)
                    await proc.wait()
                    kills += 1
                    sending = _query(db, "SELECT count(*) FROM deliveries WHERE status='sending'")
                    in_flight_at_kill.append(sending[0][0] if sending else 0)
                    proc = await start()

                def settled() -> bool:
                    rows = dict(_query(db, "SELECT status, count(*) FROM deliveries GROUP BY 1"))
                    done = rows.get("succeeded", 0) + rows.get("uncertain", 0)
                    return done == INVOICES == sum(rows.values())  # type: ignore[operator]

                await _until(settled, "every delivery to settle", 40, proc, log)
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(proc.wait(), 30) == 0
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
    finally:
        sink.stop()

    rows = _query(db, "SELECT id, target, status FROM deliveries")
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
        f"{kills} SIGKILLs (rows 'sending' at each kill: {in_flight_at_kill}): "
        f"succeeded {len(succeeded)}, uncertain {len(uncertain)} "
        f"({len(uncertain_sent)} received by the server, {len(uncertain_unsent)} not, "
        f"{len(never_on_the_wire)} never on the wire), lost {len(lost)}, "
        f"twice {len(twice)}, false success {len(false_success)}"
    )
    assert set(status_of) == set(addresses)
    assert (twice, lost, false_success) == (set(), set(), set())
    # only an email on a connection can be 'sending': each kill leaves at most as many
    # uncertain as there are connections, and every one of them had reached the server
    assert len(uncertain) <= kills * CONNECTIONS
    assert max(in_flight_at_kill) <= CONNECTIONS + 1  # + an outcome being committed
    assert never_on_the_wire == set()
    assert kills == KILLS
