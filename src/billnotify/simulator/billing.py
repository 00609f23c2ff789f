"""Routes of the simulated billing platform (``/backend/api/v1``), seeds 000-002."""

from __future__ import annotations

import hmac
import json
import logging
from datetime import date
from typing import Any

from aiohttp import web

from billnotify.simulator import records as rec
from billnotify.simulator.actions import perform_action
from billnotify.simulator.errors import ApiError, Handler, api_error, error_middleware
from billnotify.simulator.listing import ParamError, parse_date, select
from billnotify.simulator.pdf import make_pdf
from billnotify.simulator.state import SimState

logger = logging.getLogger(__name__)

_RUN_READONLY = ("commencedDate", "completedDate", "invoiceAmount")
_INVOICE_READONLY = ("customerID", "invoiceNumber", "billingRun")
_INVOICE_DATES = ("invoiceDate", "cutoffDate", "transactionCutoffDate", "dueDate", "paidDate")


def _one(query: Any) -> dict[str, str]:
    return {key: query.get(key) for key in query}


async def read_json_object(request: web.Request, *, required: bool = False) -> dict[str, Any]:
    """Read the request body as a JSON object (an empty body is ``{}`` unless required)."""
    raw = await request.read()
    if not raw.strip():
        if required:
            raise ApiError(400, "Missing request body", hint="Send a JSON object")
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "Invalid JSON", hint=str(exc)) from exc
    if not isinstance(body, dict):
        raise ApiError(400, "Invalid JSON", hint="The body must be a JSON object")
    return body


def _check_date_fields(body: dict[str, Any], names: tuple[str, ...]) -> None:
    for name in names:
        value = body.get(name)
        if value is None or value == "":
            continue
        try:
            parse_date(name, str(value))
        except ParamError as exc:
            raise ApiError(400, "Invalid field value", hint=str(exc)) from exc


def _check_known(body: dict[str, Any], known: tuple[str, ...], extra: tuple[str, ...] = ()) -> None:
    unknown = sorted(set(body) - set(known) - set(extra))
    if unknown:
        raise ApiError(400, "Unknown field", hint=f"Unknown field(s): {', '.join(unknown)}")


def _check_unchanged(record: dict[str, Any], body: dict[str, Any], names: tuple[str, ...]) -> None:
    for name in names:
        if name in body and body[name] != record.get(name):
            raise ApiError(400, "Read-only field", hint=f"{name} cannot be changed")


class BillingApi:
    """The billing platform API as an aiohttp sub-application.

    Args:
        state: Shared simulator state.
        api_key: The only accepted bearer key.
        page_max: The most records a list returns, whatever ``limit`` asks.
    """

    def __init__(self, state: SimState, *, api_key: str, page_max: int) -> None:
        self.state = state
        self.api_key = api_key
        self.page_max = page_max

    def app(self) -> web.Application:
        """Build the sub-application (mount it at ``/backend/api/v1``)."""
        app = web.Application(middlewares=[error_middleware(), self._auth_middleware()])
        for name, resource in (("billingTasks", "billing_tasks"), ("billingRuns", "billing_runs")):
            self._route(app, "GET", f"/{name}", self._lister(resource))
            self._route(app, "GET", f"/{name}/{{id}}", self._getter(resource))
        self._route(app, "POST", "/billingRuns", self.create_run)
        for method in ("PUT", "POST", "PATCH"):
            self._route(app, method, "/billingRuns/{id}", self.update_run)
        self._route(app, "GET", "/invoices", self._lister("invoices"))
        self._route(app, "GET", "/invoices/{id}", self.get_invoice)
        self._route(app, "POST", "/invoices/{id}", self.invoice_action)
        for method in ("PUT", "PATCH"):
            self._route(app, method, "/invoices/{id}", self.update_invoice)
        self._route(app, "DELETE", "/invoices/{id}", self.delete_invoice)
        self._route(app, "GET", "/customers/{cid}/invoices", self.customer_invoices)
        self._route(app, "POST", "/customers/{cid}/invoices", self.create_invoice)
        return app

    @staticmethod
    def _route(app: web.Application, method: str, path: str, handler: Handler) -> None:
        app.router.add_route(method, path, handler)
        app.router.add_route(method, path + "/", handler)

    def _auth_middleware(self) -> Any:
        @web.middleware
        async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            expected = self.api_key.encode()
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.strip().encode(), expected
            ):
                return api_error(
                    401,
                    "Unauthorized",
                    hint="Send Authorization: Bearer <API key>",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            return await handler(request)

        return auth

    def _record(self, resource: str, request: web.Request) -> dict[str, Any]:
        record_id = request.match_info["id"]
        record = self.state.table(resource).get(record_id)
        if record is None:
            raise ApiError(404, "Not Found", hint=f"No {resource} record with id {record_id!r}")
        return record

    def _lister(self, resource: str) -> Handler:
        async def list_records(request: web.Request) -> web.StreamResponse:
            try:
                rows = select(self.state, resource, _one(request.query), page_max=self.page_max)
            except ParamError as exc:
                raise ApiError(400, "Invalid parameter", hint=str(exc)) from exc
            return web.json_response(rows)

        return list_records

    def _getter(self, resource: str) -> Handler:
        async def get_record(request: web.Request) -> web.StreamResponse:
            return web.json_response(self._record(resource, request))

        return get_record

    # -- billing runs --------------------------------------------------------------

    def _validate_run(self, body: dict[str, Any]) -> None:
        _check_known(body, rec.BILLING_RUN_FIELDS)
        _check_date_fields(body, rec.BILLING_RUN_DATE_FIELDS)
        status = body.get("status")
        if status is not None and (not isinstance(status, str) or not status):
            raise ApiError(400, "Invalid field value", hint="status must be a status name")

    async def create_run(self, request: web.Request) -> web.StreamResponse:
        """``POST billingRuns/``: create a run and return it."""
        body = await read_json_object(request, required=True)
        self._validate_run(body)
        for name in ("id", *_RUN_READONLY):
            if body.get(name) not in (None, ""):
                raise ApiError(400, "Read-only field", hint=f"{name} cannot be set")
            body.pop(name, None)
        run = self.state.add_billing_run(**body)
        logger.info("billing run %s created", run["id"])
        return web.json_response(run)

    async def update_run(self, request: web.Request) -> web.StreamResponse:
        """``PUT/POST/PATCH billingRuns/ID``: update; dates lock once no longer pending."""
        run = self._record("billing_runs", request)
        body = await read_json_object(request)
        self._validate_run(body)
        if "id" in body and str(body["id"]) != run["id"]:
            raise ApiError(400, "Read-only field", hint="id cannot be changed")
        _check_unchanged(run, body, _RUN_READONLY)
        if str(run.get("status", "")).lower() != "pending":
            changed = [
                n for n in rec.BILLING_RUN_DATE_FIELDS if n in body and body[n] != run.get(n)
            ]
            if changed:
                raise ApiError(
                    400,
                    "Billing run dates are locked",
                    hint=f"{', '.join(changed)} can only change while the run is pending "
                    f"(status is {run.get('status')!r})",
                )
        return web.json_response(self.state.update_billing_run(run["id"], **body))

    # -- invoices ------------------------------------------------------------------

    async def get_invoice(self, request: web.Request) -> web.StreamResponse:
        """``GET invoices/ID``: JSON, or the PDF bill with ``Accept: application/pdf``."""
        invoice = self._record("invoices", request)
        if "application/pdf" not in request.headers.get("Accept", ""):
            return web.json_response(invoice)
        if rec.is_unsent(invoice):
            raise ApiError(404, "No PDF", hint="Unsent invoices have no PDF bill")
        customer = self.state.ensure_customer(invoice["customerID"])
        pdf = make_pdf(
            f"Invoice {invoice['invoiceNumber']}",
            f"Customer {customer['name']} ({customer['accountNumber']})",
            f"Invoice date {invoice['invoiceDate']}, due {invoice['dueDate']}",
            f"Total {invoice['total']}, outstanding {invoice['outstanding']}",
        )
        filename = str(invoice["invoiceNumber"]).replace("/", "-") + ".pdf"
        return web.Response(
            body=pdf,
            content_type="application/pdf",
            headers={"Content-Disposition": f'inline; filename="{filename}"'},
        )

    def _validate_invoice(self, body: dict[str, Any]) -> None:
        _check_known(body, rec.INVOICE_FIELDS)
        _check_date_fields(body, _INVOICE_DATES)
        status = body.get("status")
        if isinstance(status, str):
            body["status"] = [s.strip() for s in status.split(",") if s.strip()]
        elif status is not None and not (
            isinstance(status, list) and all(isinstance(s, str) for s in status)
        ):
            raise ApiError(400, "Invalid field value", hint="status must be an array of flags")
        for name in (
            *rec.INVOICE_CHARGE_FIELDS,
            "invoiceAmount",
            "invoiceVAT",
            "total",
            "paidAmount",
            "outstanding",
            "invoiceReverseVAT",
        ):
            if name in body:
                try:
                    rec.money(body[name])
                except ArithmeticError as exc:
                    raise ApiError(
                        400, "Invalid field value", hint=f"{name} must be an amount"
                    ) from exc

    async def update_invoice(self, request: web.Request) -> web.StreamResponse:
        """``PUT/PATCH invoices/ID``: update and return the invoice."""
        invoice = self._record("invoices", request)
        body = await read_json_object(request)
        self._validate_invoice(body)
        if "id" in body and str(body["id"]) != invoice["id"]:
            raise ApiError(400, "Read-only field", hint="id cannot be changed")
        _check_unchanged(invoice, body, _INVOICE_READONLY)
        merged = {**invoice, **body}
        rec.complete_amounts(merged, set(body))
        changes = {k: v for k, v in merged.items() if k in body or v != invoice.get(k)}
        return web.json_response(self.state.update_invoice(invoice["id"], **changes))

    async def delete_invoice(self, request: web.Request) -> web.StreamResponse:
        """``DELETE invoices/ID``."""
        invoice = self._record("invoices", request)
        self.state.delete_invoice(invoice["id"])
        logger.info("invoice %s deleted", invoice["id"])
        return web.json_response({"success": True, "message": f"Invoice {invoice['id']} deleted"})

    async def invoice_action(self, request: web.Request) -> web.StreamResponse:
        """``POST invoices/ID?action=X``: run one of the eight invoice actions."""
        invoice_id = request.match_info["id"]
        action = request.query.get("action", "")
        params: dict[str, Any] = {k: v for k, v in _one(request.query).items() if k != "action"}
        try:
            params.update(await read_json_object(request))
        except ApiError as exc:
            exc.code = 400503
            self.state.log_action(invoice_id, action, params, exc.status)
            raise
        base = f"{request.scheme}://{request.host}"
        status, body = perform_action(self.state, invoice_id, action, params, base_url=base)
        return web.json_response(body, status=status)

    def _customer(self, request: web.Request) -> str:
        customer_id = request.match_info["cid"]
        if customer_id not in self.state.customers:
            raise ApiError(404, "Not Found", hint=f"No customer with id {customer_id!r}")
        return customer_id

    async def customer_invoices(self, request: web.Request) -> web.StreamResponse:
        """``GET customers/ID/invoices/``: the customer's (raised) invoices."""
        customer_id = self._customer(request)
        try:
            rows = select(
                self.state,
                "invoices",
                _one(request.query),
                page_max=self.page_max,
                customer_id=customer_id,
            )
        except ParamError as exc:
            raise ApiError(400, "Invalid parameter", hint=str(exc)) from exc
        return web.json_response(rows)

    async def create_invoice(self, request: web.Request) -> web.StreamResponse:
        """``POST customers/ID/invoices/``: raise a new invoice for the customer."""
        customer_id = self._customer(request)
        body = await read_json_object(request)
        include = body.pop("_includeTransactionIDs", None)
        self._validate_invoice(body)
        for name in ("id", "invoiceNumber", "status"):
            if name in body:
                raise ApiError(400, "Read-only field", hint=f"{name} cannot be set")
        if str(body.pop("customerID", customer_id)) != customer_id:
            raise ApiError(400, "Invalid field value", hint="customerID does not match the URL")
        if include is not None:
            ids = include.replace(";", ",").split(",") if isinstance(include, str) else include
            if not isinstance(ids, list) or not all(str(i).strip().isdigit() for i in ids):
                raise ApiError(
                    400, "Invalid field value", hint="_includeTransactionIDs: a list of ids"
                )
            if "invoiceAmount" not in body and ids:
                body["invoiceAmount"] = rec.fmt_money(rec.money(25) * len(ids))
                body["invoiceChargesManual"] = body["invoiceAmount"]
        today = self.state.clock.now().date()
        body.setdefault("cutoffDate", rec.fmt_date(date(today.year, today.month, 1)))
        invoice = self.state.add_invoice(customerID=customer_id, **body)
        logger.info("invoice %s raised for customer %s", invoice["id"], customer_id)
        return web.json_response(invoice)
