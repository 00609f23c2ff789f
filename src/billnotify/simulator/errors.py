"""JSON error responses of the simulated APIs.

Every error body is ``{"error", "error_code", "hint"}`` as in seed 002, including
aiohttp's own 404/405 answers, which a middleware rewrites.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def api_error(
    status: int,
    error: str,
    *,
    code: int | None = None,
    hint: str = "",
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """Build a JSON error response.

    Args:
        status: HTTP status.
        error: Short error title.
        code: The platform error code (defaults to ``status * 1000``).
        hint: A human hint.
        headers: Extra response headers.
    """
    body = {"error": error, "error_code": code if code is not None else status * 1000, "hint": hint}
    return web.json_response(body, status=status, headers=dict(headers or {}))


class ApiError(Exception):
    """Raised inside handlers to answer with a JSON error."""

    def __init__(self, status: int, error: str, *, code: int | None = None, hint: str = "") -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.code = code
        self.hint = hint

    def response(self) -> web.Response:
        """Render this error as a response."""
        return api_error(self.status, self.error, code=self.code, hint=self.hint)


def error_middleware() -> Any:
    """Return a middleware turning :class:`ApiError` and aiohttp HTTP errors into JSON."""

    @web.middleware
    async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return exc.response()
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
            return api_error(
                exc.status, exc.reason, hint=f"{request.method} {request.path}", headers=headers
            )

    return json_errors
