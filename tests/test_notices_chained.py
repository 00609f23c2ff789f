"""A chained action's dependents are named by its predecessor's notice (SPEC §7.5): when
a ``generateDownloadLink`` goes ``dead``, its ``billnotify.delivery.dead`` notice lists
the deliveries that would have run after it (the customer's email, and the copy chained
after that email), which are ``skipped``. No notice of their own: one notice per
failure, naming everything it holds back."""

from __future__ import annotations

from pathlib import Path

from billnotify.deliveries.base import DeliveryStatus
from billnotify.simulator import Simulator
from billnotify.store.records import Delivery, delivery_id
from servers import SmtpSink
from service_harness import running_service, until
from test_chained_actions import LINK, MAIL, RULE, _config

COPY = {
    "type": "email",
    "after": "mail",
    "to": ["archive@example.com"],
    "template": "download",
}


async def test_the_dead_notice_names_the_chained_deliveries_it_skips(
    tmp_path: Path, sim: Simulator, sink: SmtpSink
) -> None:
    raw = _config(tmp_path, sim, sink, [LINK, {**MAIL, "id": "mail"}, COPY])
    sim.state.fail_next_action("generateDownloadLink", 400502)  # "Action failed": permanent
    async with running_service(raw, tmp_path) as service:
        sim.state.add_invoice(status=["Raised", "Approved"])

        async def notice() -> dict[str, object] | None:
            found = await service.store.list_events(type_glob="billnotify.delivery.dead")
            return found[0].event.data if found else None

        data = await until(notice, "the dead notice")

        async def skipped() -> list[Delivery] | None:
            rows = sorted(await service.store.list_deliveries(), key=lambda d: d.action_index)
            statuses = [d.status for d in rows]
            done = statuses == [DeliveryStatus.DEAD] + [DeliveryStatus.SKIPPED] * 2
            return rows if done else None

        link, mail, copy = await until(skipped, "both dependents skipped")
    assert data["delivery"] == link.id == delivery_id(RULE, 0, link.event_id)
    assert data["dependents"] == [
        {"delivery": mail.id, "action": "email", "action_index": 1, "target": mail.target},
        {"delivery": copy.id, "action": "email", "action_index": 2, "target": copy.target},
    ]
    assert sink.messages == []
