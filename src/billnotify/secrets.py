"""Secret values that never print themselves.

A config value ``"env:NAME"`` reads the environment variable ``NAME``; ``"file:/path"``
reads a file (trailing newline stripped). Anything else is taken literally, which
``billnotify check`` warns about for keys meant to hold secrets. With the validation
context ``{"resolve_secrets": False}`` references stay unread (:class:`UnresolvedSecret`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

from billnotify.errors import SecretError

_REDACTED = "**********"


class Secret:
    """A secret string; ``str()``, ``repr()`` and JSON dumps show only asterisks.

    Call :meth:`reveal` at the one place that needs the value (an auth header,
    an HMAC key).
    """

    __slots__ = ("_reference", "_value")

    def __init__(self, value: str, reference: str | None = None) -> None:
        self._value = value
        self._reference = reference

    @classmethod
    def resolve(cls, reference: str, *, base_dir: Path | None = None) -> Secret:
        """Resolve ``env:NAME``, ``file:/path`` or a literal into a secret.

        Raises:
            SecretError: the variable is unset or the file unreadable.
        """
        if reference.startswith("env:"):
            name = reference[4:]
            if not name:
                raise SecretError("empty environment variable name in 'env:'")
            value = os.environ.get(name)
            if value is None:
                raise SecretError(f"environment variable {name} is not set")
            return cls(value, reference)
        if reference.startswith("file:"):
            path = Path(reference[5:]).expanduser()
            if base_dir is not None and not path.is_absolute():
                path = base_dir / path
            try:
                value = path.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise SecretError(f"cannot read secret file {path}: {exc.strerror}") from None
            return cls(value, reference)
        return cls(reference, None)

    def reveal(self) -> str:
        """Return the secret value itself."""
        return self._value

    @property
    def resolved(self) -> bool:
        """False for a reference left unread (a command that uses no secret)."""
        return True

    @property
    def reference(self) -> str | None:
        """The ``env:``/``file:`` reference it came from, or None for a literal."""
        return self._reference

    def __str__(self) -> str:
        return _REDACTED

    def __repr__(self) -> str:
        return f"Secret({self._reference or _REDACTED!s})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        def validate(value: Any, info: core_schema.ValidationInfo) -> Secret:
            if isinstance(value, Secret):
                return value
            if not isinstance(value, str):
                raise ValueError("must be a string: a value, 'env:NAME' or 'file:/path'")
            context = info.context if isinstance(info.context, dict) else {}
            if context.get("resolve_secrets") is False and value.startswith(("env:", "file:")):
                return UnresolvedSecret("", value)
            base_dir = context.get("base_dir")
            try:
                return cls.resolve(value, base_dir=Path(base_dir) if base_dir else None)
            except SecretError as exc:
                raise ValueError(str(exc)) from None

        return core_schema.with_info_plain_validator_function(
            validate,
            serialization=core_schema.plain_serializer_function_ser_schema(lambda s: str(s)),
        )


class UnresolvedSecret(Secret):
    """An ``env:``/``file:`` reference that was not read: config loaded for a command
    that needs no secret (``events``, ``deliveries``, ``status``). Using it is an error."""

    __slots__ = ()

    def reveal(self) -> str:
        """Refuse: the value was never read.

        Raises:
            SecretError: always.
        """
        raise SecretError(f"secret {self.reference} was not read (this command uses no secrets)")

    @property
    def resolved(self) -> bool:
        """Always False."""
        return False
