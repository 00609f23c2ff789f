"""Standard Webhooks signatures (https://www.standardwebhooks.com/).

Each delivery carries ``webhook-id`` (the delivery id, the same on every retry, so
receivers can de-duplicate), ``webhook-timestamp`` (Unix seconds, fresh per attempt) and
``webhook-signature``: ``v1,`` + base64 of HMAC-SHA256 over ``{id}.{timestamp}.{body}``.
The key is the base64-decoded part after ``whsec_``; a secret without that prefix is
used as its UTF-8 bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from billnotify.secrets import Secret

SECRET_PREFIX = "whsec_"


def signing_key(secret: Secret | str) -> bytes:
    """The HMAC key of a webhook secret.

    Raises:
        ValueError: a ``whsec_`` secret whose remainder is not base64.
    """
    raw = secret.reveal() if isinstance(secret, Secret) else secret
    if raw.startswith(SECRET_PREFIX):
        try:
            return base64.b64decode(raw[len(SECRET_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("the part after 'whsec_' is not base64") from None
    return raw.encode("utf-8")


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one attempt: ``v1,<base64 HMAC-SHA256>``."""
    signed = b"%s.%d.%s" % (message_id.encode(), timestamp, body)
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


class Signer:
    """Signs attempts with one key, whose HMAC state is prepared once.

    Args:
        key: the HMAC key (:func:`signing_key`).
    """

    def __init__(self, key: bytes) -> None:
        self._mac = hmac.new(key, digestmod=hashlib.sha256)

    def sign(self, message_id: str, timestamp: int, body: bytes) -> str:
        """:func:`sign` with this signer's key."""
        mac = self._mac.copy()
        mac.update(b"%s.%d." % (message_id.encode(), timestamp))
        mac.update(body)
        return "v1," + base64.b64encode(mac.digest()).decode("ascii")


def signature_headers(key: bytes, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(key, message_id, timestamp, body),
    }
