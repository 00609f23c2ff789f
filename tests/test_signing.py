"""Standard Webhooks signatures: the spec's vector, whsec_ and raw secrets."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook

from billnotify.actions.signing import Signer, sign, signature_headers, signing_key
from billnotify.secrets import Secret

VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_reference_vector() -> None:
    key = signing_key(VECTOR_SECRET)
    assert sign(key, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE


def test_agrees_with_the_reference_library() -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
    when = datetime(2026, 11, 21, 10, 15, 2, tzinfo=UTC)
    expected = Webhook(secret).sign("dlv_1", when, '{"a": "é"}')
    assert (
        sign(signing_key(secret), "dlv_1", int(when.timestamp()), '{"a": "é"}'.encode()) == expected
    )


def test_secret_objects_are_revealed_only_for_the_key() -> None:
    assert signing_key(Secret(VECTOR_SECRET)) == signing_key(VECTOR_SECRET)


def test_a_raw_secret_is_used_as_utf8_bytes() -> None:
    secret = "not-a-whsec-secret-ünïcode"
    digest = hmac.new(secret.encode(), b"dlv_9.1700000000.body", hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(digest).decode()
    assert sign(signing_key(secret), "dlv_9", 1700000000, b"body") == expected


def test_a_bad_whsec_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="base64"):
        signing_key("whsec_not base64!!")


def test_headers() -> None:
    headers = signature_headers(
        signing_key(VECTOR_SECRET), VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY
    )
    assert headers == {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "webhook-signature": VECTOR_SIGNATURE,
    }


def test_a_signer_signs_as_sign_does_every_time() -> None:
    key = signing_key(VECTOR_SECRET)
    signer = Signer(key)
    for timestamp, body in ((VECTOR_TIMESTAMP, VECTOR_BODY), (1700000001, b"other"), (0, b"")):
        assert signer.sign(VECTOR_ID, timestamp, body) == sign(key, VECTOR_ID, timestamp, body)
    assert signer.sign(VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE
