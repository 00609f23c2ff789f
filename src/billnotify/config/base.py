"""The base model and shared validators of the configuration tables."""

from __future__ import annotations

import re
from datetime import timedelta
from email.headerregistry import Address
from email.utils import getaddresses
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_LINE_BREAK = re.compile("[\x00\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


class StrictModel(BaseModel):
    """A frozen config table that rejects unknown keys and documents its fields."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, use_attribute_docstrings=True
    )


def check_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(
            "must start with a letter or digit and contain only letters, digits, '_', '.', '-'"
        )
    return value


def check_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


def check_retry_schedule(value: list[timedelta]) -> list[timedelta]:
    if not value:
        raise ValueError("must list at least one attempt")
    return value


def is_templated(value: str) -> bool:
    """Whether a config string is a Jinja template (checked when rendered, not here)."""
    return "{{" in value or "{%" in value


def email_address_problem(value: str, *, single: bool = False) -> str | None:
    """Why a literal header value is not a valid address list, or None.

    Accepts what the email action accepts when it sends: ``a@x``, ``Name <a@x>`` and
    comma-separated lists of them (``single``: exactly one address).
    """
    if _LINE_BREAK.search(value):
        return f"contains a line break: {value!r}"
    found = 0
    for name, spec in getaddresses([value]):
        try:
            if not spec or "@" not in spec or spec.startswith("@") or spec.endswith("@"):
                raise ValueError(spec)
            Address(display_name=name, addr_spec=spec)
        except Exception:
            return f"invalid email address {value!r}"
        found += 1
    if found == 0:
        return f"invalid email address {value!r}"
    if single and found > 1:
        return f"must be one address, not {value!r}"
    return None
