"""The SSRF guard: https only and public addresses only, unless ``allow_private``."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from billnotify.actions.base import UnsafeDestinationError
from billnotify.actions.ssrf import BlockedAddressError, GuardedResolver, check_url, is_public
from billnotify.actions.webhook import WebhookExecutor
from billnotify.config.models import Rule, WebhookAction, WebhookEndpoint
from billnotify.deliveries.base import Outcome
from billnotify.events import CloudEvent
from billnotify.templating import TemplateRenderer
from servers import WebhookReceiver

SECRET = "whsec_" + base64.b64encode(b"x" * 32).decode()
RULE = Rule.model_validate(
    {"name": "r", "on": ["*"], "actions": [{"type": "webhook", "endpoint": "ops"}]}
)
ACTION = WebhookAction(type="webhook", endpoint="ops")
EVENT = CloudEvent(
    id="evt_1",
    source="billnotify://acme",
    type="invoice.paid",
    subject="invoices/1",
    time="2026-11-21T10:15:02Z",
    data={"object": {"id": "1"}},
)


async def attempt(tmp_path: Path, url: str, *, allow_private: bool) -> tuple[Outcome, str]:
    hook = WebhookEndpoint.model_validate(
        {
            "name": "ops",
            "url": url,
            "secret": SECRET,
            "allow_private": allow_private,
            "timeout": "3s",
        }
    )
    executor = WebhookExecutor([hook], TemplateRenderer(tmp_path))
    try:
        result = await executor.execute(ACTION, EVENT, RULE, delivery_id="dlv_1", attempt=1)
    finally:
        await executor.close()
    return result.outcome, result.error or ""


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "[::1]", "localhost", "[::ffff:127.0.0.1]"],
)
async def test_loopback_is_refused_unless_allowed(
    tmp_path: Path, receiver: WebhookReceiver, host: str
) -> None:
    outcome, error = await attempt(
        tmp_path, f"https://{host}:{receiver.port}/ok", allow_private=False
    )
    assert outcome is Outcome.PERMANENT
    assert "refusing" in error and "allow_private" in error
    assert receiver.hits == []


async def test_a_name_resolving_to_loopback_is_refused_at_connect_time(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    # "localhost" passes the URL check (it is a name); the connector's resolver refuses it
    check_url(f"https://localhost:{receiver.port}/ok", allow_private=False)
    outcome, error = await attempt(
        tmp_path, f"https://localhost:{receiver.port}/ok", allow_private=False
    )
    assert outcome is Outcome.PERMANENT
    assert "resolves to non-public address" in error


@pytest.mark.parametrize(
    "url",
    [
        "https://10.1.2.3/hook",
        "https://192.168.1.10/hook",
        "https://172.16.0.1/hook",
        "https://100.64.0.1/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://0.0.0.0/hook",
        "https://[fd00::1]/hook",
        "https://[fe80::1]/hook",
        "https://224.0.0.1/hook",
    ],
)
async def test_private_addresses_are_refused_before_connecting(tmp_path: Path, url: str) -> None:
    outcome, error = await attempt(tmp_path, url, allow_private=False)
    assert outcome is Outcome.PERMANENT
    assert "not a public address" in error


async def test_plain_http_is_refused_unless_allowed(tmp_path: Path) -> None:
    outcome, error = await attempt(tmp_path, "http://hooks.example.com/x", allow_private=False)
    assert outcome is Outcome.PERMANENT
    assert "must be https" in error


async def test_allow_private_permits_loopback_names_and_http(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    outcome, error = await attempt(
        tmp_path, receiver.url("/ok", host="localhost"), allow_private=True
    )
    assert outcome is Outcome.SUCCESS, error
    assert len(receiver.hits) == 1


@pytest.mark.parametrize("host", ["127.1", "2130706433", "0x7f.1", "017700000001", "0x7f000001"])
@pytest.mark.parametrize("allow_private", [False, True])
async def test_a_non_canonical_ipv4_host_is_refused_once_never_retried(
    tmp_path: Path, receiver: WebhookReceiver, host: str, allow_private: bool
) -> None:
    # each of these means 127.0.0.1 to inet_aton; aiohttp refuses some of them as invalid
    # URLs, which used to read as a connection failure and be retried until dead
    outcome, error = await attempt(
        tmp_path, f"https://{host}:{receiver.port}/ok", allow_private=allow_private
    )
    assert outcome is Outcome.PERMANENT
    assert f"refusing {host}: not a canonical IPv4 address (it means 127.0.0.1)" in error
    assert receiver.hits == []


def test_check_url_accepts_public_https() -> None:
    check_url("https://hooks.example.com/x", allow_private=False)
    check_url("https://8.8.8.8/x", allow_private=False)
    with pytest.raises(UnsafeDestinationError):
        check_url("ftp://example.com/x", allow_private=True)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("1.1.1.1", True),
        ("2001:4860:4860::8888", True),
        ("127.0.0.1", False),
        ("127.8.9.10", False),
        ("10.0.0.1", False),
        ("172.31.255.255", False),
        ("192.168.0.1", False),
        ("100.64.0.1", False),
        ("100.127.255.254", False),
        ("169.254.169.254", False),
        ("0.0.0.0", False),
        ("255.255.255.255", False),
        ("240.0.0.1", False),
        ("224.0.0.251", False),
        ("::1", False),
        ("::", False),
        ("fd12:3456::1", False),
        ("fe80::1%eth0", False),
        ("ff02::1", False),
        ("::ffff:10.0.0.1", False),
        ("::ffff:8.8.8.8", True),
        ("64:ff9b::7f00:1", False),
        ("2002:7f00:1::", False),
        ("2002:808:808::", True),
        ("not an address", False),
    ],
)
def test_is_public(address: str, public: bool) -> None:
    assert is_public(address) is public


async def test_the_guarded_resolver_refuses_loopback_answers() -> None:
    resolver = GuardedResolver()
    try:
        with pytest.raises(BlockedAddressError) as caught:
            await resolver.resolve("localhost", 443)
    finally:
        await resolver.close()
    assert caught.value.host == "localhost"
    assert all(not is_public(a) for a in caught.value.addresses)
