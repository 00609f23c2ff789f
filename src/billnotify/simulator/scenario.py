"""A deterministic scenario that moves simulated objects through their lifecycles.

Each :meth:`Scenario.tick` makes a handful of changes, chosen by a seeded RNG:

- billing tasks are added and go Pending -> Running -> Completed / Failed / Error
  (occasionally Skipped); failed ones are retried (``retryCount`` + 1, back to Pending);
- a billing run every few ticks goes Pending -> Requested -> Running (``commencedDate``)
  -> Complete (``completedDate``), raising the unsent invoices of a few customers;
- raised invoices get ``Approved``, then ``Emailed``, then are paid (``paidDate``,
  ``outstanding`` 0) or become overdue (``dueDate`` in the past, ``outstanding`` > 0);
- unsent invoices collect charges;
- property billing headers are published, and republished (``updateTimeStamp`` moves).
"""

from __future__ import annotations

import json
import logging
import random
from datetime import date, timedelta
from typing import Any

from billnotify.simulator import records as rec
from billnotify.simulator.state import SimState

logger = logging.getLogger(__name__)

DEFAULT_PROPERTIES = ("2eff1042c50c1eda889e61573e3c194c", "7c1d2a9e4b5f4e0d8a3b6c9d0e1f2a3b")
_CUSTOMER_NAMES = ("Acme Telecom Ltd", "Bluebird Cafe", "Crown Dental", "Delta Logistics")
_TASK_TYPES = ("Generate Invoice", "Import CDRs", "Email Invoices", "Collect Payments")
_MAX_RETRIES = 2


class Scenario:
    """Moves the records of a :class:`SimState` through their lifecycles, one step per tick.

    Args:
        state: The state to mutate.
        rng_seed: Seed of the random choices; the same seed gives the same story.
        customers: How many customers to create.
        properties: Property UUIDs that get billing headers.
        run_every: Ticks between billing runs.
    """

    def __init__(
        self,
        state: SimState,
        rng_seed: int = 0,
        *,
        customers: int = 4,
        properties: tuple[str, ...] = DEFAULT_PROPERTIES,
        run_every: int = 6,
    ) -> None:
        self.state = state
        self.rng = random.Random(rng_seed)
        self.customer_count = customers
        self.properties = properties
        self.run_every = run_every
        self.ticks = 0
        self._populated = False
        self._customer_ids: list[str] = []
        self._approved_tick: dict[str, int] = {}
        self._overdue: set[str] = set()

    # -- helpers -------------------------------------------------------------------

    def _now_text(self) -> str:
        return rec.fmt_datetime(self.state.clock.now())

    def _today(self) -> date:
        return self.state.clock.now().date()

    def _amount(self, customer_id: str, value: float) -> Any:
        # The last customer's amounts come as JSON numbers, the others as strings.
        return (
            round(value, 2)
            if customer_id == self._customer_ids[-1]
            else rec.fmt_money(rec.money(value))
        )

    def _new_unsent(self, customer_id: str) -> None:
        amount = self.rng.choice((0.0, 12.5, 30.0))
        self.state.add_invoice(
            customerID=customer_id,
            status=["Unsent"],
            invoiceAmount=self._amount(customer_id, amount),
            invoiceChargesRecurring=rec.fmt_money(rec.money(amount)),
            invoiceChargesNonCall=rec.fmt_money(rec.money(amount)),
        )

    # -- setup ---------------------------------------------------------------------

    def populate(self) -> None:
        """Create the starting data once: customers, invoices, a finished run, headers."""
        if self._populated:
            return
        self._populated = True
        today = self._today()
        last_month = today.replace(day=1) - timedelta(days=1)
        for index in range(self.customer_count):
            name = _CUSTOMER_NAMES[index % len(_CUSTOMER_NAMES)]
            slug = name.split()[0].lower()
            customer = self.state.add_customer(
                name=name, email=f"accounts@{slug}.example.com", cdrEmail=f"cdrs@{slug}.example.com"
            )
            self._customer_ids.append(customer["id"])
        run = self.state.add_billing_run(
            name=f"Monthly billing {last_month:%B %Y}",
            status="Complete",
            invoiceDate=rec.fmt_date(last_month),
            cutoffDate=rec.fmt_date(last_month.replace(day=1)),
            dueDate=rec.fmt_date(last_month + timedelta(days=14)),
            commencedDate=rec.fmt_datetime(self.state.clock.now() - timedelta(days=20)),
            completedDate=rec.fmt_datetime(self.state.clock.now() - timedelta(days=20)),
        )
        total = rec.money(0)
        for customer_id in self._customer_ids:
            net = 40.0 + 10 * int(customer_id)
            invoice = self.state.add_invoice(
                customerID=customer_id,
                status=["Raised", "Approved", "Emailed", "Paid"],
                billingRun=run["id"],
                invoiceDate=run["invoiceDate"],
                cutoffDate=run["cutoffDate"],
                dueDate=run["dueDate"],
                paidDate=rec.fmt_date(last_month + timedelta(days=10)),
                invoiceAmount=self._amount(customer_id, net),
                invoiceCallCount=12,
                invoiceCallMinutes=47,
            )
            paid = invoice["total"]
            self.state.update_invoice(
                invoice["id"], paidAmount=paid, outstanding=self._amount(customer_id, 0)
            )
            total += rec.money(net)
            self._new_unsent(customer_id)
        self.state.update_billing_run(run["id"], invoiceAmount=rec.fmt_money(total))
        for index in range(2):
            self.state.add_billing_task(
                billingTaskType=_TASK_TYPES[index],
                status="Completed",
                startedTime=self._now_text(),
                endedTime=self._now_text(),
                activityLog="Completed without errors",
            )
        for prop in self.properties:
            for year in (today.year - 3, today.year - 2):
                self.state.add_billing_header(
                    prop, startDate=f"{year}-10-01T00:00:00", endDate=f"{year + 1}-09-30T00:00:00"
                )

    # -- ticking -------------------------------------------------------------------

    def tick(self) -> None:
        """Make one step of the story (populating first if needed)."""
        self.populate()
        self.ticks += 1
        self._tick_tasks()
        self._tick_runs()
        self._tick_invoices()
        self._tick_headers()

    def _tick_tasks(self) -> None:
        state, rng = self.state, self.rng
        for _ in range(rng.choice((0, 0, 1, 1, 2))):
            kind = rng.choice(_TASK_TYPES)
            customer_id = rng.choice(self._customer_ids)
            state.add_billing_task(
                billingTaskType=kind,
                customerID=customer_id,
                attached=f'<a href="/customers/{customer_id}">Customer {customer_id}</a>',
                parameters=json.dumps({"customerID": customer_id}),
                priority=rng.choice(("1", "5", "10")),
                activityLog="Queued",
                # Payment collection is queued for later, as the platform does overnight.
                delayTime=(
                    rec.fmt_datetime(state.clock.now() + timedelta(hours=1))
                    if kind == "Collect Payments"
                    else None
                ),
            )
        movable = [
            t
            for t in state.billing_tasks.values()
            # Billing Run tasks end with their run (see _complete_run).
            if t["billingTaskType"] != "Billing Run"
            and (
                t["status"] in ("Pending", "Running")
                or (t["status"] in ("Failed", "Error") and int(t["retryCount"]) < _MAX_RETRIES)
            )
        ]
        for task in sorted(movable, key=lambda t: int(t["id"]))[:4]:
            self._advance_task(task)

    def _advance_task(self, task: dict[str, Any]) -> None:
        state, rng, now = self.state, self.rng, self._now_text()
        log = str(task.get("activityLog") or "")
        status = task["status"]
        if status == "Pending":
            if rng.random() < 0.07:
                state.update_billing_task(
                    task["id"],
                    status="Skipped",
                    endedTime=now,
                    activityLog=f"{log}\n{now} Skipped: nothing to do",
                )
            else:
                state.update_billing_task(
                    task["id"],
                    status="Running",
                    startedTime=now,
                    endedTime=None,
                    activityLog=f"{log}\n{now} Started",
                )
        elif status == "Running":
            roll = rng.random()
            if roll < 0.15:
                return  # still working: long-running tasks are part of the story
            outcome = "Completed" if roll < 0.7 else ("Failed" if roll < 0.85 else "Error")
            state.update_billing_task(
                task["id"], status=outcome, endedTime=now, activityLog=f"{log}\n{now} {outcome}"
            )
        elif rng.random() < 0.6:
            retries = int(task["retryCount"]) + 1
            state.update_billing_task(
                task["id"],
                status="Pending",
                retryCount=str(retries),
                startedTime=None,
                endedTime=None,
                activityLog=f"{log}\n{now} Retry {retries} queued",
            )

    def _tick_runs(self) -> None:
        state = self.state
        active = [r for r in state.billing_runs.values() if r["status"] != "Complete"]
        if not active:
            if self.ticks % self.run_every == 1:
                today = self._today()
                state.add_billing_run(
                    name=f"Billing run {today:%Y-%m-%d} #{len(state.billing_runs) + 1}",
                    invoiceDate=rec.fmt_date(today),
                    dueDate=rec.fmt_date(today + timedelta(days=14)),
                )
            return
        run = min(active, key=lambda r: int(r["id"]))
        if run["status"] == "Pending":
            state.update_billing_run(run["id"], status="Requested")
        elif run["status"] == "Requested":
            state.update_billing_run(run["id"], status="Running", commencedDate=self._now_text())
            state.add_billing_task(
                billingTaskType="Billing Run",
                status="Running",
                startedTime=self._now_text(),
                attached=f'<a href="/billingRuns/{run["id"]}">{run["name"]}</a>',
                parameters=json.dumps({"billingRunID": run["id"]}),
            )
        elif run["status"] == "Running":
            self._complete_run(run)
        else:
            # An unknown status set by a client: the platform picks it up as requested.
            state.update_billing_run(run["id"], status="Requested")

    def _complete_run(self, run: dict[str, Any]) -> None:
        state = self.state
        chosen = sorted(self.rng.sample(self._customer_ids, k=min(3, len(self._customer_ids))))
        total = rec.money(0)
        for customer_id in chosen:
            unsent = state.unsent_invoice(customer_id)
            if unsent is None:
                continue
            net = rec.money(unsent["invoiceAmount"]) + rec.money(self.rng.choice((45, 60, 99.5)))
            raised = {"invoiceAmount": self._amount(customer_id, float(net))}
            rec.complete_amounts(raised, {"invoiceAmount"})
            state.update_invoice(
                unsent["id"],
                invoiceNumber=state.next_invoice_number(customer_id),
                status=["Raised"],
                billingRun=run["id"],
                invoiceDate=run["invoiceDate"],
                cutoffDate=run["cutoffDate"],
                dueDate=run["dueDate"],
                invoiceCallCount=self.rng.choice((0, 8, 23)),
                **raised,
            )
            total += net
            self._new_unsent(customer_id)
        state.update_billing_run(
            run["id"],
            status="Complete",
            completedDate=self._now_text(),
            invoiceAmount=rec.fmt_money(total),
        )
        for task in state.billing_tasks.values():
            if task["billingTaskType"] == "Billing Run" and task["status"] == "Running":
                state.update_billing_task(
                    task["id"], status="Completed", endedTime=self._now_text()
                )

    def _tick_invoices(self) -> None:
        state, rng = self.state, self.rng
        changes = 0
        for invoice in sorted(state.invoices.values(), key=lambda i: int(i["id"])):
            if changes >= 3:
                break
            flags = list(invoice["status"])
            if rec.is_unsent(invoice):
                if rng.random() < 0.1:
                    net = rec.money(invoice["invoiceAmount"]) + rec.money(rng.choice((5, 7.5)))
                    extra = {"invoiceAmount": self._amount(invoice["customerID"], float(net))}
                    rec.complete_amounts(extra, {"invoiceAmount"})
                    state.update_invoice(invoice["id"], **extra)
                    changes += 1
                continue
            if "Paid" in flags:
                continue
            changes += self._advance_invoice(invoice, flags)

    def _advance_invoice(self, invoice: dict[str, Any], flags: list[str]) -> int:
        state, rng, invoice_id = self.state, self.rng, invoice["id"]
        if "Approved" not in flags:
            state.update_invoice(invoice_id, status=[*flags, "Approved"])
            self._approved_tick[invoice_id] = self.ticks
            return 1
        waited = self.ticks - self._approved_tick.get(invoice_id, 0)
        if not rec.is_delivered(invoice):
            if waited < 3:
                return 0
            state.update_invoice(invoice_id, status=[*flags, "Emailed"])
            return 1
        if waited < 5:
            return 0
        if invoice_id not in self._overdue and rng.random() < 0.35:
            self._overdue.add(invoice_id)
            state.update_invoice(
                invoice_id, dueDate=rec.fmt_date(self._today() - timedelta(days=1))
            )
            return 1
        if rng.random() < 0.5:
            state.update_invoice(
                invoice_id,
                status=[*flags, "Paid"],
                paidDate=rec.fmt_date(self._today()),
                paidAmount=invoice["total"],
                outstanding=self._amount(invoice["customerID"], 0),
            )
            return 1
        return 0

    def _tick_headers(self) -> None:
        state, rng = self.state, self.rng
        if rng.random() >= 0.25:
            return
        prop = rng.choice(self.properties)
        mine = [h for h in state.billing_headers.values() if h["propertyUUId"] == prop]
        if mine and rng.random() < 0.4:
            header = rng.choice(mine)
            state.update_billing_header(header["id"])
            return
        last_end = max((h["endDate"][:10] for h in mine), default=f"{self._today().year - 1}-09-30")
        start = date.fromisoformat(last_end) + timedelta(days=1)
        end = start.replace(year=start.year + 1) - timedelta(days=1)
        state.add_billing_header(prop, startDate=f"{start}T00:00:00", endDate=f"{end}T00:00:00")
