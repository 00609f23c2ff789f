"""Fault injection for the simulator, applied per request path prefix.

Kinds:

- ``"500"`` / ``"503"``: an error status with a JSON error body (``503`` carries
  ``Retry-After`` when ``retry_after`` is set);
- ``"429"``: Too Many Requests with ``Retry-After`` (``retry_after`` seconds, default 1;
  fractional values are sent as e.g. ``0.2`` so tests can stay fast);
- ``"malformed"``: the request is handled, then answered ``200`` with the body cut in half;
- ``"slow"``: wait ``delay`` seconds, then handle the request normally;
- ``"reset"``: abort the connection (TCP RST) without handling the request (note that
  aiohttp clients retry an idempotent request once after a reset, so arm ``count=2`` to
  make a GET fail);
- ``"reset_after"``: handle the request (so an action *is* performed), then abort the
  connection before the response is sent.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

from aiohttp import web

logger = logging.getLogger(__name__)

FaultKind = Literal["500", "503", "429", "malformed", "slow", "reset", "reset_after"]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)
CONTROL_PREFIX = "/_sim/"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Fault:
    """One armed fault rule; ``count < 0`` means it never runs out."""

    path_prefix: str
    kind: str
    count: int
    retry_after: float | None
    delay: float
    method: str | None
    fired: int = 0
    after: int = 0
    """Matching requests let through before it fires (a fault in the middle of a listing)."""


def _format_retry_after(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


class Faults:
    """A list of armed fault rules, consulted on every (non-control) request."""

    def __init__(self) -> None:
        self._rules: list[Fault] = []

    def add(
        self,
        path_prefix: str = "",
        kind: FaultKind = "500",
        count: int = 1,
        retry_after: float | None = None,
        delay: float = 0,
        method: str | None = None,
        after: int = 0,
    ) -> None:
        """Arm a fault for the next ``count`` requests whose path starts with ``path_prefix``.

        Args:
            path_prefix: Path prefix to match (``""`` matches every API request).
            kind: What goes wrong (see the module docstring).
            count: How many matching requests it applies to; negative means forever.
            retry_after: Seconds for the ``Retry-After`` header (429, 503).
            delay: Seconds to wait before answering (for ``slow``, and before any other kind).
            method: Only match this HTTP method (any when ``None``).
            after: Let this many matching requests through first.

        Raises:
            ValueError: For an unknown ``kind``.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {FAULT_KINDS}")
        self._rules.append(
            Fault(
                path_prefix,
                kind,
                count,
                retry_after,
                delay,
                method.upper() if method else None,
                after=after,
            )
        )

    def clear(self) -> None:
        """Disarm every fault."""
        self._rules.clear()

    def snapshot(self) -> list[dict[str, Any]]:
        """Return the armed rules as JSON-ready dictionaries."""
        return [asdict(rule) for rule in self._rules]

    def take(self, method: str, path: str) -> Fault | None:
        """Consume and return the first armed fault matching a request, if any."""
        for rule in self._rules:
            if rule.count == 0 or not path.startswith(rule.path_prefix):
                continue
            if rule.method is not None and rule.method != method.upper():
                continue
            if rule.after > 0:
                rule.after -= 1
                continue
            if rule.count > 0:
                rule.count -= 1
            rule.fired += 1
            self._rules = [r for r in self._rules if r.count != 0]
            return rule
        return None

    def middleware(self) -> Any:
        """Return an aiohttp middleware applying the armed faults."""

        @web.middleware
        async def faults_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.path.startswith(CONTROL_PREFIX):
                return await handler(request)
            fault = self.take(request.method, request.path)
            if fault is None:
                return await handler(request)
            logger.info("injecting fault %s on %s %s", fault.kind, request.method, request.path)
            return await _apply(fault, request, handler)

        return faults_middleware


def _error(status: int, message: str, retry_after: float | None) -> web.Response:
    headers = {}
    if retry_after is not None:
        headers["Retry-After"] = _format_retry_after(retry_after)
    body = {"error": message, "error_code": status * 1000, "hint": "Injected fault"}
    return web.json_response(body, status=status, headers=headers)


def _reset(request: web.Request) -> None:
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def _apply(fault: Fault, request: web.Request, handler: Handler) -> web.StreamResponse:
    if fault.delay > 0 and fault.kind != "slow":
        await asyncio.sleep(fault.delay)  # any fault can also come late
    if fault.kind == "500":
        return _error(500, "Internal Server Error", fault.retry_after)
    if fault.kind == "503":
        return _error(503, "Service Unavailable", fault.retry_after)
    if fault.kind == "429":
        return _error(
            429, "Too Many Requests", 1 if fault.retry_after is None else fault.retry_after
        )
    if fault.kind == "slow":
        await asyncio.sleep(fault.delay)
        return await handler(request)
    if fault.kind == "reset":
        _reset(request)
        raise asyncio.CancelledError
    response = await handler(request)
    if fault.kind == "reset_after":
        _reset(request)
        raise asyncio.CancelledError
    # malformed: the real answer, cut short, with a 200 status.
    body = response.body if isinstance(response, web.Response) else b""
    raw = body if isinstance(body, bytes) else b'{"truncated": true, "items": [1, 2'
    return web.Response(
        body=raw[: max(1, len(raw) // 2)],
        status=200,
        content_type=response.content_type or "application/json",
    )
