"""Client for the billing platform API (seeds 000-002): tasks, runs, invoices, actions.

Lists are bare JSON arrays with no total count and an undocumented page size, so
:meth:`BillingPlatformClient.iter_pages` pages with ``idAfter`` (the highest id seen) until
an empty page comes back, whatever ``limit`` the server honoured.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Mapping
from typing import Any, TypeVar, Unpack

import aiohttp

from billnotify.clients.billing_actions import InvoiceActions
from billnotify.clients.billing_filters import (
    InvoiceFilters,
    ListFilters,
    request_body,
    split_filters,
)
from billnotify.clients.billing_models import BillingRun, BillingTask, Invoice, Record
from billnotify.clients.codec import query, segment, single_record
from billnotify.clients.http import (
    DEFAULT_MAX_RESPONSE_BYTES,
    BearerAuth,
    JsonTransport,
    Sleep,
    TransportClient,
)
from billnotify.errors import MalformedResponseError
from billnotify.secrets import Secret

logger = logging.getLogger(__name__)

R = TypeVar("R", bound=Record)

BILLING_TASKS = "billingTasks"
BILLING_RUNS = "billingRuns"
INVOICES = "invoices"


def _page_records(data: Any, url: str) -> list[dict[str, Any]]:
    if not isinstance(data, list):
        raise MalformedResponseError(
            f"expected a JSON array of records, got {type(data).__name__}", url=url
        )
    for index, item in enumerate(data):
        if not isinstance(item, dict) or item.get("id") in (None, ""):
            raise _bad_record(index, item, url)
    return data


def _page_ids(page: list[Any], url: str) -> list[int]:
    """The numeric ids of a page's records (validating each record on the way)."""
    ids: list[int] = []
    append = ids.append
    try:
        for item in page:
            append(int(item["id"]))
    except (TypeError, KeyError, ValueError, IndexError):
        raise _bad_record(len(ids), page[len(ids)], url) from None
    return ids


def _bad_record(index: int, item: Any, url: str) -> MalformedResponseError:
    if not isinstance(item, dict):
        problem = f"is {type(item).__name__}, not a JSON object"
    elif item.get("id") in (None, ""):
        problem = "has no id"
    else:
        problem = f"has id {item['id']!r}, not numeric: cannot page with idAfter"
    return MalformedResponseError(f"record {index} {problem}", url=url)


class BillingPlatformClient(InvoiceActions, TransportClient):
    """Typed async client for one billing platform instance.

    Use as ``async with BillingPlatformClient(url, key) as client: ...`` or call
    :meth:`close` when done.

    Args:
        base_url: e.g. ``https://HOST/backend/api/v1/``.
        api_key: sent as ``Authorization: Bearer KEY``.
        session: an aiohttp session to share (not closed by :meth:`close`).
        timeout: seconds per attempt.
        max_attempts: attempts per idempotent request.
        sleep: coroutine used for backoff (tests inject one that records delays).
        page_size: ``limit`` sent per page unless a call overrides it.
        rng: jitter source.
        max_response_bytes: response size cap.
    """

    def __init__(
        self,
        base_url: str,
        api_key: Secret | str,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 30.0,
        max_attempts: int = 5,
        sleep: Sleep = asyncio.sleep,
        page_size: int = 100,
        rng: random.Random | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        key = api_key.reveal() if isinstance(api_key, Secret) else api_key
        self.page_size = page_size
        self.transport = JsonTransport(
            base_url,
            auth=BearerAuth(key),
            session=session,
            timeout=timeout,
            max_attempts=max_attempts,
            sleep=sleep,
            rng=rng,
            max_response_bytes=max_response_bytes,
        )

    # -- generic ---------------------------------------------------------------------------

    async def iter_pages(
        self,
        resource: str,
        params: Mapping[str, Any] | None = None,
        *,
        page_size: int | None = None,
        max_records: int | None = None,
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Yield every page of a list endpoint as raw records (dicts exactly as returned).

        Args:
            resource: collection path, e.g. ``"billingTasks"`` or ``"customers/7/invoices"``.
            params: API query parameters (camelCase); ``datetime`` values must be aware.
                ``idAfter`` is where paging starts; ``offset`` goes with the first request;
                ``limit`` is taken as the page size.
            page_size: ``limit`` per request (default: the client's ``page_size``).
            max_records: stop after this many records.

        Raises:
            MalformedResponseError: a page is not an array of objects with numeric ids, or
                the server ignored ``idAfter``.
        """
        base = dict(params or {})
        asked = base.pop("limit", None)  # a raw ``limit`` is a page size, like page_size
        size = page_size or (int(asked) if asked else None) or self.page_size
        id_after = base.pop("idAfter", None)
        offset = base.pop("offset", None)
        last = None if id_after is None else int(id_after)
        remaining = max_records
        path = resource.strip("/") + "/"
        while remaining is None or remaining > 0:
            limit = size if remaining is None else min(size, remaining)
            sent = query({**base, "limit": limit, "idAfter": last, "offset": offset})
            resp = await self.transport.request("GET", path, params=sent)
            data = resp.json()
            if not isinstance(data, list):
                _page_records(data, resp.url)  # raises, naming what came instead
            if not data:
                return
            page: list[dict[str, Any]] = data
            ids = _page_ids(page, resp.url)
            if last is not None and min(ids) <= last:
                kept = [(r, i) for r, i in zip(page, ids, strict=True) if i > last]
                if not kept:
                    raise MalformedResponseError(
                        f"server ignored idAfter={last}: page holds no higher id", url=resp.url
                    )
                logger.warning("dropped %d records at or below idAfter", len(page) - len(kept))
                page, ids = [r for r, _ in kept], [i for _, i in kept]
            if remaining is not None:
                page, ids = page[:remaining], ids[:remaining]
                remaining -= len(page)
            last = max(ids)
            offset = None
            yield page

    async def get_record(self, resource: str, record_id: int | str) -> dict[str, Any]:
        """Fetch ``resource/ID`` as a raw dict.

        Raises:
            NotFoundError: no such record.
        """
        resp = await self.transport.request(
            "GET", f"{resource.strip('/')}/{segment(record_id)}", headers=_JSON
        )
        return single_record(resp.json(), resp.url)

    async def send_record(
        self, method: str, path: str, fields: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        """Send a record with ``method`` (never retried) and return the record returned."""
        resp = await self.transport.request(
            method, path, json_body=dict(fields or {}), headers=_JSON, retry=False
        )
        return single_record(resp.json(), resp.url)

    async def _iter_typed(
        self, model: type[R], resource: str, filters: Mapping[str, Any]
    ) -> AsyncIterator[list[R]]:
        params, limit, page_size = split_filters(filters)
        async for page in self.iter_pages(resource, params, page_size=page_size, max_records=limit):
            yield [model.from_raw(raw) for raw in page]

    async def _list_typed(
        self, model: type[R], resource: str, filters: Mapping[str, Any]
    ) -> list[R]:
        return [r async for page in self._iter_typed(model, resource, filters) for r in page]

    # -- billing tasks (seed 000, read-only) ------------------------------------------------

    def iter_billing_tasks(
        self, **filters: Unpack[ListFilters]
    ) -> AsyncIterator[list[BillingTask]]:
        """Yield billing tasks page by page."""
        return self._iter_typed(BillingTask, BILLING_TASKS, filters)

    async def list_billing_tasks(self, **filters: Unpack[ListFilters]) -> list[BillingTask]:
        """Return every billing task matching ``filters`` (all pages)."""
        return await self._list_typed(BillingTask, BILLING_TASKS, filters)

    async def get_billing_task(self, task_id: int | str) -> BillingTask:
        """Fetch one billing task."""
        return BillingTask.from_raw(await self.get_record(BILLING_TASKS, task_id))

    # -- billing runs (seed 001) -------------------------------------------------------------

    def iter_billing_runs(self, **filters: Unpack[ListFilters]) -> AsyncIterator[list[BillingRun]]:
        """Yield billing runs page by page."""
        return self._iter_typed(BillingRun, BILLING_RUNS, filters)

    async def list_billing_runs(self, **filters: Unpack[ListFilters]) -> list[BillingRun]:
        """Return every billing run matching ``filters`` (all pages)."""
        return await self._list_typed(BillingRun, BILLING_RUNS, filters)

    async def get_billing_run(self, run_id: int | str) -> BillingRun:
        """Fetch one billing run."""
        return BillingRun.from_raw(await self.get_record(BILLING_RUNS, run_id))

    async def create_billing_run(self, **fields: Any) -> BillingRun:
        """Create a billing run (``POST``; not retried) and return it.

        Fields use API names (``invoiceDate``) or their snake_case (``invoice_date``).
        """
        body = request_body(BillingRun, fields)
        return BillingRun.from_raw(await self.send_record("POST", f"{BILLING_RUNS}/", body))

    async def update_billing_run(self, run_id: int | str, **fields: Any) -> BillingRun:
        """Update a billing run (``PUT``; dates only while pending) and return it."""
        body = request_body(BillingRun, fields)
        path = f"{BILLING_RUNS}/{segment(run_id)}"
        return BillingRun.from_raw(await self.send_record("PUT", path, body))

    # -- invoices (seed 002) -----------------------------------------------------------------

    def iter_invoices(self, **filters: Unpack[InvoiceFilters]) -> AsyncIterator[list[Invoice]]:
        """Yield invoices page by page (raised ones unless ``unsent``/``include_unsent``)."""
        return self._iter_typed(Invoice, INVOICES, filters)

    async def list_invoices(self, **filters: Unpack[InvoiceFilters]) -> list[Invoice]:
        """Return every invoice matching ``filters`` (all pages)."""
        return await self._list_typed(Invoice, INVOICES, filters)

    def iter_customer_invoices(
        self, customer_id: int | str, **filters: Unpack[InvoiceFilters]
    ) -> AsyncIterator[list[Invoice]]:
        """Yield one customer's invoices page by page."""
        return self._iter_typed(Invoice, f"customers/{segment(customer_id)}/invoices", filters)

    async def list_customer_invoices(
        self, customer_id: int | str, **filters: Unpack[InvoiceFilters]
    ) -> list[Invoice]:
        """Return one customer's invoices (raised ones by default)."""
        resource = f"customers/{segment(customer_id)}/invoices"
        return await self._list_typed(Invoice, resource, filters)

    async def get_invoice(self, invoice_id: int | str) -> Invoice:
        """Fetch one invoice."""
        return Invoice.from_raw(await self.get_record(INVOICES, invoice_id))

    async def find_invoice_by_number(self, number: str) -> Invoice | None:
        """Return the invoice with exactly this number, or None."""
        resp = await self.transport.request(
            "GET", f"{INVOICES}/", params={"invoiceNumber": number}, headers=_JSON
        )
        for raw in _page_records(resp.json(), resp.url):
            if str(raw.get("invoiceNumber")) == number:
                return Invoice.from_raw(raw)
        return None

    async def get_invoice_pdf(self, invoice_id: int | str) -> bytes:
        """Download an invoice's PDF (unsent invoices have none).

        A body that does not start with ``%PDF-`` is still taken when the platform
        answered it as ``application/pdf`` (a leading blank line or BOM is common and
        readers cope); a warning names the invoice.

        Raises:
            MalformedResponseError: the body is empty, or not a PDF by its bytes or its type.
        """
        resp = await self.transport.request(
            "GET", f"{INVOICES}/{segment(invoice_id)}", headers={"Accept": "application/pdf"}
        )
        if not resp.body.startswith(b"%PDF-"):
            ctype = resp.content_type or "no content type"
            if ctype != "application/pdf" or not resp.body:
                raise MalformedResponseError(
                    f"expected a PDF, got {ctype}: {resp.snippet()}", url=resp.url
                )
            logger.warning(
                "invoice %s: its PDF (application/pdf, %d bytes) starts with %r, not %%PDF-;"
                " used as it is",
                invoice_id,
                len(resp.body),
                resp.body[:8],
            )
        return resp.body

    async def update_invoice(self, invoice_id: int | str, **fields: Any) -> Invoice:
        """Update an invoice (``PUT``; not retried) and return it."""
        path = f"{INVOICES}/{segment(invoice_id)}"
        return Invoice.from_raw(await self.send_record("PUT", path, request_body(Invoice, fields)))

    async def delete_invoice(self, invoice_id: int | str) -> None:
        """Delete an invoice (``DELETE``; not retried: a repeat would 404)."""
        await self.transport.request(
            "DELETE", f"{INVOICES}/{segment(invoice_id)}", headers=_JSON, retry=False
        )

    async def create_customer_invoice(
        self,
        customer_id: int | str,
        *,
        cutoff_date: Any = None,
        transaction_cutoff_date: Any = None,
        include_transaction_ids: list[int | str] | None = None,
        **fields: Any,
    ) -> Invoice:
        """Add an invoice to a customer (``POST``; not retried) and return it.

        Args:
            customer_id: the customer.
            cutoff_date: call cutoff (the platform defaults to the start of this month).
            transaction_cutoff_date: non-call cutoff by transaction date.
            include_transaction_ids: sent as ``_includeTransactionIDs``.
            **fields: further invoice fields (API or snake_case names).
        """
        body = request_body(Invoice, fields)
        extra = {
            "cutoffDate": cutoff_date,
            "transactionCutoffDate": transaction_cutoff_date,
            "_includeTransactionIDs": include_transaction_ids,
        }
        body.update({k: v for k, v in extra.items() if v is not None})
        path = f"customers/{segment(customer_id)}/invoices/"
        return Invoice.from_raw(await self.send_record("POST", path, body))


_JSON = {"Accept": "application/json"}
