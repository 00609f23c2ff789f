"""Routes of the simulated property billing service (seed 003) and its token endpoint.

``POST /users/authenticate`` returns a bare HS256 JWT (``text/plain``) whose payload
carries ``exp`` = now + ``token_ttl``. Every ``/api/v1`` call needs
``Authorization: Bearer <jwt>`` (missing, bad or expired: 401) and an
``istaAdministratorIds: id1;id2`` header naming a configured administrator (else 403).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import math
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from billnotify.simulator.errors import ApiError, Handler, api_error, error_middleware
from billnotify.simulator.listing import ParamError, parse_date
from billnotify.simulator.pdf import make_pdf
from billnotify.simulator.state import SimState

logger = logging.getLogger(__name__)

DOCUMENT_RE = r"BE\d{8}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class PropertyApi:
    """Token endpoint and ``/api/v1`` routes of the property billing service.

    Args:
        state: Shared simulator state.
        username: Accepted user name.
        password: Accepted password.
        administrator_ids: Ids accepted in ``istaAdministratorIds``.
        token_ttl: Token lifetime in seconds.
        secret: HMAC key for signing tokens.
    """

    def __init__(
        self,
        state: SimState,
        *,
        username: str,
        password: str,
        administrator_ids: Sequence[str],
        token_ttl: float,
        secret: bytes = b"billnotify-simulator",
    ) -> None:
        self.state = state
        self.username = username
        self.password = password
        self.administrator_ids = {str(i) for i in administrator_ids}
        self.token_ttl = token_ttl
        self._secret = secret
        self.tokens_issued = 0

    # -- tokens --------------------------------------------------------------------

    def issue_token(self, subject: str) -> str:
        """Return a signed JWT for ``subject`` expiring ``token_ttl`` seconds from now."""
        now = self.state.clock.now().timestamp()
        self.tokens_issued += 1
        header = {"alg": "HS256", "typ": "JWT"}
        payload = {
            "sub": subject,
            "iat": int(now),
            "exp": math.ceil(now + self.token_ttl),
            "jti": str(self.tokens_issued),
        }
        signing_input = ".".join(
            _b64(json.dumps(part, separators=(",", ":")).encode()) for part in (header, payload)
        )
        signature = hmac.new(self._secret, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64(signature)}"

    def check_token(self, token: str) -> str | None:
        """Return why ``token`` is rejected, or ``None`` when it is valid and unexpired."""
        try:
            signing_input, _, signature = token.rpartition(".")
            expected = hmac.new(self._secret, signing_input.encode(), hashlib.sha256).digest()
            if not signing_input or not hmac.compare_digest(_unb64(signature), expected):
                return "invalid token signature"
            payload = json.loads(_unb64(signing_input.split(".")[1]))
            exp = float(payload["exp"])
        except (ValueError, KeyError, IndexError, TypeError):
            return "malformed token"
        if self.state.clock.now().timestamp() >= exp:
            return "token expired"
        return None

    async def authenticate(self, request: web.Request) -> web.StreamResponse:
        """``POST /users/authenticate`` with ``{"username", "password"}``: a bare JWT."""
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            return api_error(400, "Bad Request", hint='Send {"username": ..., "password": ...}')
        if not isinstance(body, dict):
            return api_error(400, "Bad Request", hint='Send {"username": ..., "password": ...}')
        user, password = body.get("username"), body.get("password")
        if not (
            isinstance(user, str)
            and isinstance(password, str)
            and hmac.compare_digest(user.encode(), self.username.encode())
            and hmac.compare_digest(password.encode(), self.password.encode())
        ):
            logger.info("property billing: authentication refused for %r", user)
            return api_error(401, "Unauthorized", hint="Wrong username or password")
        return web.Response(text=self.issue_token(user), content_type="text/plain")

    # -- /api/v1 -------------------------------------------------------------------

    def app(self) -> web.Application:
        """Build the sub-application (mount it at ``/api/v1``)."""
        app = web.Application(middlewares=[error_middleware(), self._auth_middleware()])
        for path, handler in (
            ("/BillingHeaders/{property}", self.billing_headers),
            ("/Billing/{id}", self.billing),
            ("/BillingDoculment/{doc}", self.document),
            ("/BillingDocument/{doc}", self.document),
        ):
            app.router.add_get(path, handler)
            app.router.add_get(path + "/", handler)
        return app

    def _auth_middleware(self) -> Any:
        @web.middleware
        async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            problem = "missing bearer token" if scheme.lower() != "bearer" else None
            problem = problem or self.check_token(token.strip())
            if problem:
                return api_error(
                    401,
                    "Unauthorized",
                    hint=problem,
                    headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
                )
            ids = request.headers.get("istaAdministratorIds", "")
            given = {part.strip() for part in ids.replace(",", ";").split(";") if part.strip()}
            if not given & self.administrator_ids:
                return api_error(
                    403, "Forbidden", hint="istaAdministratorIds names no administrator"
                )
            return await handler(request)

        return auth

    async def billing_headers(self, request: web.Request) -> web.StreamResponse:
        """``GET BillingHeaders/<propertyUUId>?StartDate=&EndDate=&LastUpdate=``."""
        property_uuid = request.match_info["property"]
        allowed = {"StartDate", "EndDate", "LastUpdate"}
        unknown = sorted(set(request.query) - allowed)
        if unknown:
            raise ApiError(400, "Bad Request", hint=f"Unknown parameter(s): {', '.join(unknown)}")
        try:
            bounds = {n: parse_date(n, request.query[n]) for n in allowed if request.query.get(n)}
        except ParamError as exc:
            raise ApiError(400, "Bad Request", hint=str(exc)) from exc
        headers = []
        for header_id in sorted(self.state.billing_headers):
            header = self.state.billing_headers[header_id]
            if header["propertyUUId"] != property_uuid:
                continue
            start = header["startDate"][:10]
            end = header["endDate"][:10]
            updated = header["updateTimeStamp"][:10]
            if "StartDate" in bounds and start < bounds["StartDate"].isoformat():
                continue
            if "EndDate" in bounds and end > bounds["EndDate"].isoformat():
                continue
            if "LastUpdate" in bounds and updated < bounds["LastUpdate"].isoformat():
                continue
            headers.append(dict(header))
        return web.json_response({"count": len(headers), "billingHeaders": headers})

    async def billing(self, request: web.Request) -> web.StreamResponse:
        """``GET Billing/<id>?includeDeviceConsumptions=true|false``."""
        raw_id = request.match_info["id"]
        flag = request.query.get("includeDeviceConsumptions", "false").lower()
        if flag not in ("true", "false", "1", "0"):
            raise ApiError(400, "Bad Request", hint="includeDeviceConsumptions is true or false")
        if not raw_id.isdigit() or int(raw_id) not in self.state.billing_headers:
            raise ApiError(404, "Not Found", hint=f"No billing with id {raw_id!r}")
        billing = self.state.billing(int(raw_id), include_device_consumptions=flag in ("true", "1"))
        return web.json_response(billing)

    async def document(self, request: web.Request) -> web.StreamResponse:
        """``GET BillingDoculment/<documentId>`` (also ``BillingDocument``): the PDF."""
        doc_id = request.match_info["doc"]
        meta = self.state.documents.get(doc_id)
        if meta is None:
            raise ApiError(404, "Not Found", hint=f"No billing document {doc_id!r}")
        header = self.state.billing_headers.get(meta["billingId"], {})
        pdf = make_pdf(
            f"Billing document {doc_id} ({meta['documentType']})",
            f"Property {header.get('propertyUUId', '?')}",
            f"Period {header.get('startDate', '?')[:10]} - {header.get('endDate', '?')[:10]}",
            f"Unit {meta['unitId']}" if meta["unitId"] else "All units",
        )
        return web.Response(
            body=pdf,
            content_type="application/pdf",
            headers={"Content-Disposition": f'attachment; filename="{doc_id}.pdf"'},
        )
