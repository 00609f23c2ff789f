"""A small JSON-over-HTTP transport shared by the billing API clients.

It owns everything the two APIs have in common: joining paths onto a base URL, timeouts,
retries with exponential backoff and full jitter, ``429`` + ``Retry-After``, a cap on the
response size, turning error bodies into typed exceptions, and wrapping every aiohttp
exception so none leaks out.

Retry policy: a request marked ``retry=True`` (the default for ``GET``/``HEAD``) is retried
on 5xx, connection errors and timeouts. Any request, side effects or not, is retried on
``429`` (the server refused it, so nothing happened) and when the connection could not even
be opened (nothing was sent). Everything else is raised at once, so a ``POST`` whose outcome
is unknown reaches the caller, who decides.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Self

import aiohttp
from multidict import CIMultiDictProxy

from billnotify import __version__, jsontext
from billnotify.clients.codec import (
    describe_body,
    error_for,
    json_default,
    parse_retry_after,
)
from billnotify.errors import MalformedResponseError, TransportError

logger = logging.getLogger(__name__)

DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024
_ERROR_BODY_BYTES = 64 * 1024

Sleep = Callable[[float], Awaitable[Any]]
Clock = Callable[[], float]


class ConnectError(TransportError):
    """The connection could not be opened, so the request was never sent."""


class Authenticator(Protocol):
    """Supplies per-request auth headers and learns when they were refused."""

    async def headers(self) -> Mapping[str, str]:
        """Return the headers that authenticate the next request."""
        ...

    async def invalidate(self, used: Mapping[str, str]) -> bool:
        """Forget the credentials in ``used``: the server answered 401 to them.

        Returns:
            True when fresh credentials can be had, so the request is worth repeating.
        """
        ...


class BearerAuth:
    """A static ``Authorization: Bearer KEY`` header."""

    def __init__(self, token: str) -> None:
        self._headers = {"Authorization": f"Bearer {token}"}

    async def headers(self) -> Mapping[str, str]:
        """Return the bearer header."""
        return self._headers

    async def invalidate(self, used: Mapping[str, str]) -> bool:
        """A static key cannot be renewed; the 401 surfaces as :class:`AuthError`."""
        return False


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A fully read response."""

    status: int
    url: str
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def content_type(self) -> str:
        """The media type without parameters, lower-cased ('' when absent)."""
        return self.headers.get("Content-Type", "").split(";")[0].strip().lower()

    def snippet(self) -> str:
        """The start of the body, for error messages."""
        return describe_body(self.body)

    def json(self) -> Any:
        """Decode the body as JSON.

        Raises:
            MalformedResponseError: the body is not JSON; says what was received.
        """
        try:
            return jsontext.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            ctype = self.content_type or "no content type"
            raise MalformedResponseError(
                f"expected JSON, got HTTP {self.status} {ctype}: {self.snippet()}", url=self.url
            ) from None


class JsonTransport:
    """Sends requests relative to a base URL; retries, caps and maps errors.

    Args:
        base_url: prefix for relative paths; absolute ``http(s)://`` paths are used as-is.
        auth: supplies auth headers; a 401 invalidates them and retries once.
        session: an aiohttp session to share; otherwise one is created and owned.
        timeout: total seconds per attempt (connect + send + read).
        sock_read: seconds allowed between two reads; defaults to ``timeout``.
        max_attempts: attempts per request, the first one included.
        backoff_base: first backoff ceiling in seconds; doubled per attempt.
        backoff_max: backoff ceiling.
        max_retry_after: a longer ``Retry-After`` is raised as :class:`RateLimitedError`
            instead of waited for.
        max_response_bytes: larger bodies raise :class:`MalformedResponseError`.
        sleep: coroutine used between attempts (injectable for tests).
        rng: random source for jitter (injectable for tests).
        clock: wall clock for HTTP-date ``Retry-After`` values.
        headers: extra headers sent with every request.
    """

    def __init__(
        self,
        base_url: str,
        *,
        auth: Authenticator | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 30.0,
        sock_read: float | None = None,
        max_attempts: int = 5,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        max_retry_after: float = 300.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        clock: Clock = time.time,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.base_url = base_url.rstrip("/") + "/"
        self.auth = auth
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self.max_response_bytes = max_response_bytes
        self.last_date: str | None = None
        """The `Date` header of the last response: the server's clock."""
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_read=sock_read or timeout)
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._clock = clock
        self._headers = {"User-Agent": f"billnotify/{__version__}", **(headers or {})}
        self._session = session
        self._owns_session = session is None

    def url_for(self, path: str) -> str:
        """Join ``path`` onto the base URL (absolute URLs pass through)."""
        if path.startswith(("http://", "https://")):
            return path
        return self.base_url + path.lstrip("/")

    async def close(self) -> None:
        """Close the session if this transport created it."""
        if self._session is not None and self._owns_session:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            if not self._owns_session:
                raise TransportError("the shared aiohttp session is closed")
            self._session = aiohttp.ClientSession()
        return self._session

    def backoff(self, attempt: int) -> float:
        """Full-jitter delay after failed attempt number ``attempt`` (1-based)."""
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        return self._rng.uniform(0.0, ceiling)

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        retry: bool | None = None,
        max_bytes: int | None = None,
        anonymous: bool = False,
    ) -> HttpResponse:
        """Send a request and return the response once its status is below 400.

        Args:
            method: HTTP method.
            path: path relative to the base URL, or an absolute URL.
            params: query parameters, already formatted.
            json_body: a body to send as JSON (omitted when None).
            headers: extra headers for this request.
            retry: retry on 5xx / connection errors / timeouts; defaults to True only for
                ``GET`` and ``HEAD``. Pass False for requests with side effects.
            max_bytes: response size cap for this request.
            anonymous: send no auth headers (for the authentication request itself).

        Raises:
            TransportError: connection failed or timed out on the last attempt.
            MalformedResponseError: the body exceeds the size cap.
            ApiError: an error status (typed by status and ``error_code``).
            AuthError: 401 (after one re-authentication) or 403 without an error code.
        """
        url = self.url_for(path)
        method = method.upper()
        retry = method in ("GET", "HEAD") if retry is None else retry
        data = None
        base = dict(self._headers)
        if json_body is not None:
            data = json.dumps(json_body, default=json_default).encode()
            base["Content-Type"] = "application/json"
        base.update(headers or {})
        cap = self.max_response_bytes if max_bytes is None else max_bytes
        attempt = 0
        reauthenticated = False
        auth = None if anonymous else self.auth
        while True:
            attempt += 1
            auth_headers: Mapping[str, str] = await auth.headers() if auth else {}
            try:
                resp = await self._send(method, url, params, data, {**base, **auth_headers}, cap)
            except TransportError as exc:
                if attempt < self.max_attempts and (retry or isinstance(exc, ConnectError)):
                    await self._pause(method, url, str(exc), attempt, self.backoff(attempt))
                    continue
                raise
            # The platform's own clock: pollers take their cursors from it.
            self.last_date = resp.headers.get("Date") or self.last_date
            if resp.status < 400:
                logger.debug("%s %s -> %d (%d bytes)", method, url, resp.status, len(resp.body))
                return resp
            if resp.status == 401 and auth is not None and not reauthenticated:
                reauthenticated = True
                if await auth.invalidate(auth_headers):
                    logger.info("%s %s -> 401; authenticating again", method, url)
                    attempt -= 1
                    continue
            retry_after = parse_retry_after(resp.headers.get("Retry-After"), self._clock())
            error = error_for(resp, retry_after)
            if attempt >= self.max_attempts or not error.retryable:
                raise error
            if resp.status == 429:
                if retry_after is not None and retry_after > self.max_retry_after:
                    raise error
                delay = self.backoff(attempt) if retry_after is None else retry_after
            elif retry:
                delay = self.backoff(attempt)
            else:
                raise error
            await self._pause(method, url, f"HTTP {resp.status}", attempt, delay)

    async def request_json(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        retry: bool | None = None,
    ) -> Any:
        """Like :meth:`request` with ``Accept: application/json``; returns the decoded body.

        Raises:
            MalformedResponseError: the body is not JSON (names the URL and what came).
        """
        headers = {"Accept": "application/json"}
        resp = await self.request(
            method, path, params=params, json_body=json_body, headers=headers, retry=retry
        )
        return resp.json()

    async def _pause(self, method: str, url: str, reason: str, attempt: int, delay: float) -> None:
        logger.warning(
            "%s %s failed (%s); attempt %d of %d, retrying in %.2fs",
            method,
            url,
            reason,
            attempt,
            self.max_attempts,
            delay,
        )
        await self._sleep(delay)

    async def _send(
        self,
        method: str,
        url: str,
        params: Mapping[str, str] | None,
        data: bytes | None,
        headers: Mapping[str, str],
        cap: int,
    ) -> HttpResponse:
        session = self._get_session()
        try:
            async with session.request(
                method,
                url,
                params=params,
                data=data,
                headers=headers,
                timeout=self._timeout,
                raise_for_status=False,  # statuses are mapped here, even on a shared session
            ) as resp:
                limit = cap if resp.status < 400 else _ERROR_BODY_BYTES
                body = await _read_capped(resp, limit, truncate=resp.status >= 400)
                return HttpResponse(resp.status, str(resp.url), resp.headers, body)
        except _TooLarge as exc:
            raise MalformedResponseError(
                f"response exceeds the size cap of {cap} bytes ({exc})", url=url
            ) from None
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise ConnectError(f"cannot connect: {_describe(exc)}", url=url) from exc
        except TimeoutError as exc:
            limits = f"total {self._timeout.total}s, read {self._timeout.sock_read}s"
            raise TransportError(f"timed out ({limits})", url=url) from exc
        except aiohttp.ClientError as exc:
            raise TransportError(f"request failed: {_describe(exc)}", url=url) from exc


class _TooLarge(Exception):
    pass


async def _read_capped(resp: aiohttp.ClientResponse, limit: int, *, truncate: bool) -> bytes:
    length = resp.content_length
    if length is not None and length > limit and not truncate:
        raise _TooLarge(f"Content-Length {length}")
    chunks: list[bytes] = []
    total = 0
    async for chunk in resp.content.iter_chunked(256 * 1024):
        total += len(chunk)
        if total > limit:
            if truncate:
                chunks.append(chunk[: limit - (total - len(chunk))])
                break
            raise _TooLarge(f"more than {limit} bytes received")
        chunks.append(chunk)
    return b"".join(chunks)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class TransportClient:
    """``async with`` and :meth:`close` for a client built on one :class:`JsonTransport`."""

    transport: JsonTransport

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session if the client created it."""
        await self.transport.close()
