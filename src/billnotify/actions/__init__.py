"""Action executors: invoice actions, emails, signed webhooks and MQTT messages.

:func:`build_executors` makes one executor per action type from the configuration; the
delivery worker calls them through the :class:`~billnotify.actions.base.ActionExecutor`
interface. :func:`check_actions` lists what ``billnotify check`` should complain about.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from billnotify.actions.base import (
    ActionExecutor,
    DocumentClient,
    InvoiceClient,
    MqttSender,
    Rendered,
    classify,
)
from billnotify.actions.email import EmailExecutor
from billnotify.actions.invoice_action import InvoiceActionExecutor
from billnotify.actions.mqtt import MqttExecutor
from billnotify.actions.webhook import WebhookExecutor
from billnotify.config.action_templates import strings_in
from billnotify.config.models import (
    Config,
    EmailAction,
    InvoiceActionAction,
    MqttAction,
    SmtpConfig,
    WebhookAction,
    WebhookEndpoint,
)
from billnotify.templating import TemplateRenderer


def build_executors(
    smtp: SmtpConfig | None,
    webhooks: Sequence[WebhookEndpoint],
    *,
    billing_clients: Mapping[str, InvoiceClient],
    property_clients: Mapping[str, DocumentClient],
    mqtt: MqttSender | None,
    templates: TemplateRenderer,
    clock: Callable[[], float] = time.time,
    smtp_pool_size: int | None = None,
) -> dict[str, ActionExecutor]:
    """One executor per action type, keyed by type (``webhook``, ``email``, ...).

    Args:
        smtp: the ``[smtp]`` table (None: emails fail as not configured).
        webhooks: the ``[[webhooks]]`` endpoints.
        billing_clients: billing platform clients by source name.
        property_clients: property billing clients by source name.
        mqtt: the broker connection, None when MQTT is disabled.
        templates: the template renderer.
        clock: wall clock in Unix seconds (webhook timestamps, email dates).
        smtp_pool_size: SMTP connections kept open (``[smtp] max_connections`` by default).
    """
    return {
        "invoice_action": InvoiceActionExecutor(billing_clients, templates),
        "email": EmailExecutor(
            smtp,
            templates,
            billing_clients=billing_clients,
            property_clients=property_clients,
            clock=clock,
            pool_size=smtp_pool_size,
        ),
        "webhook": WebhookExecutor(webhooks, templates, clock=clock),
        "mqtt": MqttExecutor(mqtt, templates),
    }


def check_actions(config: Config, templates: TemplateRenderer) -> list[str]:
    """Problems ``billnotify check`` reports about rules' templates and actions.

    Compiles every template file once, then each rule's ``when`` and every inline
    template (recipients, topics, payloads, parameters), and checks that referenced
    email and body templates exist and that emails have an ``[smtp]`` server. Each
    problem is prefixed with the TOML path that refers to it.
    """
    problems = [f"templates: {p}" for p in templates.check()]

    def scan(where: str, **what: Iterable[str]) -> None:
        problems.extend(f"{where}: {p}" for p in templates.check(folder=False, **what))

    for r, rule in enumerate(config.rules):
        if rule.when and rule.when.strip():
            scan(f"rules[{r}].when", expressions=[rule.when])
        for a, action in enumerate(rule.actions):
            where = f"rules[{r}].actions[{a}]"
            if isinstance(action, EmailAction):
                if config.smtp is None:
                    problems.append(f"{where}: an email action needs an [smtp] table")
                scan(f"{where}.template", email_templates=[action.template])
                recipients = [*action.to, *action.cc, *action.bcc]
                scan(f"{where}.to", strings=[*recipients, action.reply_to or ""])
            elif isinstance(action, WebhookAction) and action.body:
                scan(f"{where}.body", body_templates=[action.body])
            elif isinstance(action, MqttAction):
                if not config.mqtt.enabled:
                    problems.append(f"{where}: an mqtt action needs [mqtt] enabled")
                scan(where, strings=[action.topic, action.payload])
            elif isinstance(action, InvoiceActionAction):
                scan(f"{where}.params", strings=strings_in(action.params))
    return problems


if TYPE_CHECKING:
    from billnotify.clients import BillingPlatformClient, PropertyBillingClient

    def _clients_fit(
        billing: BillingPlatformClient, prop: PropertyBillingClient
    ) -> tuple[InvoiceClient, DocumentClient]:
        # mypy proves here that the real clients satisfy the protocols the actions use
        return billing, prop


__all__ = [
    "ActionExecutor",
    "DocumentClient",
    "EmailExecutor",
    "InvoiceActionExecutor",
    "InvoiceClient",
    "MqttExecutor",
    "MqttSender",
    "Rendered",
    "TemplateRenderer",
    "WebhookExecutor",
    "build_executors",
    "check_actions",
    "classify",
]
