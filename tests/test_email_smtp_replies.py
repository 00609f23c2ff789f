"""SMTP replies read as RFC 5321 says (issue 10, items 6 and 9), against real servers on
loopback: 4xx is transient (retry), 5xx permanent, on connect as on each recipient; and
the password never crosses an unencrypted connection unless the config says so."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from billnotify.actions.email import EmailExecutor
from billnotify.actions.smtp import SmtpPool, check_smtp
from billnotify.deliveries.base import Outcome
from servers import SmtpSink, free_port, toml_config
from test_email import email_action, send, smtp_config, write_templates


@pytest.fixture
def make_executor(tmp_path: Path, closing: Any) -> Any:
    from billnotify.templating import TemplateRenderer

    write_templates(tmp_path)

    def make(config: Any, **kwargs: Any) -> EmailExecutor:
        return closing(EmailExecutor(config, TemplateRenderer(tmp_path), **kwargs))

    return make


@pytest.fixture
async def busy_server() -> AsyncIterator[tuple[int, list[int]]]:
    """A server that greets every client with ``421`` and hangs up (an overloaded MTA)."""
    greeted: list[int] = []

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        greeted.append(1)
        writer.write(b"421 4.3.2 mx.example.com too busy, try again later\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(greet, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, greeted
    finally:
        server.close()
        await server.wait_closed()


# -- 4xx vs 5xx ---------------------------------------------------------------------------


async def test_421_on_connect_is_retryable(busy_server: Any, make_executor: Any) -> None:
    port, greeted = busy_server
    result = await send(make_executor(smtp_config(port)))
    assert result.outcome is Outcome.RETRYABLE
    assert result.status_code == 421 and "421" in (result.error or "")
    assert greeted


async def test_421_on_connect_is_retryable_when_prepared(
    busy_server: Any, make_executor: Any
) -> None:
    port, _ = busy_server
    executor = make_executor(smtp_config(port))
    permit = await executor.prepare(email_action(), *_event_rule(), delivery_id="dlv_1")
    result = await executor.execute(email_action(), *_event_rule(), delivery_id="dlv_1", attempt=1)
    permit.release()
    assert result.outcome is Outcome.RETRYABLE and result.status_code == 421


async def test_a_transiently_refused_recipient_defers_the_whole_message(
    sink: SmtpSink, make_executor: Any
) -> None:
    # greylisting one recipient: sending to the other now would mean sending it twice
    # (at-least-once) or never to the greylisted one (exactly-once) later
    sink.handler.refuse["b@example.com"] = "450 4.2.0 greylisted, try again later"
    action = email_action(to=["a@example.com", "b@example.com"])
    executor = make_executor(smtp_config(sink.port))
    result = await send(executor, action)
    assert result.outcome is Outcome.RETRYABLE and result.status_code == 450
    assert "b@example.com: 450" in (result.error or "")
    assert sink.messages == []
    sink.handler.refuse.clear()
    result = await send(executor, action)  # the retry reaches both, once
    assert result.outcome is Outcome.SUCCESS
    (received,) = sink.messages
    assert received.rcpt_tos == ["a@example.com", "b@example.com"]


async def test_all_recipients_refused_some_transiently_is_retryable(
    sink: SmtpSink, make_executor: Any
) -> None:
    sink.handler.refuse["a@example.com"] = "550 5.1.1 no such user"
    sink.handler.refuse["b@example.com"] = "452 4.2.2 mailbox full"
    action = email_action(to=["a@example.com", "b@example.com"])
    result = await send(make_executor(smtp_config(sink.port)), action)
    assert result.outcome is Outcome.RETRYABLE and result.status_code == 452
    assert sink.messages == []


async def test_permanently_refused_recipients_only_are_permanent(
    sink: SmtpSink, make_executor: Any
) -> None:
    sink.handler.refuse["a@example.com"] = "550 5.1.1 no such user"
    result = await send(make_executor(smtp_config(sink.port)), email_action(to=["a@example.com"]))
    assert result.outcome is Outcome.PERMANENT and result.status_code == 550


@pytest.mark.parametrize(("reply", "outcome"), [("451 4.3.0 local error", Outcome.RETRYABLE),
                                                ("554 5.6.0 rejected", Outcome.PERMANENT)])  # fmt: skip
async def test_the_reply_to_data(
    sink: SmtpSink, make_executor: Any, reply: str, outcome: Outcome
) -> None:
    sink.handler.data_reply = reply
    result = await send(
        make_executor(
            smtp_config(sink.port),
        )
    )
    assert result.outcome is outcome and result.status_code == int(reply[:3])


# -- no password in clear text --------------------------------------------------------------

_PLAIN_AUTH_SINK = pytest.mark.filterwarnings(
    "ignore:Requiring AUTH while not requiring TLS:UserWarning"  # the sink's own, on purpose
)


@_PLAIN_AUTH_SINK
async def test_auth_over_plaintext_is_refused_without_connecting(make_executor: Any) -> None:
    sink = SmtpSink(credentials=("billing", "s3cret-pass")).start()  # would accept it
    try:
        config = smtp_config(sink.port, username="billing", password="s3cret-pass")
        result = await send(make_executor(config))
        assert result.outcome is Outcome.PERMANENT
        assert "refusing to send the password over an unencrypted connection" in (
            result.error or ""
        )
        assert "allow_plaintext_auth" in (result.error or "")
        assert "s3cret-pass" not in (result.error or "")
        assert sink.logins == [] and sink.messages == []
        with pytest.raises(Exception, match="unencrypted"):
            await SmtpPool(config).check()  # `check --connect` refuses too
        assert sink.logins == []
    finally:
        sink.stop()


@_PLAIN_AUTH_SINK
async def test_auth_over_plaintext_when_the_config_allows_it(make_executor: Any) -> None:
    sink = SmtpSink(credentials=("billing", "s3cret-pass")).start()
    try:
        config = smtp_config(
            sink.port, username="billing", password="s3cret-pass", allow_plaintext_auth=True
        )
        result = await send(make_executor(config))
        assert result.outcome is Outcome.SUCCESS
        assert sink.logins == ["billing"] and len(sink.messages) == 1
    finally:
        sink.stop()


def test_check_smtp_names_the_toml_path() -> None:
    assert check_smtp(None) == []
    assert check_smtp(smtp_config(25)) == []  # no AUTH: nothing to leak
    assert check_smtp(smtp_config(587, username="u", password="p", starttls=True)) == []
    assert check_smtp(smtp_config(465, username="u", password="p", tls=True)) == []
    allowed = smtp_config(25, username="u", password="p", allow_plaintext_auth=True)
    assert check_smtp(allowed) == []
    (problem,) = check_smtp(smtp_config(25, username="u", password="p"))
    assert problem.startswith("smtp.password: ")
    assert "starttls = true" in problem and "allow_plaintext_auth = true" in problem


async def test_billnotify_check_reports_plaintext_auth_as_a_config_error(tmp_path: Path) -> None:
    raw = {
        "service": {"state": "state.db", "http": ""},
        "mqtt": {"enabled": False},
        "smtp": {
            "host": "127.0.0.1",
            "port": free_port(),
            "from": "billing@example.com",
            "username": "billing",
            "password": "env:SMTP_PASSWORD_FOR_TEST",
        },
    }
    path = tmp_path / "config.toml"
    path.write_text(toml_config(raw))
    code, err = await _check(path)
    assert code == 2, err
    assert "smtp.password: SMTP AUTH over an unencrypted connection" in err
    assert "hunter2-secret" not in err
    raw["smtp"]["allow_plaintext_auth"] = True
    path.write_text(toml_config(raw))
    code, err = await _check(path)
    assert code == 0, err


async def _check(path: Path) -> tuple[int, str]:
    import os

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "billnotify", "check", "-c", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "SMTP_PASSWORD_FOR_TEST": "hunter2-secret"},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode()


def _event_rule() -> tuple[Any, Any]:
    from test_email import EVENT, RULE

    return EVENT, RULE
