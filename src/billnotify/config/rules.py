"""``[[rules]]`` and their ``[[rules.actions]]`` (SPEC §4)."""

from __future__ import annotations

import fnmatch
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from billnotify.config.base import StrictModel, check_name
from billnotify.config.chains import chain_problems
from billnotify.config.groups import GroupPath, check_interval, check_wait, group_problems
from billnotify.config.invoice_params import param_problems
from billnotify.config.types import EVENT_TYPES, NOTICE_TYPES, Duration


class _ActionBase(StrictModel):
    dry_run: bool | None = None
    """Override the rule's / service's dry run for this action."""
    id: str | None = None
    """Names the action, so that a later one can run ``after`` it and read ``results.<id>``."""
    after: str | None = None
    """Run only once the action of this rule with this ``id`` succeeded (chained actions)."""


class InvoiceActionAction(_ActionBase):
    """``type = "invoice_action"``: one of seed 002's actions on the event's invoice."""

    type: Literal["invoice_action"]
    action: Literal[
        "email",
        "emailCdrs",
        "recreate",
        "updateCallTransactions",
        "reapplyDiscountPlans",
        "generateDownloadLink",
        "linkToXero",
        "unlinkFromXero",
    ]
    """One of the eight actions of seed 002."""
    params: dict[str, Any] = {}
    """Action parameters; string values are Jinja templates."""
    source: str | None = None
    """The billing_platform source to call (default: the event's source)."""

    @model_validator(mode="after")
    def _check_params(self) -> InvoiceActionAction:
        problems = param_problems(self.action, self.params)
        if problems:
            raise ValidationError.from_exception_data(
                "params",
                [
                    InitErrorDetails(
                        type=PydanticCustomError("invoice_param", problem),
                        loc=("params", name),
                        input=self.params,
                    )
                    for name, problem in problems.items()
                ],
            )
        return self


class EmailAction(_ActionBase):
    """``type = "email"``: an SMTP email rendered from templates."""

    type: Literal["email"]
    to: list[str] = Field(min_length=1)
    """Recipients (Jinja strings allowed)."""
    cc: list[str] = []
    """Cc recipients."""
    bcc: list[str] = []
    """Bcc recipients."""
    reply_to: str | None = None
    """Reply-To address."""
    template: str
    """Base name: ``templates/<template>.{subject,txt,html}.j2``."""
    attach: list[Literal["invoice_pdf", "billing_documents"]] = []
    """PDFs to fetch and attach."""
    at_least_once: bool = False
    """An operator alert: retry after a crash rather than wait for an operator."""


class WebhookAction(_ActionBase):
    """``type = "webhook"``: a signed POST to a ``[[webhooks]]`` endpoint."""

    type: Literal["webhook"]
    endpoint: str
    """Name of a ``[[webhooks]]`` entry."""
    body: str | None = None
    """Template name (``templates/<body>.j2``) for the body; the CloudEvent when unset."""
    content_type: str = "application/json"
    """Content-Type of a rendered body."""


class MqttAction(_ActionBase):
    """``type = "mqtt"``: publish a rendered payload to a rendered topic."""

    type: Literal["mqtt"]
    topic: str
    """Topic (a Jinja string)."""
    payload: str = "{{ event | tojson }}"
    """Payload (a Jinja string)."""
    qos: Literal[0, 1, 2] = 1
    """QoS of the message."""
    retain: bool = False
    """Publish retained."""


Action = Annotated[
    InvoiceActionAction | EmailAction | WebhookAction | MqttAction, Field(discriminator="type")
]


class Rule(StrictModel):
    """``[[rules]]``: which events trigger which actions."""

    name: str
    """Rule name (part of every delivery's identity: renaming re-delivers)."""
    on: list[str] = Field(min_length=1)
    """Event type globs: ``"invoice.*"``, ``"billing_task.status_changed"``, ``"*"``."""
    when: str | None = None
    """Jinja expression that must be true, e.g. ``event.data.object.status == 'Failed'``."""
    actions: list[Action] = Field(min_length=1)
    """What to do (tables below)."""
    dry_run: bool = False
    """Render and record, send nothing, for this rule."""
    enabled: bool = True
    """Switch the rule off without deleting it."""
    sources: list[str] = []
    """Only events of these sources (all when empty)."""
    mute: list[str] = []
    """Names of ``[[mute_windows]]``: a delivery of any of the rule's actions that falls
    due inside one waits until it ends (customer-facing invoice actions too)."""
    mute_action: Literal["defer", "drop"] = "defer"
    """``drop``: a delivery falling due inside a mute window is recorded ``muted`` and
    never sent, instead of waiting."""
    group_by: list[GroupPath] | None = None
    """Send one digest per group instead of one delivery per event: dotted paths into the
    template context (``source``, ``object.billingTaskType``); ``[]`` is one group."""
    group_wait: Duration | None = None
    """How long a new group collects events before its first digest (``30s`` when grouped)."""
    group_interval: Duration | None = None
    """Then at most one digest per group this often, with the events since the last
    (``5m`` when grouped)."""

    _name_ok = field_validator("name")(check_name)
    _wait_ok = field_validator("group_wait")(check_wait)
    _interval_ok = field_validator("group_interval")(check_interval)

    @model_validator(mode="after")
    def _check_grouping(self) -> Rule:
        problems = group_problems(self.actions) if self.grouped else []
        if problems:
            raise ValidationError.from_exception_data(
                "grouping",
                [
                    InitErrorDetails(
                        type=PydanticCustomError("grouping", message), loc=loc, input=value
                    )
                    for loc, message, value in problems
                ],
            )
        return self

    @model_validator(mode="after")
    def _check_chains(self) -> Rule:
        problems = chain_problems(self.actions, grouped=self.grouped)
        if problems:
            raise ValidationError.from_exception_data(
                "chains",
                [
                    InitErrorDetails(
                        type=PydanticCustomError("chain", message), loc=loc, input=self.name
                    )
                    for loc, message in problems
                ],
            )
        return self

    @property
    def grouped(self) -> bool:
        """Whether the rule sends digests (it sets ``group_by``, ``group_wait`` or
        ``group_interval``)."""
        return not (
            self.group_by is None and self.group_wait is None and self.group_interval is None
        )

    @field_validator("on")
    @classmethod
    def _check_globs(cls, value: list[str]) -> list[str]:
        for glob in value:
            if not any(fnmatch.fnmatchcase(t, glob) for t in (*EVENT_TYPES, *NOTICE_TYPES)):
                raise ValueError(
                    f"{glob!r} matches no event type (e.g. 'invoice.*', 'billing_task.created', '*')"
                )
        return value

    def matches(self, event_type: str) -> bool:
        """Whether an event type matches one of the rule's globs."""
        return any(fnmatch.fnmatchcase(event_type, glob) for glob in self.on)
