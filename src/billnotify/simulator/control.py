"""The simulator's control API under ``/_sim/`` (no auth), for out-of-process tests.

- ``GET /_sim/state``: counts per resource and status;
- ``POST /_sim/tick`` (``{"count": n}``): advance the scenario; ``POST /_sim/populate``;
- ``GET|POST|DELETE /_sim/faults``: list, arm (``{path_prefix, kind, count, retry_after,
  delay, method, after}``) and clear faults;
- ``GET|DELETE /_sim/actions``: the invoice action log;
- ``POST /_sim/action_failures`` (``{action, error_code, invoice_id, count}``);
- ``POST /_sim/{billing_tasks|billing_runs|invoices|customers|billing_headers}``: create
  (JSON body of fields; ``propertyUUId`` for headers); ``PUT|PATCH|POST .../{id}``: update;
  ``DELETE /_sim/{kind}/{id}`` (any kind, headers too) and ``POST
  /_sim/{kind}/{id}/restore`` (``{"touch": true}`` bumps its update time): deleted and
  restored records;
- ``GET /_sim/email_calls/{invoice_id}``: how many ``email`` actions succeeded;
- ``POST /_sim/config`` (any of ``page_max``, ``token_ttl``, ``expert_level``,
  ``xero_module_active``, ``api_key``);
- ``POST /_sim/clock`` (``{"advance": seconds}`` or ``{"set": iso}``) with a manual clock.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from billnotify.simulator import records as rec
from billnotify.simulator.billing import read_json_object
from billnotify.simulator.clock import ManualClock
from billnotify.simulator.errors import ApiError, Handler
from billnotify.simulator.faults import FAULT_KINDS
from billnotify.simulator.pdf import make_pdf
from billnotify.simulator.state import SimState

if TYPE_CHECKING:
    from billnotify.simulator.server import Simulator

logger = logging.getLogger(__name__)


def download_handler(state: SimState) -> Handler:
    """Serve ``/download/invoice/{token}`` links made by ``generateDownloadLink``."""

    async def download(request: web.Request) -> web.StreamResponse:
        link = state.download_links.get(request.match_info["token"])
        if link is None:
            raise ApiError(404, "Not Found", hint="Unknown download link")
        if state.clock.now() >= link["expires_at"] or link["uses"] >= link["max_uses"]:
            raise ApiError(410, "Gone", hint="The download link has expired or was used up")
        invoice = state.invoices.get(link["invoice_id"])
        if invoice is None:
            raise ApiError(404, "Not Found", hint="The invoice no longer exists")
        link["uses"] += 1
        flags = list(invoice.get("status") or [])
        if "Downloaded" not in flags:
            state.update_invoice(invoice["id"], status=[*flags, "Downloaded"])
        pdf = make_pdf(f"Invoice {invoice['invoiceNumber']}", f"Total {invoice['total']}")
        return web.Response(body=pdf, content_type="application/pdf")

    return download


class ControlApi:
    """Registers the ``/_sim/`` routes of one simulator."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    def register(self, app: web.Application) -> None:
        """Add the control routes to ``app``."""
        r = app.router
        r.add_get("/_sim/state", self.summary)
        r.add_post("/_sim/tick", self.tick)
        r.add_post("/_sim/populate", self.populate)
        r.add_get("/_sim/faults", self.list_faults)
        r.add_post("/_sim/faults", self.add_fault)
        r.add_delete("/_sim/faults", self.clear_faults)
        r.add_get("/_sim/actions", self.actions)
        r.add_delete("/_sim/actions", self.clear_actions)
        r.add_post("/_sim/action_failures", self.action_failure)
        r.add_post("/_sim/clock", self.clock)
        r.add_post("/_sim/config", self.config)
        r.add_get("/_sim/email_calls/{id}", self.email_calls)
        r.add_post("/_sim/{kind}", self.create)
        for method in ("PUT", "PATCH", "POST"):
            r.add_route(method, "/_sim/{kind}/{id}", self.update)
        r.add_delete("/_sim/invoices/{id}", self.delete_invoice)
        r.add_delete("/_sim/{kind}/{id}", self.delete_record)
        r.add_post("/_sim/{kind}/{id}/restore", self.restore_record)

    async def summary(self, request: web.Request) -> web.StreamResponse:
        """Counts of records per resource and status, and the scenario's progress."""
        state = self.sim.state
        invoice_flags: Counter[str] = Counter()
        for invoice in state.invoices.values():
            invoice_flags.update(invoice.get("status") or [])
        return web.json_response(
            {
                "now": state.clock.now().isoformat(),
                "ticks": self.sim.scenario.ticks,
                "billing_tasks": dict(Counter(t["status"] for t in state.billing_tasks.values())),
                "billing_runs": dict(Counter(r["status"] for r in state.billing_runs.values())),
                "invoices": {
                    "total": len(state.invoices),
                    "unsent": sum(1 for i in state.invoices.values() if rec.is_unsent(i)),
                    "flags": dict(invoice_flags),
                },
                "customers": len(state.customers),
                "billing_headers": len(state.billing_headers),
                "properties": sorted({h["propertyUUId"] for h in state.billing_headers.values()}),
                "actions": len(state.action_log),
                "xero_links": state.xero_links,
                "faults": self.sim.faults.snapshot(),
            }
        )

    async def tick(self, request: web.Request) -> web.StreamResponse:
        """Advance the scenario ``count`` steps (default 1)."""
        body = await read_json_object(request)
        count = int(body.get("count", 1))
        for _ in range(count):
            self.sim.scenario.tick()
        return web.json_response({"ticks": self.sim.scenario.ticks})

    async def populate(self, request: web.Request) -> web.StreamResponse:
        """Create the scenario's starting data."""
        self.sim.scenario.populate()
        return web.json_response({"customers": len(self.sim.state.customers)})

    async def list_faults(self, request: web.Request) -> web.StreamResponse:
        """List the armed faults."""
        return web.json_response(self.sim.faults.snapshot())

    async def add_fault(self, request: web.Request) -> web.StreamResponse:
        """Arm a fault."""
        body = await read_json_object(request, required=True)
        kind = str(body.get("kind", ""))
        if kind not in FAULT_KINDS:
            raise ApiError(400, "Bad Request", hint=f"kind must be one of {FAULT_KINDS}")
        retry_after = body.get("retry_after")
        self.sim.faults.add(
            path_prefix=str(body.get("path_prefix", "")),
            kind=kind,  # type: ignore[arg-type]
            count=int(body.get("count", 1)),
            retry_after=None if retry_after is None else float(retry_after),
            delay=float(body.get("delay", 0)),
            method=body.get("method"),
            after=int(body.get("after", 0)),
        )
        return web.json_response(self.sim.faults.snapshot(), status=201)

    async def clear_faults(self, request: web.Request) -> web.StreamResponse:
        """Disarm every fault."""
        self.sim.faults.clear()
        return web.json_response([])

    async def actions(self, request: web.Request) -> web.StreamResponse:
        """The invoice action log."""
        return web.json_response(self.sim.state.action_log)

    async def clear_actions(self, request: web.Request) -> web.StreamResponse:
        """Empty the invoice action log."""
        self.sim.state.action_log.clear()
        return web.json_response([])

    async def action_failure(self, request: web.Request) -> web.StreamResponse:
        """Force the next calls of an action to fail with a documented error code."""
        body = await read_json_object(request, required=True)
        try:
            self.sim.state.fail_next_action(
                str(body["action"]),
                int(body["error_code"]),
                invoice_id=body.get("invoice_id"),
                count=int(body.get("count", 1)),
            )
        except (KeyError, ValueError) as exc:
            raise ApiError(400, "Bad Request", hint=f"need action and error_code: {exc}") from exc
        return web.json_response(self.sim.state.forced_action_errors, status=201)

    async def clock(self, request: web.Request) -> web.StreamResponse:
        """Advance or set a manual clock."""
        clock = self.sim.state.clock
        if not isinstance(clock, ManualClock):
            raise ApiError(409, "Conflict", hint="The simulator runs on the real clock")
        body = await read_json_object(request, required=True)
        if "advance" in body:
            clock.advance(float(body["advance"]))
        if "set" in body:
            clock.set(datetime.fromisoformat(str(body["set"]).replace("Z", "+00:00")))
        return web.json_response({"now": clock.now().isoformat()})

    async def email_calls(self, request: web.Request) -> web.StreamResponse:
        """How many times an invoice was really emailed."""
        invoice_id = request.match_info["id"]
        calls = self.sim.state.email_calls(invoice_id)
        return web.json_response({"invoice_id": invoice_id, "email_calls": calls})

    async def config(self, request: web.Request) -> web.StreamResponse:
        """Change settings of the running simulator."""
        body = await read_json_object(request, required=True)
        sim = self.sim
        try:
            if "page_max" in body:
                sim.billing_api.page_max = int(body["page_max"])
            if "api_key" in body:
                sim.billing_api.api_key = sim.api_key = str(body["api_key"])
            if "token_ttl" in body:
                sim.property_api.token_ttl = float(body["token_ttl"])
            if "expert_level" in body:
                sim.state.expert_level = int(body["expert_level"])
            if "xero_module_active" in body:
                sim.state.xero_module_active = bool(body["xero_module_active"])
        except (TypeError, ValueError) as exc:
            raise ApiError(400, "Bad Request", hint=str(exc)) from exc
        return web.json_response(
            {
                "page_max": sim.billing_api.page_max,
                "token_ttl": sim.property_api.token_ttl,
                "expert_level": sim.state.expert_level,
                "xero_module_active": sim.state.xero_module_active,
            }
        )

    def _apply(self, kind: str, record_id: str | None, body: dict[str, Any]) -> Any:
        state = self.sim.state
        if kind == "billing_headers":
            if record_id is None:
                return state.add_billing_header(str(body.pop("propertyUUId", "")), **body)
            return state.update_billing_header(record_id, **body)
        if kind == "customers":
            if record_id is None:
                return state.add_customer(**body)
            state.customers[record_id].update(body)
            return state.customers[record_id]
        singular = {
            "billing_tasks": "billing_task",
            "billing_runs": "billing_run",
            "invoices": "invoice",
        }.get(kind)
        if singular is None:
            raise ApiError(404, "Not Found", hint=f"Unknown resource {kind!r}")
        if record_id is None:
            return getattr(state, f"add_{singular}")(**body)
        return getattr(state, f"update_{singular}")(record_id, **body)

    async def create(self, request: web.Request) -> web.StreamResponse:
        """Create a record from a JSON object of fields."""
        body = await read_json_object(request)
        try:
            record = self._apply(request.match_info["kind"], None, body)
        except (ValueError, TypeError) as exc:
            raise ApiError(400, "Bad Request", hint=str(exc)) from exc
        return web.json_response(record, status=201)

    async def update(self, request: web.Request) -> web.StreamResponse:
        """Update a record with a JSON object of fields."""
        body = await read_json_object(request)
        try:
            record = self._apply(request.match_info["kind"], request.match_info["id"], body)
        except KeyError as exc:
            raise ApiError(404, "Not Found", hint=f"No record {exc}") from exc
        except (ValueError, TypeError) as exc:
            raise ApiError(400, "Bad Request", hint=str(exc)) from exc
        return web.json_response(record)

    async def delete_record(self, request: web.Request) -> web.StreamResponse:
        """Delete a record of any kind (kept aside for ``.../restore``)."""
        kind, record_id = request.match_info["kind"], request.match_info["id"]
        if kind not in self.sim.state.deleted:
            raise ApiError(404, "Not Found", hint=f"Unknown resource {kind!r}")
        try:
            record = self.sim.state.delete_record(kind, record_id)
        except (KeyError, ValueError) as exc:
            raise ApiError(404, "Not Found", hint=f"No record {record_id}") from exc
        return web.json_response(record)

    async def restore_record(self, request: web.Request) -> web.StreamResponse:
        """Bring a deleted record back (``{"touch": true}`` bumps its update time)."""
        kind, record_id = request.match_info["kind"], request.match_info["id"]
        body = await read_json_object(request)
        if kind not in self.sim.state.deleted:
            raise ApiError(404, "Not Found", hint=f"Unknown resource {kind!r}")
        try:
            record = self.sim.state.restore_record(kind, record_id, touch=bool(body.get("touch")))
        except KeyError as exc:
            raise ApiError(404, "Not Found", hint=f"No deleted record {record_id}") from exc
        return web.json_response(record)

    async def delete_invoice(self, request: web.Request) -> web.StreamResponse:
        """Delete an invoice."""
        try:
            invoice = self.sim.state.delete_invoice(request.match_info["id"])
        except KeyError as exc:
            raise ApiError(404, "Not Found", hint="No such invoice") from exc
        return web.json_response(invoice)
