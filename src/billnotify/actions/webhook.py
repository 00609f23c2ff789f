"""Signed webhook deliveries (SPEC §4 ``webhook``, §4.1).

One ``POST`` per attempt: the body is the CloudEvent JSON, or the endpoint action's
``body`` template rendered with its ``content_type``; the Standard Webhooks headers are
computed per attempt (same ``webhook-id``, fresh timestamp and signature). Redirects are
not followed. The whole attempt (resolve, connect, send, read the status and at most
:data:`MAX_RESPONSE_BYTES` of the body) runs under one deadline, the endpoint's
``timeout``, so a receiver that drips its answer cannot hold a worker.

Each endpoint gets its own :class:`aiohttp.ClientSession` (connection pooling), created
on first use and guarded by :class:`~billnotify.actions.ssrf.GuardedResolver` unless the
endpoint sets ``allow_private``. What every attempt to an endpoint shares (its signing
key, URL check, fixed headers, deadline) is worked out once, on its first attempt.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from billnotify import __version__
from billnotify.actions.base import (
    InvalidMessageError,
    NotApplicableError,
    Rendered,
    SendFailedError,
    UnsafeDestinationError,
    classify,
    failure,
)
from billnotify.actions.signing import Signer, signing_key
from billnotify.actions.ssrf import GuardedResolver, blocked_cause, check_url
from billnotify.clients.codec import parse_retry_after
from billnotify.config.models import Action, Rule, WebhookAction, WebhookEndpoint
from billnotify.deliveries.base import AttemptResult, Outcome
from billnotify.digests import default_body
from billnotify.events import CloudEvent
from billnotify.templating import TemplateRenderer, body_template_name, build_context

logger = logging.getLogger(__name__)

USER_AGENT = f"billnotify/{__version__}"
MAX_RESPONSE_BYTES = 64 * 1024
"""At most this much of a response body is read; the rest is dropped unread."""
_SNIPPET = 1000
_REDACT = ("authorization", "cookie", "token", "secret", "key", "auth", "password")
_RESERVED = frozenset({"webhook-id", "webhook-timestamp", "webhook-signature", "content-type"})


@dataclass(frozen=True, slots=True)
class _Target:
    """What every attempt to one endpoint (with one content type) shares.

    Attributes:
        unsafe: why the URL is refused (each attempt fails with it), if it is.
        invalid: why a configured header is refused, if one is.
        headers: the fixed headers (without the three signature headers).
        deadline: seconds the whole attempt may take (connect, send, read the status
            and the body).
    """

    endpoint: WebhookEndpoint
    url: URL
    signer: Signer
    headers: dict[str, str]
    deadline: float
    unsafe: str | None
    invalid: str | None


class WebhookExecutor:
    """Delivers ``webhook`` actions to the configured ``[[webhooks]]`` endpoints.

    Args:
        endpoints: the configured endpoints.
        templates: renders ``body`` templates.
        clock: wall clock in Unix seconds (``webhook-timestamp``, HTTP-date
            ``Retry-After``).
        max_response_bytes: cap on the response body read.
        connections_per_endpoint: connection pool size of each endpoint.
    """

    action_type = "webhook"

    def __init__(
        self,
        endpoints: Iterable[WebhookEndpoint],
        templates: TemplateRenderer,
        *,
        clock: Callable[[], float] = time.time,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        connections_per_endpoint: int = 100,
    ) -> None:
        self._endpoints = {endpoint.name: endpoint for endpoint in endpoints}
        self._keys = {name: signing_key(e.secret) for name, e in self._endpoints.items()}
        self._targets: dict[tuple[str, str], _Target] = {}
        self._templates = templates
        self._clock = clock
        self._max_bytes = max_response_bytes
        self._limit = connections_per_endpoint
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    # -- the executor interface --------------------------------------------------------

    def exactly_once(self, action: Action) -> bool:
        """Webhooks are operator alerts: retried, duplicates acceptable."""
        return False

    def target(self, action: Action, event: CloudEvent) -> str:
        """The endpoint's name."""
        return action.endpoint if isinstance(action, WebhookAction) else ""

    def fixed_target(self, action: Action) -> str | None:
        """The endpoint's name: the target does not depend on the event."""
        return action.endpoint if isinstance(action, WebhookAction) else ""

    async def render(self, action: Action, event: CloudEvent, rule: Rule) -> Rendered:
        """The request an attempt would send (without the per-attempt signature)."""
        webhook = _webhook(action)
        endpoint = self._endpoint(webhook)
        body, content_type = self._body(webhook, event, rule)
        headers = {
            name: "**********" if any(word in name.lower() for word in _REDACT) else value
            for name, value in self._headers(endpoint, content_type).items()
        }
        summary = {
            "endpoint": endpoint.name,
            "method": "POST",
            "url": endpoint.url,
            "headers": headers,
            "signed": "webhook-id (the delivery id), webhook-timestamp, webhook-signature",
            "body": body.decode("utf-8", errors="replace"),
        }
        return Rendered(self.action_type, endpoint.name, summary)

    async def execute(
        self, action: Action, event: CloudEvent, rule: Rule, *, delivery_id: str, attempt: int
    ) -> AttemptResult:
        """POST the signed body once; every failure becomes the returned result."""
        try:
            webhook = _webhook(action)
            endpoint = self._endpoint(webhook)
            body, content_type = self._body(webhook, event, rule)
            target = self._target(endpoint, content_type)
            if target.unsafe is not None:
                raise UnsafeDestinationError(target.unsafe)
            if target.invalid is not None:
                raise InvalidMessageError(target.invalid)
            result = await self._post(target, body, delivery_id)
        except Exception as exc:
            result = failure(exc)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "webhook %s attempt %d: %s %s",
                delivery_id,
                attempt,
                result.outcome,
                result.error or "",
            )
        return result

    async def close(self) -> None:
        """Close every endpoint's session."""
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()

    # -- internals -----------------------------------------------------------------------

    def _endpoint(self, action: WebhookAction) -> WebhookEndpoint:
        try:
            return self._endpoints[action.endpoint]
        except KeyError:
            raise NotApplicableError(f"unknown webhook endpoint {action.endpoint!r}") from None

    def _body(self, action: WebhookAction, event: CloudEvent, rule: Rule) -> tuple[bytes, str]:
        if not action.body:  # the CloudEvent, or a digest's {"group", "count", "events"}
            return default_body(event).encode("utf-8"), action.content_type
        name = body_template_name(action.body)
        text = self._templates.render_file(name, build_context(event, rule))
        return text.encode("utf-8"), action.content_type

    def _headers(self, endpoint: WebhookEndpoint, content_type: str) -> dict[str, str]:
        headers = {k: v for k, v in endpoint.headers.items() if k.lower() not in _RESERVED}
        headers["content-type"] = content_type
        headers.setdefault("user-agent", USER_AGENT)
        for name, value in headers.items():
            if any(c in name + value for c in "\r\n\x00"):
                raise InvalidMessageError(f"header {name!r} contains a line break")
        return headers

    def _target(self, endpoint: WebhookEndpoint, content_type: str) -> _Target:
        target = self._targets.get((endpoint.name, content_type))
        if target is None:
            unsafe = invalid = None
            headers: dict[str, str] = {}
            try:
                check_url(endpoint.url, allow_private=endpoint.allow_private)
            except UnsafeDestinationError as exc:
                unsafe = str(exc)
            try:
                headers = self._headers(endpoint, content_type)
            except InvalidMessageError as exc:
                invalid = str(exc)
            target = _Target(
                endpoint,
                URL(endpoint.url),
                Signer(self._keys[endpoint.name]),
                headers,
                endpoint.timeout.total_seconds(),
                unsafe,
                invalid,
            )
            self._targets[(endpoint.name, content_type)] = target
        return target

    def _session(self, endpoint: WebhookEndpoint) -> aiohttp.ClientSession:
        session = self._sessions.get(endpoint.name)
        if session is None or session.closed:
            resolver = None if endpoint.allow_private else GuardedResolver()
            connector = aiohttp.TCPConnector(resolver=resolver, limit=self._limit, ttl_dns_cache=60)
            session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=None),
                trust_env=False,
            )
            self._sessions[endpoint.name] = session
        return session

    async def _post(self, target: _Target, body: bytes, delivery_id: str) -> AttemptResult:
        timestamp = int(self._clock())
        headers = target.headers.copy()
        headers["webhook-id"] = delivery_id
        headers["webhook-timestamp"] = str(timestamp)
        headers["webhook-signature"] = target.signer.sign(delivery_id, timestamp, body)
        session = self._session(target.endpoint)
        status: int | None = None
        deadline = asyncio.timeout(target.deadline)
        try:
            async with (
                deadline,
                session.post(target.url, data=body, headers=headers, allow_redirects=False) as resp,
            ):
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
                location = resp.headers.get("Location")
                content_type = resp.headers.get("Content-Type", "")
                content = await _read_capped(resp, self._max_bytes)
        except (aiohttp.ClientError, asyncio.IncompleteReadError) as exc:
            blocked = blocked_cause(exc)
            if blocked is not None:
                raise UnsafeDestinationError(str(blocked)) from None
            connecting = isinstance(exc, aiohttp.ClientConnectorError)
            what = "cannot connect" if connecting else "request failed"
            raise SendFailedError(f"{what}: {_describe(exc)}", sent=not connecting) from None
        except TimeoutError:
            if not deadline.expired():
                raise
            got = f" (HTTP {status} received, body unfinished)" if status else ""
            raise SendFailedError(
                f"no complete answer within {target.deadline:g}s{got}", sent=True
            ) from None
        return self._result(status, retry_after, location, content_type, content)

    def _result(
        self,
        status: int,
        retry_after: str | None,
        location: str | None,
        content_type: str,
        content: bytes,
    ) -> AttemptResult:
        outcome = classify(status)
        response = {"status": status, "body": _decode(content, content_type)}
        if outcome is Outcome.SUCCESS:
            return AttemptResult(outcome, status_code=status, response=response)
        if 300 <= status < 400:
            error = f"HTTP {status} to {location or '?'}: redirects are not followed"
        elif status == 410:
            error = "HTTP 410 Gone: the endpoint asked to be disabled"
        else:
            snippet = " ".join(content[:200].decode("utf-8", errors="replace").split())
            error = f"HTTP {status}" + (f": {snippet}" if snippet else "")
        return AttemptResult(
            outcome,
            status_code=status,
            error=error,
            retry_after=parse_retry_after(retry_after, self._clock()),
            disable_endpoint=status == 410,
            response=response,
        )


def _webhook(action: Action) -> WebhookAction:
    if not isinstance(action, WebhookAction):
        raise NotApplicableError(f"not a webhook action: {action.type}")
    return action


async def _read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    length = resp.content_length
    if length is not None and length <= limit:
        return await resp.content.readexactly(length)  # the usual small answer
    chunks: list[bytes] = []
    total = 0
    async for chunk in resp.content.iter_any():
        chunks.append(chunk[: limit - total])
        total += len(chunks[-1])
        if total >= limit:
            break  # the rest is never read; the connection is closed, not reused
    return b"".join(chunks)


def _decode(content: bytes, content_type: str) -> Any:
    if "json" in content_type.lower() and len(content) <= 4 * _SNIPPET:
        try:
            return json.loads(content)
        except ValueError:
            pass
    text = content.decode("utf-8", errors="replace")
    return text if len(text) <= _SNIPPET else text[:_SNIPPET] + "..."


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
