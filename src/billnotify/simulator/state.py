"""In-memory data of both simulated platforms; pure data, no I/O.

Records are stored exactly as the API returns them. The platform's *system*
timestamps (creation and last update, used by ``createdSince``/``updatedSince``)
are not fields of the records and are kept separately.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from billnotify.simulator import records as rec
from billnotify.simulator.clock import SimClock

RESOURCES = ("billing_tasks", "billing_runs", "invoices")

_FIELDS: dict[str, tuple[str, ...]] = {
    "billing_tasks": rec.BILLING_TASK_FIELDS,
    "billing_runs": rec.BILLING_RUN_FIELDS,
    "invoices": rec.INVOICE_FIELDS,
}


@dataclass
class SystemTimes:
    """The platform's own creation and last-update time of a record."""

    created_at: datetime
    updated_at: datetime


def format_update_timestamp(when: datetime) -> str:
    """Format a property-billing ``updateTimeStamp`` (no zone, trimmed fraction)."""
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    millis = when.microsecond // 1000
    return text + (f".{millis:03d}".rstrip("0") if millis else "")


class SimState:
    """All records of the simulated billing platform and property billing service.

    Args:
        clock: The clock used for system timestamps and default dates.
    """

    def __init__(self, clock: SimClock | None = None) -> None:
        self.clock = clock or SimClock()
        self.billing_tasks: dict[str, dict[str, Any]] = {}
        self.billing_runs: dict[str, dict[str, Any]] = {}
        self.invoices: dict[str, dict[str, Any]] = {}
        self.customers: dict[str, dict[str, Any]] = {}
        self.billing_headers: dict[int, dict[str, Any]] = {}
        #: Extra data behind ``Billing/<id>``: documents and units per header id.
        self.billing_details: dict[int, dict[str, Any]] = {}
        #: Billing documents by id (``BE`` + 8 digits): billing id, type and unit.
        self.documents: dict[str, dict[str, Any]] = {}
        self.action_log: list[dict[str, Any]] = []
        self.download_links: dict[str, dict[str, Any]] = {}
        self.xero_links: dict[str, str] = {}
        self.xero_module_active = True
        self.expert_level = 5
        #: Forced action failures: {"action", "error_code", "invoice_id", "count"}.
        self.forced_action_errors: list[dict[str, Any]] = []
        self._times: dict[str, dict[str, SystemTimes]] = {name: {} for name in RESOURCES}
        self._next_id = {
            "billing_tasks": 1001,
            "billing_runs": 101,
            "invoices": 5001,
            "customers": 1,
            "billing_headers": 385619,
            "documents": 10000001,
        }
        self._invoice_counters: dict[str, int] = {}
        #: Deleted records that :meth:`restore_record` can bring back, by resource and id
        #: (``billing_headers`` included), with their system times.
        self.deleted: dict[str, dict[str, tuple[dict[str, Any], SystemTimes | None]]] = {
            name: {} for name in (*RESOURCES, "billing_headers")
        }

    # -- generic -----------------------------------------------------------------

    def table(self, resource: str) -> dict[str, dict[str, Any]]:
        """Return the record table of ``billing_tasks``, ``billing_runs`` or ``invoices``."""
        tables = {
            "billing_tasks": self.billing_tasks,
            "billing_runs": self.billing_runs,
            "invoices": self.invoices,
        }
        return tables[resource]

    def times(self, resource: str, record_id: str) -> SystemTimes:
        """Return the system timestamps of one record."""
        return self._times[resource][str(record_id)]

    def _take_id(self, kind: str, wanted: Any = None) -> int:
        value = self._next_id[kind] if wanted is None or wanted == "" else int(wanted)
        self._next_id[kind] = max(self._next_id[kind], value + 1)
        return value

    def _check_fields(self, resource: str, fields: dict[str, Any]) -> None:
        unknown = sorted(set(fields) - set(_FIELDS[resource]))
        if unknown:
            raise ValueError(f"unknown {resource} field(s): {', '.join(unknown)}")

    def _add(self, resource: str, record: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
        self._check_fields(resource, fields)
        table = self.table(resource)
        record_id = str(self._take_id(resource, fields.pop("id", None)))
        if record_id in table:
            raise ValueError(f"{resource} id {record_id} already exists")
        record.update(fields)
        record["id"] = record_id
        now = self.clock.now()
        table[record_id] = record
        self._times[resource][record_id] = SystemTimes(now, now)
        return copy.deepcopy(record)

    def _update(self, resource: str, record_id: Any, fields: dict[str, Any]) -> dict[str, Any]:
        self._check_fields(resource, fields)
        record_id = str(record_id)
        record = self.table(resource)[record_id]
        if "id" in fields and str(fields.pop("id")) != record_id:
            raise ValueError("the id of a record cannot be changed")
        record.update(fields)
        self._times[resource][record_id].updated_at = self.clock.now()
        return copy.deepcopy(record)

    def touch(self, resource: str, record_id: Any) -> None:
        """Bump the system update time of a record without changing a field."""
        self._times[resource][str(record_id)].updated_at = self.clock.now()

    # -- billing tasks and runs --------------------------------------------------

    def add_billing_task(self, **fields: Any) -> dict[str, Any]:
        """Add a billing task; unspecified fields get pending defaults. Returns a copy."""
        return self._add("billing_tasks", rec.default_billing_task(self.clock.now()), fields)

    def update_billing_task(self, task_id: Any, **fields: Any) -> dict[str, Any]:
        """Change fields of a billing task and bump its system update time."""
        return self._update("billing_tasks", task_id, fields)

    def add_billing_run(self, **fields: Any) -> dict[str, Any]:
        """Add a billing run; unspecified fields get pending defaults. Returns a copy."""
        return self._add("billing_runs", rec.default_billing_run(self.clock.now()), fields)

    def update_billing_run(self, run_id: Any, **fields: Any) -> dict[str, Any]:
        """Change fields of a billing run and bump its system update time."""
        return self._update("billing_runs", run_id, fields)

    # -- customers and invoices --------------------------------------------------

    def add_customer(self, **fields: Any) -> dict[str, Any]:
        """Add a customer (``id``, ``accountNumber``, ``name``, ``email``, ``cdrEmail``)."""
        customer_id = str(self._take_id("customers", fields.pop("id", None)))
        customer = {
            "id": customer_id,
            "accountNumber": f"ACC{1000 + int(customer_id)}",
            "name": f"Customer {customer_id}",
            "email": f"accounts{customer_id}@example.com",
            "cdrEmail": f"cdrs{customer_id}@example.com",
        }
        customer.update(fields)
        self.customers[customer_id] = customer
        return dict(customer)

    def ensure_customer(self, customer_id: Any) -> dict[str, Any]:
        """Return the customer ``customer_id``, creating it with defaults when unknown."""
        key = str(customer_id)
        if key not in self.customers:
            self.add_customer(id=key)
        return self.customers[key]

    def next_invoice_number(self, customer_id: Any) -> str:
        """Allocate the next ``ACCOUNTNO/N`` invoice number of a customer."""
        customer = self.ensure_customer(customer_id)
        count = self._invoice_counters.get(customer["id"], 0) + 1
        self._invoice_counters[customer["id"]] = count
        return f"{customer['accountNumber']}/{count}"

    def add_invoice(self, **fields: Any) -> dict[str, Any]:
        """Add an invoice; defaults make it a raised invoice of customer ``1``.

        A status containing ``Unsent`` gives no invoice number; otherwise the next
        ``ACCOUNTNO/N`` is assigned unless ``invoiceNumber`` is given. VAT, total and
        outstanding are derived from ``invoiceAmount`` unless given.
        """
        self._check_fields("invoices", fields)
        record = rec.default_invoice(self.clock.now())
        customer = self.ensure_customer(fields.get("customerID") or "1")
        fields["customerID"] = customer["id"]
        status = list(fields.get("status") or record["status"])
        fields["status"] = status
        if "invoiceNumber" not in fields:
            unsent = "Unsent" in status
            fields["invoiceNumber"] = "" if unsent else self.next_invoice_number(customer["id"])
        given = set(fields)
        record.update(fields)
        rec.complete_amounts(record, given)
        return self._add("invoices", record, {"id": fields.get("id")} if "id" in fields else {})

    def update_invoice(self, invoice_id: Any, **fields: Any) -> dict[str, Any]:
        """Change fields of an invoice and bump its system update time."""
        if "status" in fields:
            fields["status"] = list(fields["status"])
        return self._update("invoices", invoice_id, fields)

    def delete_invoice(self, invoice_id: Any) -> dict[str, Any]:
        """Remove an invoice and return it."""
        return self.delete_record("invoices", invoice_id)

    def delete_record(self, resource: str, record_id: Any) -> dict[str, Any]:
        """Remove a record of any resource (``billing_headers`` too) and return it; it is
        kept aside for :meth:`restore_record`. Raises ``KeyError`` when unknown."""
        if resource == "billing_headers":
            header = self.billing_headers.pop(int(record_id))
            self.deleted[resource][str(record_id)] = (header, None)
            return dict(header)
        key = str(record_id)
        record = self.table(resource).pop(key)
        self.deleted[resource][key] = (record, self._times[resource].pop(key, None))
        return copy.deepcopy(record)

    def restore_record(
        self, resource: str, record_id: Any, *, touch: bool = False
    ) -> dict[str, Any]:
        """Bring a deleted record back as it was, with its old system times (an
        incremental poll does not see it) unless ``touch`` bumps its update time."""
        record, times = self.deleted[resource].pop(str(record_id))
        if resource == "billing_headers":
            self.billing_headers[int(record_id)] = record
            return dict(record)
        key = str(record_id)
        self.table(resource)[key] = record
        now = self.clock.now()
        self._times[resource][key] = times or SystemTimes(now, now)
        if touch:
            self.touch(resource, key)
        return copy.deepcopy(record)

    def unsent_invoice(self, customer_id: Any) -> dict[str, Any] | None:
        """Return the customer's unsent invoice, if any."""
        for invoice in self.invoices.values():
            if invoice["customerID"] == str(customer_id) and rec.is_unsent(invoice):
                return invoice
        return None

    # -- invoice actions ---------------------------------------------------------

    def log_action(
        self, invoice_id: Any, action: str, params: dict[str, Any], status_code: int
    ) -> None:
        """Record one invoice action call in :attr:`action_log`."""
        self.action_log.append(
            {
                "invoice_id": str(invoice_id),
                "action": action,
                "params": copy.deepcopy(params),
                "time": self.clock.now().isoformat(),
                "status_code": status_code,
            }
        )

    def email_calls(self, invoice_id: Any) -> int:
        """Count the successful ``email`` actions on an invoice (emails really sent)."""
        return sum(
            1
            for entry in self.action_log
            if entry["invoice_id"] == str(invoice_id)
            and entry["action"] == "email"
            and 200 <= entry["status_code"] < 300
        )

    def fail_next_action(
        self, action: str, error_code: int, *, invoice_id: Any = None, count: int = 1
    ) -> None:
        """Make the next ``count`` calls of ``action`` fail with a documented error code."""
        self.forced_action_errors.append(
            {
                "action": action,
                "error_code": int(error_code),
                "invoice_id": None if invoice_id is None else str(invoice_id),
                "count": count,
            }
        )

    # -- property billing --------------------------------------------------------

    def _new_document(self, billing_id: int, kind: str, unit_id: str | None) -> str:
        doc_id = f"BE{self._take_id('documents'):08d}"
        self.documents[doc_id] = {"billingId": billing_id, "documentType": kind, "unitId": unit_id}
        return doc_id

    def add_billing_header(self, property_uuid: str, **fields: Any) -> dict[str, Any]:
        """Publish a billing header (and its billing with one global and two unit documents).

        Args:
            property_uuid: The property the billing belongs to.
            **fields: ``id``, ``startDate``, ``endDate``, ``updateTimeStamp`` overrides.
        """
        now = self.clock.now()
        header_id = self._take_id("billing_headers", fields.pop("id", None))
        if header_id in self.billing_headers:
            raise ValueError(f"billing header {header_id} already exists")
        header = {
            "id": header_id,
            "propertyUUId": property_uuid,
            "startDate": f"{now.year - 1}-10-01T00:00:00",
            "endDate": f"{now.year}-09-30T00:00:00",
            "updateTimeStamp": format_update_timestamp(now),
        }
        unknown = set(fields) - set(header)
        if unknown:
            raise ValueError(f"unknown billing header field(s): {', '.join(sorted(unknown))}")
        header.update(fields)
        self.billing_headers[header_id] = header
        global_id = self._new_document(header_id, "Global", None)
        units = []
        for number in (1, 2):
            unit_id = f"U{header_id}-{number:02d}"
            units.append(
                {
                    "unitId": unit_id,
                    "name": f"Apartment {number}",
                    "documentId": self._new_document(header_id, "Individual", unit_id),
                }
            )
        self.billing_details[header_id] = {
            "globalDocumentId": global_id,
            "units": units,
        }
        return dict(header)

    def update_billing_header(self, header_id: Any, **fields: Any) -> dict[str, Any]:
        """Change a billing header; ``updateTimeStamp`` becomes now unless given."""
        header = self.billing_headers[int(header_id)]
        unknown = set(fields) - set(header)
        if unknown:
            raise ValueError(f"unknown billing header field(s): {', '.join(sorted(unknown))}")
        fields.pop("id", None)
        fields.setdefault("updateTimeStamp", format_update_timestamp(self.clock.now()))
        header.update(fields)
        return dict(header)

    def billing(self, billing_id: int, *, include_device_consumptions: bool) -> dict[str, Any]:
        """Build the ``Billing/<id>`` object of a header (raises ``KeyError`` when unknown)."""
        header = self.billing_headers[billing_id]
        details = self.billing_details[billing_id]
        documents = [
            {
                "documentId": details["globalDocumentId"],
                "documentType": "Global",
                "fileName": f"{details['globalDocumentId']}.pdf",
            }
        ]
        units = []
        for unit in details["units"]:
            documents.append(
                {
                    "documentId": unit["documentId"],
                    "documentType": "Individual",
                    "unitId": unit["unitId"],
                    "fileName": f"{unit['documentId']}.pdf",
                }
            )
            entry = dict(unit)
            if include_device_consumptions:
                entry["deviceConsumptions"] = [
                    {
                        "deviceId": f"{unit['unitId']}-HC{n}",
                        "type": "HeatCostAllocator",
                        "consumption": 100 * n + billing_id % 97,
                        "unit": "units",
                    }
                    for n in (1, 2)
                ]
            units.append(entry)
        return {
            **header,
            "globalDocumentId": details["globalDocumentId"],
            "documents": documents,
            "units": units,
        }
