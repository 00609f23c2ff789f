"""What each console page shows and each console action does.

Pages read the store (and the running service, for the overview and rule previews);
actions are the CLI's operator functions (``cli/commands.py``: retry, resolve, enable an
endpoint, replay), recorded as done by the session's operator.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

from aiohttp import web

from billnotify.cli import commands
from billnotify.cli.endpoints import endpoint_rows
from billnotify.console.auth import Session
from billnotify.console.delivery_view import kept_answer, runs_after
from billnotify.console.overview import lease_line, read_overview
from billnotify.deliveries.base import DeliveryStatus
from billnotify.store.records import Delivery, StoredEvent

if TYPE_CHECKING:
    from billnotify.console.site import Console

SCAN = 5000
"""How many of the newest events the events page filters (and the rules page offers)."""
SHOWN = 200
"""Rows a list page shows at most."""
MAX_REASON = 500
"""Characters of an operator's reason kept."""


def _reason(form: Mapping[str, str]) -> str:
    return " ".join(form.get("reason", "").split())[:MAX_REASON]


class Pages:
    """The console's pages and actions over one :class:`~billnotify.console.site.Console`."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.store = console.store
        self.config = console.config

    # -- overview --------------------------------------------------------------------
    async def overview(self, _request: web.Request, session: Session) -> web.StreamResponse:
        """Sources, MQTT, deliveries by status, instances and leases; live."""
        now = self.console.clock()
        overview = await read_overview(
            self.store, self.console.running, now, self.config.service.lease_ttl
        )
        return self.console.render(
            "overview.html.j2",
            session,
            page="overview",
            overview=overview,
            leases=[lease_line(lease, now) for lease in overview.leases],
            live=True,
        )

    # -- events ----------------------------------------------------------------------
    async def _newest(self, count: int = SCAN) -> list[StoredEvent]:
        after = max(0, await self.store.last_seq() - count)
        found: list[StoredEvent] = []
        while len(found) < count and (page := await self.store.read_events(after, count)):
            found += page  # a store may answer short of ``count`` (EventLog.read_events)
            after = page[-1].seq
        return list(reversed(found[-count:]))

    async def events(self, request: web.Request, session: Session) -> web.StreamResponse:
        """The newest events, filtered by type glob, source and object id."""
        type_glob = request.query.get("type", "").strip()
        source = request.query.get("source", "").strip()
        object_id = request.query.get("object", "").strip()
        newest = await self._newest()
        shown = [
            s
            for s in newest
            if (not type_glob or fnmatch.fnmatchcase(s.event.type, type_glob))
            and (not source or s.event.source_name == source)
            and (not object_id or s.event.object_id == object_id)
        ][:SHOWN]
        return self.console.render(
            "events.html.j2",
            session,
            page="events",
            events=shown,
            filters={"type": type_glob, "source": source, "object": object_id},
            filtered=bool(type_glob or source or object_id),
            sources=sorted({s.name for s in self.config.sources}),
            after=newest[0].seq if newest else 0,
            live=True,
        )

    async def event(self, request: web.Request, session: Session) -> web.StreamResponse:
        """One event: its CloudEvent JSON, its deliveries, replay."""
        event_id = request.match_info["id"]
        found = await self.store.get_events([event_id])
        if not found:
            return self.console.render("missing.html.j2", session, 404, what=f"event {event_id}")
        stored = found[0]
        pretty = json.dumps(json.loads(stored.event.to_json()), indent=2, ensure_ascii=False)
        deliveries = [
            d for d in await self.store.list_deliveries(limit=SCAN) if d.event_id == event_id
        ]
        return self.console.render(
            "event.html.j2",
            session,
            page="events",
            stored=stored,
            pretty=pretty,
            deliveries=deliveries,
            actions=await self.store.operator_actions(event_id),
            mqtt=self.console.running is not None and self.console.running.publisher is not None,
        )

    async def replay(
        self, request: web.Request, session: Session, form: Mapping[str, str]
    ) -> tuple[str, str]:
        """Replay one event to the rules (deliveries the rules call for and that do not
        exist yet) or to MQTT."""
        event_id = request.match_info["id"]
        back = f"/events/{event_id}"
        found = await self.store.get_events([event_id])
        running = self.console.running
        parts = running.components if running is not None else None
        if not found:
            return back, "no such event"
        if parts is None:
            return back, "the service is still starting: try again in a moment"
        now, reason = self.console.clock(), _reason(form)
        if form.get("to") == "mqtt":
            if parts.publisher is None:
                return back, "MQTT is not enabled"
            count = await parts.publisher.republish(found)
            done = f"to MQTT: {count} re-published"
        else:
            done = str(await commands.replay_to_rules(parts.rules, found))
        await commands.record_replay(self.store, found, done, now, who=session.who, reason=reason)
        return back, f"replayed {done}"

    # -- deliveries ------------------------------------------------------------------
    async def deliveries(self, request: web.Request, session: Session) -> web.StreamResponse:
        """The ledger, filtered by status, rule and endpoint."""
        status = request.query.get("status", "").strip()
        rule = request.query.get("rule", "").strip()
        endpoint = request.query.get("endpoint", "").strip()
        try:
            statuses = commands.statuses_for(status or None)
        except ValueError as exc:
            statuses, error = None, str(exc)
        else:
            error = ""
        rows = [] if error else await self.store.list_deliveries(statuses, limit=SCAN)
        shown = [
            d
            for d in rows
            if (not rule or d.rule == rule) and (not endpoint or _goes_to(d, endpoint))
        ][:SHOWN]
        return self.console.render(
            "deliveries.html.j2",
            session,
            status=400 if error else 200,
            page="deliveries",
            deliveries=shown,
            error=error,
            filters={"status": status, "rule": rule, "endpoint": endpoint},
            statuses=["failed", *(s.value for s in DeliveryStatus)],
            rules=[r.name for r in self.config.rules],
            endpoints=[w.name for w in self.config.webhooks],
            live=True,
        )

    async def delivery(self, request: web.Request, session: Session) -> web.StreamResponse:
        """One delivery: every attempt with its error, operator actions, retry, resolve."""
        delivery_id = request.match_info["id"]
        delivery = await self.store.get_delivery(delivery_id)
        if delivery is None:
            return self.console.render(
                "missing.html.j2", session, 404, what=f"delivery {delivery_id}"
            )
        return self.console.render(
            "delivery.html.j2",
            session,
            page="deliveries",
            d=delivery,
            actions=await self.store.operator_actions(delivery_id),
            result=await kept_answer(self.store, delivery),  # SPEC §7.5
            chain=await runs_after(self.config, self.store, delivery),
            retryable=delivery.status in commands.RETRYABLE,
            uncertain=delivery.status is DeliveryStatus.UNCERTAIN,
        )

    async def retry(
        self, request: web.Request, session: Session, form: Mapping[str, str]
    ) -> tuple[str, str]:
        """Send a failed, dead or uncertain delivery again."""
        delivery_id = request.match_info["id"]
        (result,) = await commands.retry_deliveries(
            self.store, [delivery_id], self.console.clock(), who=session.who, reason=_reason(form)
        )
        return f"/deliveries/{delivery_id}", f"retry: {result.message}"

    async def resolve(
        self, request: web.Request, session: Session, form: Mapping[str, str]
    ) -> tuple[str, str]:
        """Settle an uncertain delivery as sent or not sent, with a reason."""
        delivery_id = request.match_info["id"]
        back = f"/deliveries/{delivery_id}"
        outcome, reason = form.get("outcome"), _reason(form)
        if outcome not in ("sent", "not_sent"):
            return back, "resolve: choose sent or not sent"
        if not reason:
            return back, "resolve: say why (the reason is kept on record)"
        result = await commands.resolve_delivery(
            self.store,
            delivery_id,
            outcome == "sent",
            self.console.clock(),
            who=session.who,
            reason=reason,
        )
        return back, f"resolve: {result.message}"

    # -- endpoints -------------------------------------------------------------------
    async def endpoints(self, _request: web.Request, session: Session) -> web.StreamResponse:
        """Every webhook endpoint, the ones a 410 disabled with a button to re-enable
        (the rows ``billnotify endpoints`` lists)."""
        rows = await endpoint_rows(self.config, self.store)
        return self.console.render("endpoints.html.j2", session, page="endpoints", rows=rows)

    async def enable(
        self, request: web.Request, session: Session, form: Mapping[str, str]
    ) -> tuple[str, str]:
        """Re-enable an endpoint that a ``410 Gone`` disabled."""
        name = request.match_info["name"]
        result = await commands.enable_endpoint(
            self.store, name, self.console.clock(), who=session.who, reason=_reason(form)
        )
        return "/endpoints", f"{name}: {result.message}"

    # -- rules -----------------------------------------------------------------------
    async def rules(self, request: web.Request, session: Session) -> web.StreamResponse:
        """Every rule; for a chosen rule and event, what each action would send."""
        rule_name = request.query.get("rule", "").strip()
        event_id = request.query.get("event", "").strip()
        recent = (await self._newest(50))[:50]
        preview = None
        problem = ""
        running = self.console.running
        parts = running.components if running is not None else None
        if rule_name and event_id:
            found = await self.store.get_events([event_id])
            if rule_name not in {r.name for r in self.config.rules}:
                problem = f"no rule named {rule_name!r}"
            elif not found:
                problem = f"no event {event_id!r} in the log"
            elif parts is None:
                problem = "the service is still starting: try again in a moment"
            else:
                report = await commands.render_report(
                    self.config,
                    parts.actions.renderer,
                    parts.actions.executors,
                    rule_name,
                    found[0].event,
                )
                preview = {
                    "rendered": [
                        {
                            "type": r.action_type,
                            "target": r.target,
                            "summary": json.dumps(r.summary, indent=2, default=str),
                        }
                        for r in report.rendered
                    ],
                    "errors": report.errors,
                    "not_firing": report.not_firing,
                }
        return self.console.render(
            "rules.html.j2",
            session,
            page="rules",
            rules=self.config.rules,
            recent=recent,
            chosen={"rule": rule_name, "event": event_id},
            preview=preview,
            problem=problem,
        )


def _goes_to(delivery: Delivery, endpoint: str) -> bool:
    """Whether a delivery goes to webhook endpoint ``endpoint`` (its target names it)."""
    return delivery.action_type == "webhook" and delivery.target == endpoint
