"""Logging: human-readable by default, JSON on request, secrets redacted everywhere."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

REDACTED = "**********"
_NOISY = ("amqtt", "transitions", "passlib", "asyncio", "aiohttp.access", "mail.log")


_FIELDS = ("event_id", "delivery_id", "rule", "source", "event_type", "endpoint", "resource")
"""What a JSON log line carries as fields of its own, wherever it applies."""

_context: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("billnotify_log_context")


@contextlib.contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Attach ``fields`` (``event_id``, ``delivery_id``, ``rule``, ``source``) to every
    log line written inside the block, by this task and the tasks it starts.

    An explicit ``extra={...}`` on one call wins over the context.
    """
    unknown = set(fields) - set(_FIELDS)
    if unknown:
        raise TypeError(f"unknown log fields: {sorted(unknown)}")
    merged = {**_context.get({}), **{k: v for k, v in fields.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


class Redactor:
    """Replaces known secret values in text (longest first, so overlaps redact fully)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Register more secret values (short ones are ignored: too many false hits)."""
        found = {s for s in secrets if s and len(s) >= 4}
        # Also the spellings a secret takes once escaped by json.dumps or %r, so a JSON
        # log line or a repr() of a value never shows it either.
        found |= {json.dumps(s)[1:-1] for s in found} | {repr(s)[1:-1] for s in found}
        merged = set(self._secrets) | found
        self._secrets = sorted(merged, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text


class _TextFormatter(logging.Formatter):
    def __init__(self, redact: Redactor) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        return self._redact(super().format(record))


class _JsonFormatter(logging.Formatter):
    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = _context.get({})
        for key in _FIELDS:
            value = getattr(record, key, None)
            if value is None:
                value = context.get(key)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return self._redact(json.dumps(entry, ensure_ascii=False, default=str))


def setup_logging(level: str = "info", fmt: str = "text", secrets: Iterable[str] = ()) -> Redactor:
    """Configure the root logger; returns the redactor so more secrets can be added."""
    redact = Redactor(secrets)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter(redact) if fmt == "json" else _TextFormatter(redact))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in _NOISY:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    return redact
