"""Email over TLS: STARTTLS with authentication, implicit TLS, untrusted certificates."""

from __future__ import annotations

import gc
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from billnotify.actions.email import EmailExecutor
from billnotify.config.models import SmtpConfig
from billnotify.deliveries.base import Outcome
from billnotify.templating import TemplateRenderer
from servers import SmtpSink
from test_email import send, smtp_config, write_templates

# aiosmtpd's TLS transports are sometimes collected unclosed after the server stops (an
# intermittent ResourceWarning raised at GC, not a leak of the code under test).
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture
def make_executor(tmp_path: Path, closing: Any) -> Callable[..., EmailExecutor]:
    write_templates(tmp_path)

    def make(config: SmtpConfig) -> EmailExecutor:
        return closing(EmailExecutor(config, TemplateRenderer(tmp_path)))

    return make


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    ca_file = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return server, ca_file


async def test_starttls_and_authentication(
    make_executor: Any, tls_files: tuple[ssl.SSLContext, Path]
) -> None:
    server_ctx, ca_file = tls_files
    sink = SmtpSink(starttls=server_ctx, credentials=("billing", "s3cret")).start()
    common = {"starttls": True, "ca_file": str(ca_file), "username": "billing"}
    try:
        good = await send(make_executor(smtp_config(sink.port, password="s3cret", **common)))
        bad = await send(make_executor(smtp_config(sink.port, password="wrong", **common)))
    finally:
        sink.stop()
    assert good.outcome is Outcome.SUCCESS, good.error
    assert sink.logins == ["billing"]
    assert bad.outcome is Outcome.PERMANENT
    assert bad.status_code == 535
    assert "wrong" not in (bad.error or "")


async def test_implicit_tls(make_executor: Any, tls_files: tuple[ssl.SSLContext, Path]) -> None:
    server_ctx, ca_file = tls_files
    sink = SmtpSink(tls=server_ctx).start()
    try:
        result = await send(make_executor(smtp_config(sink.port, tls=True, ca_file=str(ca_file))))
    finally:
        sink.stop()
    assert result.outcome is Outcome.SUCCESS, result.error
    assert len(sink.messages) == 1


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_an_untrusted_certificate_is_permanent(
    make_executor: Any, tls_files: tuple[ssl.SSLContext, Path]
) -> None:
    server_ctx, _ = tls_files
    sink = SmtpSink(tls=server_ctx).start()
    try:
        result = await send(make_executor(smtp_config(sink.port, tls=True)))
    finally:
        sink.stop()
        gc.collect()  # aiosmtpd's side of the failed handshake leaks its socket: collect it here
    assert result.outcome is Outcome.PERMANENT
    assert "certificate" in (result.error or "")
    assert sink.messages == []
