"""The billing platform's own invoice actions (SPEC §4 ``invoice_action``, seed 002).

``POST invoices/{id}?action=...`` on the event's invoice, through the billing client of
``action.source`` (default: the event's source), with the action's ``params`` rendered
(string values are Jinja templates; lists and tables are rendered item by item), then
checked against seed 002's parameter table (:mod:`billnotify.config.invoice_params`):
a rendered value the platform would refuse is a permanent failure, nothing is sent,
and whole numbers go out as JSON numbers.

The client never repeats a side-effecting POST by itself; the outcome is classified in
:func:`~billnotify.actions.base.classify`: documented 4xx error codes are permanent,
429 and 5xx retryable, and for the customer-facing actions (``email``, ``emailCdrs``) a
timeout, a dropped connection or a 5xx without one of the platform's error codes (a
proxy's 502/504) after the request went out is UNCERTAIN: the email may have gone, and
it must never go twice. The documented failures ``500601`` / ``500602`` stay retryable.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from billnotify.actions.base import InvoiceClient, NotApplicableError, Rendered, failure
from billnotify.config.invoice_params import check_params, is_templated
from billnotify.config.models import Action, InvoiceActionAction, Rule
from billnotify.config.types import CUSTOMER_FACING_INVOICE_ACTIONS
from billnotify.deliveries.base import AttemptResult, Outcome
from billnotify.errors import InvalidParameterError
from billnotify.events import CloudEvent
from billnotify.templating import TemplateRenderer, build_context
from billnotify.values import record_id

logger = logging.getLogger(__name__)


class InvoiceActionExecutor:
    """Performs ``invoice_action`` actions.

    Args:
        clients: billing platform clients by source name.
        templates: renders parameter values.
    """

    action_type = "invoice_action"

    def __init__(self, clients: Mapping[str, InvoiceClient], templates: TemplateRenderer) -> None:
        self._clients = clients
        self._templates = templates

    def exactly_once(self, action: Action) -> bool:
        """``email`` and ``emailCdrs`` reach customers: never performed twice."""
        return (
            isinstance(action, InvoiceActionAction)
            and action.action in CUSTOMER_FACING_INVOICE_ACTIONS
        )

    def target(self, action: Action, event: CloudEvent) -> str:
        """``invoice <id> <action>`` (with the source when it is not the event's)."""
        if not isinstance(action, InvoiceActionAction):
            return ""
        where = f" on {action.source}" if action.source else ""
        return f"invoice {_invoice_id(event)} {action.action}{where}"

    async def render(self, action: Action, event: CloudEvent, rule: Rule) -> Rendered:
        """The call an attempt would make."""
        invoice_action = _invoice_action(action)
        summary = {
            "source": invoice_action.source or event.source_name,
            "invoice_id": _invoice_id(event),
            "action": invoice_action.action,
            "params": self._params(invoice_action, event, rule),
        }
        return Rendered(self.action_type, self.target(action, event), summary)

    async def execute(
        self, action: Action, event: CloudEvent, rule: Rule, *, delivery_id: str, attempt: int
    ) -> AttemptResult:
        """Call the action once; failures are returned, classified."""
        try:
            invoice_action = _invoice_action(action)
            if event.entity != "invoice":
                raise NotApplicableError(
                    f"invoice actions apply to invoice events, not {event.type}"
                )
            source = invoice_action.source or event.source_name
            client = self._clients.get(source)
            if client is None:
                raise NotApplicableError(f"no billing_platform source {source!r}")
            params = self._params(invoice_action, event, rule)
        except Exception as exc:  # nothing was sent
            return failure(exc)
        invoice_id = _invoice_id(event)
        try:
            response = await client.invoice_action(invoice_id, invoice_action.action, params)
        except Exception as exc:
            return failure(exc, exactly_once=self.exactly_once(invoice_action))
        logger.info(
            "invoice %s %s done (delivery %s, attempt %d)",
            invoice_id,
            invoice_action.action,
            delivery_id,
            attempt,
        )
        return AttemptResult(Outcome.SUCCESS, status_code=200, response=response)

    async def close(self) -> None:
        """Nothing to release: the clients belong to their sources."""

    def _params(self, action: InvoiceActionAction, event: CloudEvent, rule: Rule) -> dict[str, Any]:
        """The rendered params, checked and typed as the platform expects them.

        Raises:
            TemplateError: a value failed to render.
            InvalidParameterError: a rendered value the platform would refuse.
        """
        context = build_context(event, rule)
        label = f"invoice_action {action.action} param"
        rendered = {
            key: self._render(value, context, f"{label} {key}")
            for key, value in action.params.items()
        }
        try:
            return check_params(action.action, rendered)
        except InvalidParameterError as exc:
            source = action.params.get(exc.param)
            if not is_templated(source):
                raise
            problem = f"{exc.problem} (rendered from {source!r})"
            raise InvalidParameterError(exc.action, exc.param, problem) from None

    def _render(self, value: Any, context: Mapping[str, Any], label: str) -> Any:
        if isinstance(value, str):
            return self._templates.render_string(value, context, label=label)
        if isinstance(value, list):
            return [self._render(item, context, label) for item in value]
        if isinstance(value, dict):
            return {k: self._render(v, context, f"{label}.{k}") for k, v in value.items()}
        return value


def _invoice_action(action: Action) -> InvoiceActionAction:
    if not isinstance(action, InvoiceActionAction):
        raise NotApplicableError(f"not an invoice_action: {action.type}")
    return action


def _invoice_id(event: CloudEvent) -> str:
    return record_id(event.data.get("object") or {}) or event.object_id
