"""Chained actions end to end (SPEC §7.5): ``id``, ``after``, ``results.<id>``.

The service runs in this loop against the billing simulator over HTTP and an aiosmtpd
sink; operators act through the real command line (``billnotify deliveries ...`` in a
subprocess on the same state file):

- ``generateDownloadLink`` then an email to the customer carrying
  ``results.link.download_url``: the link the platform made, once; its answer is kept
  and shown by ``deliveries show``;
- a predecessor that fails permanently: the email is not sent and says why
  (``skipped``, "after link: dead"); once an operator retries the predecessor and it
  succeeds, the email goes;
- an ``uncertain`` predecessor (a customer email whose answer was a proxy's 500): the
  dependent does not run until ``deliveries resolve --sent``, then runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import pg
from billnotify.deliveries.base import DeliveryStatus
from billnotify.simulator import Simulator
from billnotify.store.records import Delivery, delivery_id
from processes import cli
from servers import SmtpSink, WebhookReceiver, sim_source, toml_config
from service_harness import polls_after, running_service, until

RULE = "download-link-to-customer"


def _config(
    tmp_path: Path,
    sim: Simulator,
    sink: SmtpSink,
    actions: list[dict[str, Any]],
    state: str = "state.db",
) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "service": {"name": "chains", "state": state, "http": "", "shutdown_grace": "5s"},
        "mqtt": {"enabled": False},
        "sources": [sim_source(sim, poll_interval="200ms", watch=["invoices"], timeout="5s")],
        "smtp": {"host": "127.0.0.1", "port": sink.port, "from": "Billing <billing@example.com>"},
        "rules": [
            {
                "name": RULE,
                "on": ["invoice.created"],
                "when": "'Approved' in event.data.object.status",
                "actions": actions,
            }
        ],
    }
    templates = tmp_path / "templates"
    templates.mkdir(exist_ok=True)
    (templates / "download.subject.j2").write_text("Your invoice {{ object.id }}")
    (templates / "download.txt.j2").write_text(
        "Download it here: {{ results.link.download_url }} (until {{ results.link.expires_at }})\n"
    )
    (templates / "emailed.subject.j2").write_text("Invoice {{ object.id }} emailed")
    (templates / "emailed.txt.j2").write_text(
        "{% if 'emailed' in results %}{{ results.emailed.message }}"
        "{% else %}confirmed by an operator{% endif %}\n"
    )
    (tmp_path / "config.toml").write_text(toml_config(raw))
    return raw


LINK = {
    "type": "invoice_action",
    "id": "link",
    "action": "generateDownloadLink",
    "params": {"expiryHours": 72, "maxUses": 2},
}
MAIL = {
    "type": "email",
    "after": "link",
    "to": ["customer-{{ object.id }}@example.com"],
    "template": "download",
}


async def _cli(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    """``billnotify ARGS -c config.toml`` in a subprocess: (exit status, stdout, stderr)."""
    return await cli(*args, "-c", str(tmp_path / "config.toml"), cwd=tmp_path)


async def _status(store: Any, id_: str, *statuses: DeliveryStatus) -> Delivery | None:
    got: Delivery | None = await store.get_delivery(id_)
    return got if got is not None and got.status in statuses else None


def _mails_to(sink: SmtpSink, address: str) -> list[str]:
    return [
        str(m.message.get_body(preferencelist=("plain",)).get_content())  # type: ignore[union-attr]
        for m in sink.messages
        if address in m.rcpt_tos
    ]


@pytest.mark.parametrize("state", ["sqlite", "postgres"])
async def test_a_download_link_reaches_the_customer_in_the_email_chained_after_it(
    tmp_path: Path, sim: Simulator, sink: SmtpSink, state: str
) -> None:
    where = "state.db"
    if state == "postgres":
        if reason := pg.available():
            pytest.skip(reason)
        where = pg.shared().database()
    raw = _config(tmp_path, sim, sink, [LINK, MAIL], state=where)
    async with running_service(raw, tmp_path) as service:
        invoice = sim.state.add_invoice(status=["Raised", "Approved"])
        event_id = None

        async def mailed() -> list[str]:
            return _mails_to(sink, f"customer-{invoice['id']}@example.com")

        [body] = await until(mailed, "the customer's email")
        rows = await service.store.list_deliveries()
        by_index = {d.action_index: d for d in rows}
        assert [by_index[0].status, by_index[1].status] == [DeliveryStatus.SUCCEEDED] * 2
        event_id = by_index[0].event_id
        await polls_after(service, 2)

    # the platform made one link, for this invoice, and that link is what the customer got
    [(token, link)] = sim.state.download_links.items()
    assert link["invoice_id"] == invoice["id"]
    assert link["max_uses"] == 2
    assert f"/download/invoice/{token} " in body
    assert body.startswith(f"Download it here: {sim.billing_base_url.split('/backend')[0]}")
    assert len(_mails_to(sink, f"customer-{invoice['id']}@example.com")) == 1
    calls = [c["action"] for c in sim.state.action_log]
    assert calls == ["generateDownloadLink"]

    # the platform's answer is kept with the delivery and shown by `deliveries show`
    link_id = delivery_id(RULE, 0, event_id)
    code, out, err = await _cli(tmp_path, "deliveries", "show", link_id)
    assert code == 0, err
    shown = json.loads(out)
    assert shown["result"]["download_url"].endswith(f"/download/invoice/{token}")
    assert shown["result"]["max_uses"] == 2
    code, out, err = await _cli(tmp_path, "deliveries", "show", delivery_id(RULE, 1, event_id))
    assert code == 0, err
    mail = json.loads(out)
    assert mail["status"] == "succeeded"
    assert mail["note"] == "after link: succeeded"
    assert mail["result"] is None  # an email without an id keeps no answer


async def test_a_predecessor_that_fails_permanently_skips_its_dependent_until_a_retry(
    tmp_path: Path, sim: Simulator, sink: SmtpSink
) -> None:
    raw = _config(tmp_path, sim, sink, [LINK, MAIL])
    sim.state.fail_next_action("generateDownloadLink", 400502)  # "Action failed": permanent
    async with running_service(raw, tmp_path) as service:
        invoice = sim.state.add_invoice(status=["Raised", "Approved"])

        async def link_dead() -> Delivery | None:
            rows = [d for d in await service.store.list_deliveries() if d.action_index == 0]
            return rows[0] if rows and rows[0].status is DeliveryStatus.DEAD else None

        link = await until(link_dead, "the link delivery dead")
        mail_id = delivery_id(RULE, 1, link.event_id)
        mail = await until(
            lambda: _status(service.store, mail_id, DeliveryStatus.SKIPPED), "the email skipped"
        )
        assert mail.note == "after link: dead"
        assert mail.attempts == 0
        await polls_after(service, 3)
        assert sink.messages == []

        # an operator retries the link; it succeeds now, and the email goes after it
        code, _out, err = await _cli(tmp_path, "deliveries", "retry", link.id)
        assert code == 0, err
        address = f"customer-{invoice['id']}@example.com"

        async def mailed() -> list[str]:
            return _mails_to(sink, address)

        [body] = await until(mailed, "the customer's email after the retry")
        [token] = sim.state.download_links
        assert f"/download/invoice/{token} " in body
        done = await until(
            lambda: _status(service.store, mail_id, DeliveryStatus.SUCCEEDED), "email succeeded"
        )
        assert done.attempts == 1
    assert [c["action"] for c in sim.state.action_log] == ["generateDownloadLink"] * 2
    assert len(_mails_to(sink, address)) == 1


async def test_an_uncertain_predecessor_holds_its_dependent_until_resolved_as_sent(
    tmp_path: Path, sim: Simulator, sink: SmtpSink
) -> None:
    emailed = {"type": "invoice_action", "id": "emailed", "action": "email"}
    tell = {
        "type": "email",
        "after": "emailed",
        "to": ["accounts@example.com"],
        "template": "emailed",
    }
    raw = _config(tmp_path, sim, sink, [emailed, tell])
    # a proxy's 500 without a platform error code: the customer email may have gone
    sim.faults.add("/backend/api/v1/invoices/", kind="500", method="POST")
    async with running_service(raw, tmp_path) as service:
        sim.state.add_invoice(status=["Raised", "Approved"])

        async def uncertain() -> Delivery | None:
            rows = [d for d in await service.store.list_deliveries() if d.action_index == 0]
            return rows[0] if rows and rows[0].status is DeliveryStatus.UNCERTAIN else None

        first = await until(uncertain, "the invoice email uncertain")
        then_id = delivery_id(RULE, 1, first.event_id)
        then = await until(
            lambda: _status(service.store, then_id, DeliveryStatus.SKIPPED), "the dependent held"
        )
        assert then.note == "after emailed: uncertain"
        await polls_after(service, 3)
        assert sink.messages == []

        code, out, err = await _cli(
            tmp_path, "deliveries", "resolve", first.id, "--sent", "--reason", "customer has it"
        )
        assert code == 0, err
        assert f"{then_id}: after emailed: succeeded -> pending" in out

        async def told() -> list[str]:
            return _mails_to(sink, "accounts@example.com")

        [body] = await until(told, "the dependent email after the resolution")
        assert body.strip() == "confirmed by an operator"  # no answer was ever received
        await until(
            lambda: _status(service.store, then_id, DeliveryStatus.SUCCEEDED), "it succeeded"
        )


async def test_a_webhook_with_an_id_keeps_the_receivers_answer_for_the_action_after_it(
    tmp_path: Path, sim: Simulator, sink: SmtpSink, receiver: WebhookReceiver
) -> None:
    hook = {"type": "webhook", "id": "hook", "endpoint": "ops"}
    note = {"type": "email", "after": "hook", "to": ["ops@example.com"], "template": "hooked"}
    raw = _config(tmp_path, sim, sink, [hook, note])
    raw["webhooks"] = [
        {
            "name": "ops",
            "url": receiver.url("/ok"),
            "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "allow_private": True,
        }
    ]
    (tmp_path / "templates" / "hooked.subject.j2").write_text("hooked")
    (tmp_path / "templates" / "hooked.txt.j2").write_text(
        "{{ results.hook.status }} {{ results.hook.body.received }}\n"
    )
    async with running_service(raw, tmp_path) as service:
        sim.state.add_invoice(status=["Raised", "Approved"])

        async def told() -> list[str]:
            return _mails_to(sink, "ops@example.com")

        [body] = await until(told, "the email after the webhook")
        assert body.strip() == "200 True"
        [hooked] = [d for d in await service.store.list_deliveries() if d.action_index == 0]
        kept = await service.store.get_results([hooked.id])
    assert json.loads(kept[hooked.id]) == {"status": 200, "body": {"received": True}}
    assert len(receiver.hits) == 1


async def test_every_invoice_actions_answer_is_kept_even_without_a_chain(
    tmp_path: Path, sim: Simulator, sink: SmtpSink
) -> None:
    raw = _config(tmp_path, sim, sink, [{"type": "invoice_action", "action": "email"}])
    async with running_service(raw, tmp_path) as service:
        sim.state.add_invoice(status=["Raised", "Approved"])

        async def done() -> list[Delivery]:
            rows = await service.store.list_deliveries()
            return [d for d in rows if d.status is DeliveryStatus.SUCCEEDED]

        [emailed] = await until(done, "the invoice emailed")
    code, out, err = await _cli(tmp_path, "deliveries", "show", emailed.id)
    assert code == 0, err
    result = json.loads(out)["result"]
    assert result["success"] is True and result["message"]
    code, out, err = await _cli(tmp_path, "deliveries", "--json")
    assert code == 0, err
    [listed] = [json.loads(line) for line in out.splitlines()]
    assert listed["id"] == emailed.id and listed["result"] == result
