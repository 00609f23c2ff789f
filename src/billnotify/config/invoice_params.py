"""The parameters of seed 002's invoice actions: names, types and allowed values.

One table serves both moments a parameter can be wrong: ``billnotify check`` (a literal
value in ``config.toml``; templated strings wait) and the attempt (the rendered value).
:func:`check_param` also turns a value into what the platform expects on the wire:
whole numbers are sent as JSON numbers (``"72"`` rendered from a template -> ``72``),
UUIDs in their canonical form.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

from billnotify.errors import InvalidParameterError

Kind = Literal["text", "whole", "emails", "names", "uuid"]

_ADDRESS = re.compile(r"^[^@\s,;<>\"]+@[^@\s,;<>\"]+\.[^@\s,;<>\".]{2,}$")
_TEMPLATE = ("{{", "{%")


@dataclass(frozen=True)
class Param:
    """One documented parameter of an invoice action.

    Attributes:
        kind: ``text``; ``whole`` (a whole number); ``emails`` (addresses, as a list or a
            comma/semicolon-separated string); ``names`` (a list or such a string);
            ``uuid``.
        choices: the only values accepted (whole numbers).
        low: the smallest value accepted (whole numbers).
        high: the largest value accepted (whole numbers).
        required: the action fails without it.
    """

    kind: Kind
    choices: tuple[int, ...] = ()
    low: int | None = None
    high: int | None = None
    required: bool = False


EXPIRY_HOURS = (1, 6, 24, 72, 168, 336, 720)
"""Accepted ``expiryHours`` of ``generateDownloadLink``."""
MAX_USES = 2
"""Largest accepted ``maxUses`` of ``generateDownloadLink``."""

PARAMS: Mapping[str, Mapping[str, Param]] = {
    "email": {
        "email": Param("emails"),
        "billStyle": Param("text"),
        "message": Param("text"),
        "attachments": Param("names"),
        "invoiceUsageReportCustomerProfileID": Param("text"),
    },
    "emailCdrs": {"email": Param("emails")},
    "recreate": {},
    "updateCallTransactions": {},
    "reapplyDiscountPlans": {},
    "generateDownloadLink": {
        "expiryHours": Param("whole", choices=EXPIRY_HOURS),
        "maxUses": Param("whole", low=1, high=MAX_USES),
    },
    "linkToXero": {"xeroID": Param("uuid", required=True)},
    "unlinkFromXero": {},
}
"""Action -> its parameters, as seed 002 documents them."""


def is_templated(value: Any) -> bool:
    """Whether a literal holds a Jinja template (checked once rendered)."""
    if isinstance(value, str):
        return any(mark in value for mark in _TEMPLATE)
    if isinstance(value, list):
        return any(is_templated(item) for item in value)
    return False


def param_problems(action: str, params: Mapping[str, Any]) -> dict[str, str]:
    """What is wrong with the literal ``params`` of ``action`` (``billnotify check``).

    Templated values are left for :func:`check_params` at render time.

    Returns:
        parameter name -> problem; empty when all is well.
    """
    problems: dict[str, str] = {}
    for name in params:
        if name not in PARAMS[action]:
            problems[name] = _unknown(action)
    for name, spec in PARAMS[action].items():
        if name not in params:
            if spec.required:
                problems[name] = f"required by {action}"
        elif not is_templated(params[name]):
            try:
                check_param(action, name, params[name])
            except InvalidParameterError as exc:
                problems[name] = exc.problem
    return problems


def check_params(action: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Rendered ``params`` as the platform expects them (numbers as numbers).

    Raises:
        InvalidParameterError: an unknown, missing or invalid parameter (the first one).
    """
    for name in params:
        if name not in PARAMS[action]:
            raise InvalidParameterError(action, name, _unknown(action))
    for name, spec in PARAMS[action].items():
        if spec.required and name not in params:
            raise InvalidParameterError(action, name, f"required by {action}")
    return {name: check_param(action, name, value) for name, value in params.items()}


def check_param(action: str, name: str, value: Any) -> Any:
    """One parameter's value as the platform expects it.

    Raises:
        InvalidParameterError: the value is of the wrong type or not allowed.
    """
    spec = PARAMS[action][name]
    try:
        return _CHECKS[spec.kind](spec, value)
    except ValueError as exc:
        raise InvalidParameterError(action, name, str(exc)) from None


def _unknown(action: str) -> str:
    known = ", ".join(PARAMS[action])
    if not known:
        return f"unknown parameter: {action} takes none"
    return f"unknown parameter of {action} (expected {known})"


def _text(spec: Param, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be text, got {value!r}")
    if not value.strip():
        raise ValueError("is empty (leave the parameter out for the platform's default)")
    return value


def _whole(spec: Param, value: Any) -> int:
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        number = int(value)
    if number is None:
        raise ValueError(f"must be a whole number, got {value!r}")
    if spec.choices and number not in spec.choices:
        allowed = ", ".join(str(c) for c in spec.choices)
        raise ValueError(f"must be one of {allowed}, got {number}")
    if (spec.low is not None and number < spec.low) or (
        spec.high is not None and number > spec.high
    ):
        raise ValueError(f"must be between {spec.low} and {spec.high}, got {number}")
    return number


def _items(value: Any, what: str) -> list[str]:
    if isinstance(value, str):
        items = [part.strip() for part in re.split(r"[,;]", value)]
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        items = [item.strip() for item in value]
    else:
        raise ValueError(f"must be a list of {what} or a comma-separated string, got {value!r}")
    if not any(items):
        raise ValueError("is empty (leave the parameter out for the platform's default)")
    if not all(items):
        raise ValueError(f"has an empty entry: {value!r}")
    return items


def _emails(spec: Param, value: Any) -> list[str] | str:
    for address in _items(value, "email addresses"):
        if not _ADDRESS.match(address):
            raise ValueError(f"{address!r} is not an email address")
    return value if isinstance(value, str) else [item.strip() for item in value]


def _names(spec: Param, value: Any) -> list[str] | str:
    items = _items(value, "names")
    return value if isinstance(value, str) else items


def _uuid(spec: Param, value: Any) -> str:
    if isinstance(value, str):
        try:
            return str(UUID(value.strip()))
        except ValueError:
            pass
    raise ValueError(f"must be a UUID such as 00000000-0000-0000-0000-000000000000, got {value!r}")


_CHECKS = {"text": _text, "whole": _whole, "emails": _emails, "names": _names, "uuid": _uuid}
