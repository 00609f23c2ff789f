"""Invoice actions against the billing simulator: params, error codes, uncertainty."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from billnotify.actions.invoice_action import InvoiceActionExecutor
from billnotify.clients import BillingPlatformClient
from billnotify.config.models import InvoiceActionAction, Rule
from billnotify.deliveries.base import Outcome
from billnotify.events import CloudEvent
from billnotify.simulator import Simulator
from billnotify.templating import TemplateRenderer
from servers import free_port

RULE = Rule.model_validate(
    {
        "name": "email-approved",
        "on": ["invoice.*"],
        "actions": [{"type": "invoice_action", "action": "email"}],
    }
)
INVOICES = "/backend/api/v1/invoices"


@pytest.fixture
def make_executor(
    sim: Simulator, tmp_path: Any, closing: Any
) -> Callable[..., InvoiceActionExecutor]:
    def make(base_url: str | None = None, timeout: float = 5.0) -> InvoiceActionExecutor:
        client = closing(
            BillingPlatformClient(
                base_url or sim.billing_base_url, sim.api_key, max_attempts=1, timeout=timeout
            )
        )
        return InvoiceActionExecutor({"acme": client}, TemplateRenderer(tmp_path))

    return make


def action(name: str = "email", **overrides: Any) -> InvoiceActionAction:
    return InvoiceActionAction.model_validate(
        {"type": "invoice_action", "action": name, **overrides}
    )


def invoice_event(invoice: dict[str, Any], source: str = "acme") -> CloudEvent:
    return CloudEvent(
        id="evt_inv",
        source=f"billnotify://{source}",
        type="invoice.status_changed",
        subject=f"invoices/{invoice['id']}",
        time="2026-11-21T10:15:02Z",
        data={
            "object": invoice,
            "previous": {"status": ["Raised"]},
            "changed": ["status"],
            "added": ["Approved"],
        },
    )


async def run(executor: InvoiceActionExecutor, act: InvoiceActionAction, ev: CloudEvent) -> Any:
    return await executor.execute(act, ev, RULE, delivery_id="dlv_inv", attempt=1)


def approved(sim: Simulator, **fields: Any) -> dict[str, Any]:
    return sim.state.add_invoice(status=["Raised", "Approved"], **fields)


async def test_email_with_rendered_params(sim: Simulator, make_executor: Any) -> None:
    invoice = approved(sim)
    act = action(
        params={"billStyle": "Full", "email": ["billing+{{ object.customerID }}@example.com"]}
    )
    result = await run(make_executor(), act, invoice_event(invoice))

    assert result.outcome is Outcome.SUCCESS, result.error
    [call] = sim.state.action_log
    assert call["action"] == "email"
    assert call["invoice_id"] == str(invoice["id"])
    assert call["params"] == {
        "billStyle": "Full",
        "email": [f"billing+{invoice['customerID']}@example.com"],
    }
    assert sim.state.email_calls(invoice["id"]) == 1


async def test_the_action_source_overrides_the_events(sim: Simulator, make_executor: Any) -> None:
    invoice = approved(sim)
    result = await run(
        make_executor(), action("recreate", source="acme"), invoice_event(invoice, source="other")
    )
    assert result.outcome is Outcome.SUCCESS, result.error
    assert [c["action"] for c in sim.state.action_log] == ["recreate"]


async def test_only_invoice_events(sim: Simulator, make_executor: Any) -> None:
    ev = CloudEvent(
        id="e",
        source="billnotify://acme",
        type="billing_task.created",
        subject="billing_tasks/1",
        time="2026-11-21T10:15:02Z",
        data={"object": {"id": "1"}},
    )
    result = await run(make_executor(), action(), ev)
    assert result.outcome is Outcome.PERMANENT
    assert "invoice events" in (result.error or "")
    assert sim.state.action_log == []


async def test_an_unknown_source(sim: Simulator, make_executor: Any) -> None:
    result = await run(make_executor(), action(), invoice_event(approved(sim), source="nowhere"))
    assert result.outcome is Outcome.PERMANENT
    assert "no billing_platform source 'nowhere'" in (result.error or "")


async def test_a_param_template_error_sends_nothing(sim: Simulator, make_executor: Any) -> None:
    result = await run(
        make_executor(), action(params={"email": "{{ object.nope }}"}), invoice_event(approved(sim))
    )
    assert result.outcome is Outcome.PERMANENT
    assert "invoice_action email param email" in (result.error or "")
    assert sim.state.action_log == []


@pytest.mark.parametrize(
    ("code", "outcome", "status"),
    [
        (400702, Outcome.PERMANENT, 400),
        (400703, Outcome.PERMANENT, 400),
        (403001, Outcome.PERMANENT, 403),
        (500601, Outcome.RETRYABLE, 500),
    ],
)
async def test_documented_error_codes(
    sim: Simulator, make_executor: Any, code: int, outcome: Outcome, status: int
) -> None:
    invoice = approved(sim)
    sim.state.fail_next_action("email", code)
    result = await run(make_executor(), action(), invoice_event(invoice))
    assert result.outcome is outcome
    assert result.status_code == status
    assert (result.error or "").startswith(f"{code} "), result.error


async def test_a_refused_action_is_permanent(sim: Simulator, make_executor: Any) -> None:
    invoice = sim.state.add_invoice()  # raised, not approved
    result = await run(make_executor(), action(), invoice_event(invoice))
    assert result.outcome is Outcome.PERMANENT
    assert "400502" in (result.error or "")


async def test_429_is_retryable_with_retry_after(sim: Simulator, make_executor: Any) -> None:
    sim.faults.add(INVOICES, kind="429", retry_after=12, method="POST")
    result = await run(make_executor(), action(), invoice_event(approved(sim)))
    assert result.outcome is Outcome.RETRYABLE
    assert result.retry_after == 12.0
    assert sim.state.action_log == []


@pytest.mark.parametrize(
    ("name", "outcome"), [("email", Outcome.UNCERTAIN), ("recreate", Outcome.RETRYABLE)]
)
async def test_a_dropped_connection_after_sending(
    sim: Simulator, make_executor: Any, name: str, outcome: Outcome
) -> None:
    invoice = approved(sim)
    sim.faults.add(INVOICES, kind="reset_after", method="POST")
    result = await run(make_executor(), action(name), invoice_event(invoice))
    assert result.outcome is outcome
    # the platform did perform it: retrying a customer email would send it twice
    assert [c["action"] for c in sim.state.action_log] == [name]


async def test_a_timeout_after_sending_a_customer_email_is_uncertain(
    sim: Simulator, make_executor: Any
) -> None:
    sim.faults.add(INVOICES, kind="slow", delay=2.0, method="POST")
    result = await run(make_executor(timeout=0.5), action(), invoice_event(approved(sim)))
    assert result.outcome is Outcome.UNCERTAIN


async def test_nothing_listening_is_retryable_even_for_emails(make_executor: Any) -> None:
    executor = make_executor(base_url=f"http://127.0.0.1:{free_port()}/backend/api/v1")
    result = await run(executor, action(), invoice_event({"id": "1"}))
    assert result.outcome is Outcome.RETRYABLE


async def test_render_renders_params_recursively(sim: Simulator, make_executor: Any) -> None:
    invoice = approved(sim)
    act = action(
        params={
            "email": ["{{ object.customerID }}@x.org", "ops@x.org"],
            "billStyle": "{{ 'Full' if source == 'acme' else 'Summary' }}",
        }
    )
    rendered = await make_executor().render(act, invoice_event(invoice), RULE)
    assert rendered.target == f"invoice {invoice['id']} email"
    assert rendered.summary == {
        "source": "acme",
        "invoice_id": str(invoice["id"]),
        "action": "email",
        "params": {
            "email": [f"{invoice['customerID']}@x.org", "ops@x.org"],
            "billStyle": "Full",
        },
    }
    assert sim.state.action_log == []


def test_customer_facing_actions_are_exactly_once(make_executor: Any) -> None:
    executor = make_executor()
    assert executor.exactly_once(action("email")) is True
    assert executor.exactly_once(action("emailCdrs")) is True
    assert executor.exactly_once(action("recreate")) is False
    assert executor.exactly_once(action("generateDownloadLink")) is False


async def test_templated_numbers_are_sent_as_numbers(sim: Simulator, make_executor: Any) -> None:
    invoice = approved(sim)
    act = action(
        "generateDownloadLink",
        params={"expiryHours": "{{ 24 * 3 }}", "maxUses": "{{ 1 + 1 }}"},
    )
    result = await run(make_executor(), act, invoice_event(invoice))
    assert result.outcome is Outcome.SUCCESS, result.error
    [call] = sim.state.action_log
    assert call["params"] == {"expiryHours": 72, "maxUses": 2}  # JSON numbers, not strings
    assert result.response is not None and result.response["max_uses"] == 2


@pytest.mark.parametrize(
    ("name", "params", "error"),
    [
        (
            "generateDownloadLink",
            {"expiryHours": "{{ 'soon' }}"},
            "invoice_action generateDownloadLink param expiryHours: must be a whole number,"
            " got 'soon' (rendered from \"{{ 'soon' }}\")",
        ),
        (
            "generateDownloadLink",
            {"expiryHours": "{{ 5 }}"},
            "param expiryHours: must be one of 1, 6, 24, 72, 168, 336, 720, got 5",
        ),
        (
            "generateDownloadLink",
            {"maxUses": "{{ 7 }}"},
            "param maxUses: must be between 1 and 2, got 7",
        ),
        (
            "linkToXero",
            {"xeroID": "{{ object.customerID }}"},
            "param xeroID: must be a UUID such as 00000000-0000-0000-0000-000000000000",
        ),
        (
            "email",
            {"email": "{{ object.customerID }}"},
            "param email: '",
        ),
    ],
)
async def test_a_rendered_param_the_platform_would_refuse_sends_nothing(
    sim: Simulator, make_executor: Any, name: str, params: dict[str, Any], error: str
) -> None:
    sim.state.xero_module_active = True
    result = await run(make_executor(), action(name, params=params), invoice_event(approved(sim)))
    assert result.outcome is Outcome.PERMANENT
    assert error in (result.error or ""), result.error
    assert sim.state.action_log == []


@pytest.mark.parametrize(
    ("code", "meaning"),
    [
        (400502, "400502 action failed"),
        (400702, "400702 invalid email address"),
        (400703, "400703 unknown bill style"),
        (403005, "403005 permission denied"),
        (500601, "500601 email sending failed"),
    ],
)
async def test_errors_carry_the_meaning_of_the_platform_code(
    sim: Simulator, make_executor: Any, code: int, meaning: str
) -> None:
    sim.state.fail_next_action("email", code)
    result = await run(make_executor(), action(), invoice_event(approved(sim)))
    assert meaning in (result.error or "").lower(), result.error
    assert "Failure injected by the simulator" in (result.error or "")  # the platform's hint
