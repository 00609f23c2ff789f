"""What ``billnotify endpoints`` lists (SPEC §7.4: re-enabling is an operator's act).

Every configured webhook endpoint, and any the state still holds disabled that the
config no longer names, with whether a ``410 Gone`` disabled it, why and when. *When* is
the moment the attempt that got the 410 ended (the delivery its reason names); it is
unknown when that delivery is gone. Re-enabling is
:func:`billnotify.cli.commands.enable_endpoint`, the console's own function.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from billnotify.config.models import Config
from billnotify.events import format_time
from billnotify.store.base import Store
from billnotify.store.records import Delivery, OperatorAction

_DELIVERY_ID = re.compile(r"\bdlv_[0-9a-f]+\b")
"""The delivery a disabling's reason names (``410 Gone on delivery dlv_…``)."""
ACTIONS_SHOWN = 5
"""Operator actions listed per endpoint (``--json``), as many as the console shows."""


@dataclass(frozen=True)
class EndpointRow:
    """One webhook endpoint as ``billnotify endpoints`` shows it.

    Attributes:
        name: the endpoint's name.
        url: its URL without query or user info (either may hold a token); empty when
            the config no longer names it.
        configured: the config names it.
        disabled: why it is disabled, or None when it is enabled.
        disabled_at: when the 410 came (None: enabled, or not known).
        delivery: the delivery that got the 410, when the reason names one.
        actions: what operators last did to it (re-enabled it), newest first.
    """

    name: str
    url: str
    configured: bool
    disabled: str | None = None
    disabled_at: datetime | None = None
    delivery: str | None = None
    actions: tuple[OperatorAction, ...] = ()

    @property
    def enabled(self) -> bool:
        """Deliveries go to it."""
        return self.disabled is None

    def to_json(self) -> dict[str, Any]:
        """The row as ``--json`` prints it."""
        return {
            "name": self.name,
            "url": self.url,
            "configured": self.configured,
            "enabled": self.enabled,
            "disabled_reason": self.disabled,
            "disabled_at": format_time(self.disabled_at) if self.disabled_at else None,
            "delivery": self.delivery,
            "operator_actions": [
                {
                    "at": format_time(a.at),
                    "who": a.who,
                    "action": a.action,
                    "reason": a.reason,
                    "result": a.result,
                }
                for a in self.actions
            ],
        }


def shown_url(url: str) -> str:
    """A webhook URL without its query and user info (either may hold a token)."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"


async def endpoint_rows(config: Config, store: Store) -> list[EndpointRow]:
    """The configured endpoints in config order, then disabled ones it no longer names."""
    disabled = await store.disabled_endpoints()
    urls = {w.name: shown_url(w.url) for w in config.webhooks}
    names = [*urls, *sorted(set(disabled) - set(urls))]
    rows: list[EndpointRow] = []
    for name in names:
        reason = disabled.get(name)
        found = _DELIVERY_ID.search(reason) if reason is not None else None
        delivery = found.group(0) if found else None
        at = _gone_at(await store.get_delivery(delivery)) if delivery else None
        actions = tuple(await store.operator_actions(name, limit=ACTIONS_SHOWN))
        url = urls.get(name, "")
        rows.append(EndpointRow(name, url, name in urls, reason, at, delivery, actions))
    return rows


def _gone_at(delivery: Delivery | None) -> datetime | None:
    """When the attempt of ``delivery`` that got the ``410 Gone`` ended."""
    if delivery is None:
        return None
    gone = [a for a in delivery.history if a.status_code == 410]
    if gone:
        return gone[-1].finished_at or gone[-1].started_at
    return delivery.updated_at if delivery.last_status_code == 410 else None


def format_endpoints(rows: Sequence[EndpointRow]) -> str:
    """A plain-text table of endpoints for the terminal."""
    header = ("NAME", "STATE", "SINCE", "URL", "WHY")
    table = [header]
    for row in rows:
        state = "enabled" if row.enabled else "disabled"
        if not row.configured:
            state += " (not configured)"
        since = format_time(row.disabled_at) if row.disabled_at else ""
        table.append((row.name, state, since, row.url, row.disabled or ""))
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in table
    )
