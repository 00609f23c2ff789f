"""The action interface, its shared types, and the ONE place outcomes are classified.

An executor turns (action, event, rule) into what would be sent (:meth:`render`) and
sends it (:meth:`execute`). ``execute`` never raises (cancellation aside): each failure
becomes an :class:`AttemptResult` whose outcome comes from :func:`classify`::

    HTTP  2xx success | 3xx permanent (redirects are not followed) | 408, 429, 5xx retryable
          | 410 permanent + disable the endpoint | other 4xx permanent
    SMTP  2xx/3xx success | 4xx retryable | 5xx permanent
    no answer (timeout, connection lost)     retryable, or UNCERTAIN when a customer-facing
                                             request had gone out (it may have been acted on)
    5xx without a documented error code      retryable, or UNCERTAIN for a customer-facing
                                             request (a proxy's 502/504 says nothing of
                                             whether the platform acted; SPEC §4.1)
    5xx with a documented error code         retryable (500601, 500602: the platform says
                                             the email failed, so nothing went out)
    could not connect / nothing sent         retryable
    templates, parameters, URLs, addresses   permanent (refused before sending)

Third-party exceptions are translated into the errors below where they enter (in the
executor modules); ``classify`` only sees billnotify errors and plain Python ones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from billnotify.clients.http import ConnectError
from billnotify.config.models import Action, Rule
from billnotify.deliveries.base import AttemptResult, Outcome
from billnotify.errors import (
    ERROR_CODES,
    ApiError,
    AuthError,
    BusError,
    DeliveryError,
    InvalidParameterError,
    MalformedResponseError,
    NotFoundError,
    RateLimitedError,
    SourceError,
    TemplateError,
    TransportError,
)
from billnotify.events import CloudEvent

logger = logging.getLogger(__name__)

Protocol_ = Literal["http", "smtp"]


@dataclass(frozen=True)
class Rendered:
    """What an action would send (``billnotify render``, dry runs, the ledger).

    Attributes:
        action_type: ``webhook``, ``email``, ``invoice_action`` or ``mqtt``.
        target: where it goes (endpoint name, recipients, invoice and action, topic).
        summary: the request itself, secret-free (no signatures, no passwords).
    """

    action_type: str
    target: str
    summary: dict[str, Any] = field(default_factory=dict)


class ActionExecutor(Protocol):
    """Runs one type of action."""

    action_type: str

    def exactly_once(self, action: Action) -> bool:
        """Whether the action is customer-facing: never performed twice."""
        ...

    def target(self, action: Action, event: CloudEvent) -> str:
        """A human hint of where the action goes (never raises)."""
        ...

    async def render(self, action: Action, event: CloudEvent, rule: Rule) -> Rendered:
        """What :meth:`execute` would send.

        Raises:
            TemplateError: a template failed to render.
        """
        ...

    async def execute(
        self, action: Action, event: CloudEvent, rule: Rule, *, delivery_id: str, attempt: int
    ) -> AttemptResult:
        """Perform one attempt; every failure is returned, never raised."""
        ...

    async def close(self) -> None:
        """Release connections (HTTP sessions, SMTP connections)."""
        ...


def fixed_target(executor: ActionExecutor, action: Action) -> str | None:
    """The executor's target hint for ``action`` when it is the same for every event.

    An executor may offer ``fixed_target(action) -> str | None`` (webhooks: the endpoint
    name); then a delivery can be recorded without parsing its event. None: the target
    depends on the event (ask :meth:`ActionExecutor.target`).
    """
    known: Callable[[Action], str | None] | None = getattr(executor, "fixed_target", None)
    return known(action) if known is not None else None


class Permit(Protocol):
    """What an executor's ``prepare`` step holds for one attempt (a connection)."""

    def release(self) -> None:
        """Give back what the attempt did not use (idempotent; a no-op once it ran)."""
        ...


class Prepare(Protocol):
    """An executor's optional ``prepare`` step (see :func:`preparer`)."""

    async def __call__(
        self, action: Action, event: CloudEvent, rule: Rule, *, delivery_id: str
    ) -> Permit:
        """Make the attempt of ``delivery_id`` ready to leave; never raises."""
        ...


def preparer(executor: ActionExecutor) -> Prepare | None:
    """The executor's ``prepare`` step, if it offers one.

    An executor whose requests queue for something scarce (emails: an SMTP connection)
    may offer ``async prepare(action, event, rule, *, delivery_id) -> Permit``: it does
    all an attempt needs before its request can leave, holds it for the ``execute`` of
    that delivery that follows, and keeps a failure for that ``execute`` to return. The
    worker awaits it for exactly-once deliveries before it records them ``sending``, so
    a crash leaves ``uncertain`` only requests that were leaving, not ones still queued;
    it calls :meth:`Permit.release` once the attempt is over or will not happen.
    """
    found: Prepare | None = getattr(executor, "prepare", None)
    return found


class MqttSender(Protocol):
    """Publishes one message to the broker (the MQTT publisher implements it).

    ``publish`` raises :class:`~billnotify.errors.BusError` when not connected.
    """

    async def publish(
        self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish and wait for the broker's acknowledgement (QoS > 0)."""
        ...


class InvoiceClient(Protocol):
    """What the actions need of ``BillingPlatformClient``."""

    async def invoice_action(
        self, invoice_id: int | str, action: str, params: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """``POST invoices/{id}?action=...``; never retried after the request went out."""
        ...

    async def get_invoice_pdf(self, invoice_id: int | str) -> bytes:
        """The invoice's PDF."""
        ...


class DocumentClient(Protocol):
    """What the actions need of ``PropertyBillingClient``."""

    async def billing(self, billing_id: int | str) -> dict[str, Any]:
        """``Billing/<id>``: a billing with its document references."""
        ...

    async def billing_document(self, document_id: str) -> bytes:
        """One billing document (a PDF)."""
        ...


# -- errors raised inside executors, translated from third-party exceptions -------------


class NotApplicableError(DeliveryError):
    """The action cannot apply to this event or configuration (permanent)."""


class InvalidMessageError(DeliveryError):
    """A rendered header, address or topic is unsafe or invalid (permanent)."""


class UnsafeDestinationError(DeliveryError):
    """The URL is not https, or resolves to a non-public address (permanent)."""


class SendFailedError(DeliveryError):
    """No answer: the connection failed, broke or timed out.

    Attributes:
        sent: the request had (possibly) reached the receiver before the failure, so
            it may have been acted on.
    """

    def __init__(self, message: str, *, sent: bool) -> None:
        self.sent = sent
        super().__init__(message)


class RejectedError(DeliveryError):
    """The receiver answered with an error status or reply code.

    Attributes:
        code: the HTTP status or SMTP reply code (None: a protocol-level refusal, such
            as a missing server extension, which is permanent).
        protocol: ``http`` or ``smtp``; the two read codes differently.
        retry_after: seconds the receiver asked us to wait.
    """

    def __init__(
        self,
        message: str,
        *,
        code: int | None,
        protocol: Protocol_,
        retry_after: float | None = None,
    ) -> None:
        self.code = code
        self.protocol = protocol
        self.retry_after = retry_after
        super().__init__(message)


# -- classification ---------------------------------------------------------------------


def classify(
    cause: int | BaseException, *, protocol: Protocol_ = "http", exactly_once: bool = False
) -> Outcome:
    """The outcome of an attempt from its status code or its failure.

    Args:
        cause: an HTTP status (or an SMTP reply code with ``protocol="smtp"``), or the
            exception the attempt failed with.
        protocol: how to read a numeric ``cause``.
        exactly_once: a customer-facing request was in flight, so a failure without an
            answer is UNCERTAIN rather than retryable.
    """
    if isinstance(cause, int):
        return _classify_code(cause, protocol)
    if isinstance(cause, RejectedError):
        return (
            Outcome.PERMANENT if cause.code is None else _classify_code(cause.code, cause.protocol)
        )
    if isinstance(cause, SendFailedError):
        return Outcome.UNCERTAIN if cause.sent and exactly_once else Outcome.RETRYABLE
    if isinstance(
        cause,
        TemplateError
        | InvalidParameterError
        | InvalidMessageError
        | UnsafeDestinationError
        | NotApplicableError,
    ):
        return Outcome.PERMANENT
    if isinstance(cause, SourceError):
        return _classify_source_error(cause, exactly_once)
    if isinstance(cause, BusError):
        return Outcome.RETRYABLE
    # a bug or an unforeseen failure: never guess "not sent" for a customer-facing request
    return Outcome.UNCERTAIN if exactly_once else Outcome.RETRYABLE


def _classify_code(code: int, protocol: Protocol_) -> Outcome:
    if protocol == "smtp":
        if 200 <= code < 400:
            return Outcome.SUCCESS
        return Outcome.RETRYABLE if 400 <= code < 500 else Outcome.PERMANENT
    if 200 <= code < 300:
        return Outcome.SUCCESS
    if code in (408, 429) or 500 <= code < 600:
        return Outcome.RETRYABLE
    return Outcome.PERMANENT


def _classify_source_error(exc: SourceError, exactly_once: bool) -> Outcome:
    # billing-platform errors (invoice actions, PDF and document downloads)
    if isinstance(exc, RateLimitedError):
        return Outcome.RETRYABLE
    if isinstance(exc, AuthError | NotFoundError):
        return Outcome.PERMANENT
    if isinstance(exc, ApiError):
        if exactly_once and exc.status >= 500 and exc.error_code not in ERROR_CODES:
            # no platform error code: a proxy or a crash answered, perhaps after the
            # platform had acted; retrying blindly could send the customer a second email
            return Outcome.UNCERTAIN
        if exc.retryable or exc.status >= 500 or exc.status in (408, 429):
            return Outcome.RETRYABLE
        return Outcome.PERMANENT
    if isinstance(exc, TransportError):
        if isinstance(exc, ConnectError):  # the connection never opened: nothing was sent
            return Outcome.RETRYABLE
        return Outcome.UNCERTAIN if exactly_once else Outcome.RETRYABLE
    if isinstance(exc, MalformedResponseError):
        # a 2xx with an odd body: the action was most likely performed
        return Outcome.UNCERTAIN if exactly_once else Outcome.RETRYABLE
    return Outcome.RETRYABLE


def failure(
    exc: BaseException, *, protocol: Protocol_ = "http", exactly_once: bool = False
) -> AttemptResult:
    """The :class:`AttemptResult` of an attempt that failed with ``exc``."""
    outcome = classify(exc, protocol=protocol, exactly_once=exactly_once)
    status: int | None = None
    retry_after: float | None = None
    if isinstance(exc, RejectedError):
        status, retry_after = exc.code, exc.retry_after
    elif isinstance(exc, ApiError):
        status = exc.status
        if isinstance(exc, RateLimitedError):
            retry_after = exc.retry_after
    if not isinstance(exc, DeliveryError | SourceError | BusError):
        logger.error("unexpected %s in an action attempt", type(exc).__name__, exc_info=exc)
    return AttemptResult(
        outcome=outcome, status_code=status, error=describe(exc), retry_after=retry_after
    )


def describe(exc: BaseException, limit: int = 500) -> str:
    """A short one-line description of an error for the ledger."""
    text = " ".join(str(exc).split())
    if not text or not isinstance(exc, DeliveryError | SourceError | BusError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
