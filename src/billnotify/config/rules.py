"""``[[rules]]`` and their ``[[rules.actions]]`` (SPEC §4)."""

from __future__ import annotations

import fnmatch
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from billnotify.config.base import StrictModel, check_name
from billnotify.config.invoice_params import param_problems
from billnotify.config.types import EVENT_TYPES, NOTICE_TYPES


class _ActionBase(StrictModel):
    dry_run: bool | None = None
    """Override the rule's / service's dry run for this action."""


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

    _name_ok = field_validator("name")(check_name)

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
