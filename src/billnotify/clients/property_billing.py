"""Client for the property billing API (seed 003): billing headers, billings, documents.

Authentication is ``POST auth_url {"username", "password"}``, which answers with a raw JWT.
Tokens live minutes, so :class:`TokenAuth` reads the token's ``exp`` (the signature is not
ours to verify), renews it ahead of expiry, and once more when a call answers 401. Every
call carries ``Authorization: Bearer <jwt>`` and ``istaAdministratorIds: id1;id2``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import re
import time
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

import aiohttp
from pydantic import Field

from billnotify.clients.billing_models import Day, Record, Text
from billnotify.clients.codec import segment, single_record
from billnotify.clients.http import (
    DEFAULT_MAX_RESPONSE_BYTES,
    Clock,
    HttpResponse,
    JsonTransport,
    Sleep,
    TransportClient,
)
from billnotify.errors import AuthError, MalformedResponseError
from billnotify.secrets import Secret

logger = logging.getLogger(__name__)

DEFAULT_TOKEN_TTL = 300.0
"""Assumed token lifetime when the JWT carries no usable ``exp``."""
DOCUMENT_ID = re.compile(r"\bBE\d{8}\b")
"""Billing document references look like ``BE12345678``."""

_TOKEN_KEYS = ("token", "access_token", "accessToken", "jwt", "id_token")
_HEADER_SAFE = re.compile(r"^[\x21-\x7e]+$")


class BillingHeader(Record):
    """One billing of a property: its period and when it was published."""

    property_uuid: Text = Field(None, alias="propertyUUId")
    start_date: Day = Field(None, alias="startDate")
    end_date: Day = Field(None, alias="endDate")
    update_time_stamp: Text = Field(None, alias="updateTimeStamp")
    """Kept as the exact text (no zone is given); a change means a republication."""


def jwt_claims(token: str) -> dict[str, Any]:
    """The payload claims of a JWT, decoded without verifying the signature ({} if opaque)."""
    parts = token.split(".")
    if len(parts) < 2:
        return {}
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, UnicodeDecodeError):
        return {}
    return claims if isinstance(claims, dict) else {}


def token_lifetime(token: str, now: float, default: float = DEFAULT_TOKEN_TTL) -> float:
    """Seconds the token stays valid from ``now``.

    With both ``iat`` and ``exp`` the lifetime is ``exp - iat``, which does not depend on
    the two clocks agreeing; with only ``exp`` it is ``exp - now``; otherwise ``default``.
    """
    claims = jwt_claims(token)
    exp, iat = claims.get("exp"), claims.get("iat")
    if isinstance(exp, int | float) and not isinstance(exp, bool):
        if isinstance(iat, int | float) and not isinstance(iat, bool) and exp > iat:
            return float(exp - iat)
        if exp > now:
            return float(exp - now)
        logger.warning("token exp lies in the past by our clock; assuming %.0fs", default)
    return default


def _token_from(resp: HttpResponse) -> str:
    text = resp.body.decode("utf-8", errors="replace").strip()
    token: Any = text
    if text.startswith(('"', "{")):
        try:
            token = json.loads(text)
        except ValueError:
            token = None
    if isinstance(token, dict):
        token = next((token[k] for k in _TOKEN_KEYS if isinstance(token.get(k), str)), None)
    if not isinstance(token, str) or not _HEADER_SAFE.match(token.strip()):
        # the body is not echoed: it may hold credentials
        ctype = resp.content_type or "no content type"
        raise MalformedResponseError(
            f"authentication returned no token ({ctype}, {len(resp.body)} bytes)", url=resp.url
        )
    return token.strip()


class TokenAuth:
    """JWT authentication shared by every request of a client (one renewal at a time).

    Args:
        transport: used (anonymously) for the authentication request.
        auth_url: absolute URL of the authentication endpoint.
        username: account name.
        password: account password.
        administrator_ids: sent as ``istaAdministratorIds: id1;id2``.
        clock: wall clock in seconds.
    """

    def __init__(
        self,
        transport: JsonTransport,
        auth_url: str,
        username: Secret | str,
        password: Secret | str,
        administrator_ids: Sequence[str],
        *,
        clock: Clock = time.time,
    ) -> None:
        self._transport = transport
        self._auth_url = auth_url
        self._username = username if isinstance(username, Secret) else Secret(username)
        self._password = password if isinstance(password, Secret) else Secret(password)
        self._admin = ";".join(str(i) for i in administrator_ids)
        self._clock = clock
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._renew_at = 0.0
        self.authentications = 0
        """How many times a token was obtained (for metrics and tests)."""

    def _valid(self) -> str | None:
        return self._token if self._token and self._clock() < self._renew_at else None

    async def token(self) -> str:
        """A valid token; authenticates when there is none or it is about to expire."""
        token = self._valid()
        if token is not None:
            return token
        async with self._lock:
            token = self._valid()
            if token is None:
                token = await self._authenticate()
            return token

    async def headers(self) -> Mapping[str, str]:
        """The headers every property billing call carries."""
        token = await self.token()
        return {"Authorization": f"Bearer {token}", "istaAdministratorIds": self._admin}

    async def invalidate(self, used: Mapping[str, str]) -> bool:
        """Drop the token the server refused (unless another caller already renewed it)."""
        if self._token is not None and used.get("Authorization") == f"Bearer {self._token}":
            self._token = None
        return True

    async def _authenticate(self) -> str:
        body = {"username": self._username.reveal(), "password": self._password.reveal()}
        try:
            resp = await self._transport.request(
                "POST",
                self._auth_url,
                json_body=body,
                headers={"Accept": "application/json, text/plain, */*"},
                retry=True,
                anonymous=True,
            )
        except AuthError as exc:
            raise AuthError("authentication refused for the configured user", url=exc.url) from None
        token = _token_from(resp)
        now = self._clock()
        lifetime = token_lifetime(token, now)
        margin = min(30.0, lifetime * 0.1)
        self._token, self._renew_at = token, now + lifetime - margin
        self.authentications += 1
        logger.info(
            "authenticated; token valid for %.0fs, renewing after %.0fs",
            lifetime,
            lifetime - margin,
        )
        return token


def _day(value: date | str | None) -> str | None:
    if isinstance(value, datetime):
        value = value.date()
    return value.isoformat() if isinstance(value, date) else value


def find_document_ids(billing: Any) -> list[str]:
    """Every ``BExxxxxxxx`` document reference in a billing, in order of appearance."""
    text = json.dumps(billing, default=str)
    return list(dict.fromkeys(DOCUMENT_ID.findall(text)))


class PropertyBillingClient(TransportClient):
    """Typed async client for the property billing API.

    Args:
        base_url: e.g. ``https://HOST/api/v1``.
        auth_url: the authentication endpoint (absolute URL).
        username: account name.
        password: account password.
        administrator_ids: ids sent in ``istaAdministratorIds``.
        session: an aiohttp session to share (not closed by :meth:`close`).
        timeout: seconds per attempt.
        max_attempts: attempts per request.
        sleep: coroutine used for backoff.
        clock: wall clock used for token expiry.
        document_path: path of the document endpoint (the docs spell it ``BillingDoculment``).
        rng: jitter source.
        max_response_bytes: response size cap.
    """

    def __init__(
        self,
        base_url: str,
        auth_url: str,
        username: Secret | str,
        password: Secret | str,
        administrator_ids: Sequence[str],
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 30.0,
        max_attempts: int = 5,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.time,
        document_path: str = "BillingDoculment",
        rng: random.Random | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        if isinstance(administrator_ids, str):
            administrator_ids = [administrator_ids]
        if not administrator_ids:
            raise ValueError("at least one administrator id is required")
        self.document_path = document_path.strip("/")
        self.transport = JsonTransport(
            base_url,
            session=session,
            timeout=timeout,
            max_attempts=max_attempts,
            sleep=sleep,
            rng=rng,
            clock=clock,
            max_response_bytes=max_response_bytes,
        )
        self.auth = TokenAuth(
            self.transport, auth_url, username, password, administrator_ids, clock=clock
        )
        self.transport.auth = self.auth

    async def billing_headers(
        self,
        property_uuid: str,
        *,
        start_date: date | str | None = None,
        end_date: date | str | None = None,
        last_update: date | str | None = None,
    ) -> list[BillingHeader]:
        """The billings available for a property, optionally filtered (dates are days).

        Raises:
            MalformedResponseError: the body is not ``{"count", "billingHeaders": [...]}``.
        """
        params = {"StartDate": _day(start_date), "EndDate": _day(end_date)}
        params["LastUpdate"] = _day(last_update)
        resp = await self.transport.request(
            "GET",
            f"BillingHeaders/{segment(property_uuid)}",
            params={k: v for k, v in params.items() if v is not None},
            headers={"Accept": "application/json"},
        )
        if not resp.body.strip():
            return []
        data = resp.json()
        items = (
            data.get("billingHeaders", data.get("BillingHeaders"))
            if isinstance(data, dict)
            else data
        )
        if not isinstance(items, list):
            raise MalformedResponseError(
                "expected {'count', 'billingHeaders': [...]}", url=resp.url
            )
        headers = []
        for index, item in enumerate(items):
            if not isinstance(item, dict) or item.get("id") in (None, ""):
                raise MalformedResponseError(f"billing header {index} has no id", url=resp.url)
            headers.append(BillingHeader.from_raw(item))
        count = data.get("count") if isinstance(data, dict) else None
        if count is not None and str(count) != str(len(headers)):
            logger.info("count says %s billing headers, body holds %d", count, len(headers))
        return headers

    async def billing(
        self, billing_id: int | str, *, include_device_consumptions: bool = False
    ) -> dict[str, Any]:
        """One billing as returned (its shape is not documented beyond document refs)."""
        resp = await self.transport.request(
            "GET",
            f"Billing/{segment(billing_id)}",
            params={
                "includeDeviceConsumptions": "true" if include_device_consumptions else "false"
            },
            headers={"Accept": "application/json"},
        )
        return single_record(resp.json(), resp.url)

    async def billing_document(self, document_id: str) -> bytes:
        """Download a billing document (``BExxxxxxxx``) as PDF bytes.

        As for invoice PDFs, a body answered as ``application/pdf`` is taken even when
        it does not start with ``%PDF-`` (with a warning naming the document).

        Raises:
            MalformedResponseError: the body is empty, or not a PDF by its bytes or its type.
        """
        if not DOCUMENT_ID.fullmatch(document_id):
            logger.warning("document id %r does not look like BExxxxxxxx", document_id)
        resp = await self.transport.request(
            "GET",
            f"{self.document_path}/{segment(document_id)}",
            headers={"Accept": "application/pdf, application/octet-stream;q=0.9, */*;q=0.1"},
        )
        if not resp.body.startswith(b"%PDF-"):
            ctype = resp.content_type or "no content type"
            if ctype != "application/pdf" or not resp.body:
                raise MalformedResponseError(
                    f"expected a PDF, got {ctype}: {resp.snippet()}", url=resp.url
                )
            logger.warning(
                "billing document %s: application/pdf, %d bytes, starts with %r, not %%PDF-;"
                " used as it is",
                document_id,
                len(resp.body),
                resp.body[:8],
            )
        return resp.body
