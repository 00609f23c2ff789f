"""The exception tree of billnotify.

Every error the product raises on purpose derives from :class:`BillnotifyError`.
Third-party exceptions (aiohttp, aiomqtt, aiosmtplib, sqlite) are wrapped where they
enter, so none of them leaks out of its adapter::

    BillnotifyError
    ├── ConfigError(ValueError)            a config.toml that cannot run (carries every issue)
    ├── SecretError(ValueError)            an env:/file: reference that cannot be resolved
    ├── SourceError                        talking to a billing API failed
    │   ├── TransportError                 connection refused/reset, timeout (retryable)
    │   ├── MalformedResponseError         not JSON, wrong shape, too large
    │   ├── AuthError                      401/403 at authentication
    │   └── ApiError                       the API answered with an error status
    │       ├── NotFoundError              404
    │       ├── RateLimitedError           429 (carries retry_after)
    │       ├── ServerError                5xx
    │       └── ActionError                an invoice action's documented error code
    │           ├── ActionNotRecognisedError   400501
    │           ├── ActionFailedError          400502
    │           ├── MissingParametersError     400503
    │           ├── RecreateFailedError        400701
    │           ├── InvalidEmailError          400702
    │           ├── UnknownBillStyleError      400703
    │           ├── UnknownMessageTemplateError 400704
    │           ├── UnknownAttachmentError     400705
    │           ├── UnknownUsageReportError    400706
    │           ├── NoCdrsError                400707
    │           ├── PermissionDeniedError      403xxx
    │           ├── EmailSendingFailedError    500601
    │           ├── CdrEmailSendingFailedError 500602
    │           └── DownloadLinkFailedError    500701
    ├── BusError                           publishing to MQTT failed
    ├── ActionError-like delivery errors:
    │   └── DeliveryError                  an action attempt failed (classified by outcome)
    │       ├── TemplateError              a template failed to render
    │       └── InvalidParameterError(ValueError)  an invoice action parameter the
    │                                      platform would refuse (unknown, wrong type)
    └── StoreError                         the state store cannot be read or written
        └── FencedError                    a write under a lease another instance took over
"""

from __future__ import annotations

from collections.abc import Sequence


class BillnotifyError(Exception):
    """Root of every error billnotify raises on purpose."""


class ConfigError(BillnotifyError, ValueError):
    """The configuration is invalid; ``issues`` lists every problem with its TOML path."""

    def __init__(self, issues: Sequence[str], path: str | None = None) -> None:
        self.issues = list(issues)
        self.path = path
        where = f"{path}: " if path else ""
        super().__init__(
            f"{where}{len(self.issues)} configuration error(s):\n  " + "\n  ".join(self.issues)
        )


class SecretError(BillnotifyError, ValueError):
    """A secret reference (``env:NAME`` / ``file:/path``) cannot be resolved."""


class SourceError(BillnotifyError):
    """Talking to a billing platform failed."""

    retryable: bool = False

    def __init__(self, message: str, *, url: str | None = None) -> None:
        self.url = url
        super().__init__(f"{message} ({url})" if url else message)


class TransportError(SourceError):
    """Connection refused, reset or timed out; worth retrying."""

    retryable = True


class MalformedResponseError(SourceError):
    """The response is not the JSON (or PDF) the docs promise, or exceeds the size cap."""


class AuthError(SourceError):
    """Authentication was refused."""


class ApiError(SourceError):
    """The API answered with an error status.

    Attributes:
        status: the HTTP status code.
        error_code: the platform's numeric ``error_code`` when the body carried one.
        hint: the platform's ``hint`` when present.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        url: str | None = None,
        error_code: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.status = status
        self.error_code = error_code
        self.hint = hint
        detail = f"HTTP {status}"
        if error_code is not None:
            detail += f", error_code {error_code}"
        text = f"{message} [{detail}]"
        if hint:
            text += f" hint: {hint}"
        super().__init__(text, url=url)


class NotFoundError(ApiError):
    """404: the object does not exist."""


class RateLimitedError(ApiError):
    """429: slow down; ``retry_after`` seconds when the server said."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kw)  # type: ignore[arg-type]


class ServerError(ApiError):
    """5xx from the platform; worth retrying."""

    retryable = True


class ActionError(ApiError):
    """An invoice action failed with one of the documented error codes.

    Its text leads with the code and what seed 002 says it means, then the platform's
    hint and its own words: ``400703 unknown bill style: Unknown bill style 'Fancy'
    [HTTP 400: Invalid Action]``.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        url: str | None = None,
        error_code: int | None = None,
        hint: str | None = None,
    ) -> None:
        meaning = error_meaning(error_code) if error_code is not None else None
        if meaning is None:
            super().__init__(message, status=status, url=url, error_code=error_code, hint=hint)
            return
        self.status = status
        self.error_code = error_code
        self.hint = hint
        text = f"{error_code} {meaning}"
        if hint:
            text += f": {hint}"
        text += f" [HTTP {status}: {message}]"
        SourceError.__init__(self, text, url=url)


class ActionNotRecognisedError(ActionError):
    """400501 - Action not recognised."""


class ActionFailedError(ActionError):
    """400502 - Action failed."""


class MissingParametersError(ActionError):
    """400503 - Missing required parameters."""


class RecreateFailedError(ActionError):
    """400701 - Recreate failed."""


class InvalidEmailError(ActionError):
    """400702 - Invalid email address."""


class UnknownBillStyleError(ActionError):
    """400703 - Unknown bill style."""


class UnknownMessageTemplateError(ActionError):
    """400704 - Unknown message template."""


class UnknownAttachmentError(ActionError):
    """400705 - Unknown attachment."""


class UnknownUsageReportError(ActionError):
    """400706 - Unknown usage report profile."""


class NoCdrsError(ActionError):
    """400707 - No CDRs available for this invoice."""


class PermissionDeniedError(ActionError):
    """403xxx - Permission denied."""


class EmailSendingFailedError(ActionError):
    """500601 - Email sending failed."""

    retryable = True


class CdrEmailSendingFailedError(ActionError):
    """500602 - CDR email sending failed."""

    retryable = True


class DownloadLinkFailedError(ActionError):
    """500701 - Download link generation failed."""

    retryable = True


ERROR_CODES: dict[int, type[ActionError]] = {
    400501: ActionNotRecognisedError,
    400502: ActionFailedError,
    400503: MissingParametersError,
    400701: RecreateFailedError,
    400702: InvalidEmailError,
    400703: UnknownBillStyleError,
    400704: UnknownMessageTemplateError,
    400705: UnknownAttachmentError,
    400706: UnknownUsageReportError,
    400707: NoCdrsError,
    500601: EmailSendingFailedError,
    500602: CdrEmailSendingFailedError,
    500701: DownloadLinkFailedError,
}


ERROR_MEANINGS: dict[int, str] = {
    400501: "action not recognised",
    400502: "action failed",
    400503: "missing required parameters",
    400701: "recreate failed",
    400702: "invalid email address",
    400703: "unknown bill style",
    400704: "unknown message template",
    400705: "unknown attachment",
    400706: "unknown usage report profile",
    400707: "no CDRs available for this invoice",
    500601: "email sending failed",
    500602: "CDR email sending failed",
    500701: "download link generation failed",
}
"""What each documented ``error_code`` means (seed 002's table)."""


def error_meaning(error_code: int) -> str | None:
    """Seed 002's meaning of an ``error_code`` (403xxx: permission denied), or None."""
    if 403000 <= error_code <= 403999:
        return "permission denied"
    return ERROR_MEANINGS.get(error_code)


def action_error_class(error_code: int) -> type[ActionError]:
    """Return the typed error for a documented ``error_code`` (403xxx included)."""
    if 403000 <= error_code <= 403999:
        return PermissionDeniedError
    return ERROR_CODES.get(error_code, ActionError)


class BusError(BillnotifyError):
    """Publishing to MQTT failed."""


class DeliveryError(BillnotifyError):
    """An action attempt failed."""


class TemplateError(DeliveryError):
    """A template failed to compile or render."""


class InvalidParameterError(DeliveryError, ValueError):
    """An invoice action parameter the platform would refuse (permanent).

    Attributes:
        action: the invoice action (``generateDownloadLink``).
        param: the parameter's name (``expiryHours``).
        problem: what is wrong, without the names (``must be a whole number, got 'x'``).
    """

    def __init__(self, action: str, param: str, problem: str) -> None:
        self.action = action
        self.param = param
        self.problem = problem
        super().__init__(f"invoice_action {action} param {param}: {problem}")


class StoreError(BillnotifyError):
    """The state store cannot be read or written."""


class FencedError(StoreError):
    """A write made under a lease that another instance has taken since: nothing was
    written (a paused ex-holder must not write stale state)."""
