"""Inbound platform webhooks (SPEC §7.3): who may ask for an immediate poll.

A source accepts ``POST /hooks/<name>`` only when it has a ``hook_secret``. A ``whsec_``
secret means Standard Webhooks: ``webhook-id``, ``webhook-timestamp`` (within five
minutes of now) and ``webhook-signature`` (space-separated ``v1,<base64>`` values, any of
which may match, as during a key rotation) over ``{id}.{timestamp}.{body}``. Any other
secret is expected as ``Authorization: Bearer <secret>``. Comparisons take constant
time. The body is only signed over, never read as data: a hook is a hint to poll, and
the poll reads the API.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from billnotify.actions.signing import SECRET_PREFIX, Signer, signing_key
from billnotify.secrets import Secret

MAX_BODY = 64 * 1024
"""The largest body a hook may carry, in bytes."""
TOLERANCE = 5 * 60
"""How far ``webhook-timestamp`` may be from now, in seconds, either way."""


class HookAuth(Protocol):
    """What one source expects of a hook request."""

    needs_body: bool
    """Whether :meth:`refusal` needs the body (a signature), or the headers suffice."""

    def refusal(self, headers: Mapping[str, str], body: bytes) -> str | None:
        """Why the request is refused (safe to log: never the secret), or None."""


def _same(expected: bytes, given: str) -> bool:
    return hmac.compare_digest(expected, given.encode("utf-8", "surrogateescape"))


class BearerAuth:
    """``Authorization: Bearer <secret>``.

    Args:
        secret: the token the platform sends.
    """

    needs_body = False

    def __init__(self, secret: Secret) -> None:
        self._token = secret.reveal().encode("utf-8")

    def refusal(self, headers: Mapping[str, str], body: bytes) -> str | None:
        """See :class:`HookAuth`."""
        scheme, _, token = headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token:
            return "no bearer token"
        if not _same(self._token, token.strip()):
            return "wrong bearer token"
        return None


class SignatureAuth:
    """Standard Webhooks signatures with a ``whsec_`` secret.

    Args:
        secret: the ``whsec_<base64>`` secret shared with the platform.
        clock: Unix time now (tests inject one).
    """

    needs_body = True

    def __init__(self, secret: Secret, *, clock: Callable[[], float] = time.time) -> None:
        self._signer = Signer(signing_key(secret))
        self._clock = clock

    def refusal(self, headers: Mapping[str, str], body: bytes) -> str | None:
        """See :class:`HookAuth`."""
        message_id = headers.get("webhook-id", "")
        stamp = headers.get("webhook-timestamp", "")
        signatures = headers.get("webhook-signature", "")
        if not (message_id and stamp and signatures):
            return "missing webhook-id, webhook-timestamp or webhook-signature"
        if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
            return "webhook-timestamp is not Unix seconds"
        timestamp = int(stamp)
        if abs(self._clock() - timestamp) > TOLERANCE:
            return "webhook-timestamp is more than 5 minutes away from now"
        try:
            expected = self._signer.sign(message_id, timestamp, body).encode("ascii")
        except UnicodeEncodeError:
            return "webhook-id is not UTF-8"
        # Compare every candidate, so the time taken says nothing about which one matched.
        matched = False
        for candidate in signatures.split():
            if candidate.startswith("v1,"):
                matched |= _same(expected, candidate)
        return None if matched else "no matching v1 signature"


def hook_auth(secret: Secret, *, clock: Callable[[], float] = time.time) -> HookAuth:
    """The check a ``hook_secret`` asks for: a signature for ``whsec_``, else a token."""
    if secret.reveal().startswith(SECRET_PREFIX):
        return SignatureAuth(secret, clock=clock)
    return BearerAuth(secret)
