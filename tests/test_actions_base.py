"""Outcome classification (the one place), failure results, and the executor registry."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from billnotify.actions import build_executors, check_actions
from billnotify.actions.base import (
    InvalidMessageError,
    NotApplicableError,
    RejectedError,
    SendFailedError,
    UnsafeDestinationError,
    classify,
    describe,
    failure,
)
from billnotify.clients import ConnectError
from billnotify.config.models import Config
from billnotify.deliveries.base import Outcome
from billnotify.errors import (
    ApiError,
    AuthError,
    BusError,
    CdrEmailSendingFailedError,
    EmailSendingFailedError,
    InvalidEmailError,
    MalformedResponseError,
    NotFoundError,
    RateLimitedError,
    ServerError,
    TemplateError,
    TransportError,
)
from billnotify.templating import TemplateRenderer

S, R, P, U = Outcome.SUCCESS, Outcome.RETRYABLE, Outcome.PERMANENT, Outcome.UNCERTAIN


@pytest.mark.parametrize(
    ("code", "http", "smtp"),
    [
        (200, S, S),
        (204, S, S),
        (250, S, S),
        (301, P, S),
        (354, P, S),
        (400, P, R),
        (404, P, R),
        (408, R, R),
        (410, P, R),
        (421, P, R),
        (429, R, R),
        (451, P, R),
        (500, R, P),
        (503, R, P),
        (535, R, P),
        (554, R, P),
    ],
)
def test_codes(code: int, http: Outcome, smtp: Outcome) -> None:
    assert classify(code) is http
    assert classify(code, protocol="smtp") is smtp


def api(cls: type[ApiError], status: int, **kw: Any) -> ApiError:
    return cls("boom", status=status, **kw)


@pytest.mark.parametrize(
    ("exc", "plain", "once"),
    [
        (SendFailedError("refused", sent=False), R, R),
        (SendFailedError("no reply", sent=True), R, U),
        (RejectedError("x", code=503, protocol="http"), R, R),
        (RejectedError("x", code=550, protocol="smtp"), P, P),
        (RejectedError("x", code=None, protocol="smtp"), P, P),
        (TemplateError("t.j2: undefined"), P, P),
        (InvalidMessageError("CRLF"), P, P),
        (UnsafeDestinationError("loopback"), P, P),
        (NotApplicableError("not an invoice"), P, P),
        (BusError("not connected"), R, R),
        (ConnectError("cannot connect"), R, R),
        (TransportError("timed out"), R, U),
        (MalformedResponseError("odd body"), R, U),
        (RateLimitedError("slow down", status=429, retry_after=3.0), R, R),
        (api(ServerError, 500), R, U),
        (api(ServerError, 502), R, U),
        (api(ServerError, 504, error_code=504000), R, U),
        (api(EmailSendingFailedError, 500, error_code=500601), R, R),
        (api(CdrEmailSendingFailedError, 500, error_code=500602), R, R),
        (api(InvalidEmailError, 400, error_code=400702), P, P),
        (api(NotFoundError, 404), P, P),
        (AuthError("forbidden"), P, P),
        (api(ApiError, 400), P, P),
        (RuntimeError("a bug"), R, U),
    ],
)
def test_exceptions(exc: BaseException, plain: Outcome, once: Outcome) -> None:
    assert classify(exc) is plain
    assert classify(exc, exactly_once=True) is once


def test_failure_carries_status_retry_after_and_a_short_error() -> None:
    result = failure(RateLimitedError("slow down", status=429, retry_after=3.0))
    assert (result.outcome, result.status_code, result.retry_after) == (R, 429, 3.0)
    assert result.error == "slow down [HTTP 429]"
    rejected = failure(RejectedError("HTTP 503", code=503, protocol="http", retry_after=9.0))
    assert (rejected.status_code, rejected.retry_after) == (503, 9.0)
    assert failure(ValueError()).error == "ValueError"
    assert len(describe(SendFailedError("x" * 2000, sent=False))) == 500


async def test_build_executors_covers_every_action_type(tmp_path: Path) -> None:
    config = Config.model_validate(
        {
            "smtp": {"host": "127.0.0.1", "from": "b@example.com"},
            "webhooks": [
                {"name": "ops", "url": "https://h.example.com/x", "secret": "whsec_" + "QUJD" * 8}
            ],
        }
    )
    executors = build_executors(
        config.smtp,
        config.webhooks,
        billing_clients={},
        property_clients={},
        mqtt=None,
        templates=TemplateRenderer(tmp_path),
    )
    assert sorted(executors) == ["email", "invoice_action", "mqtt", "webhook"]
    for kind, executor in executors.items():
        assert executor.action_type == kind
    await asyncio.gather(*(e.close() for e in executors.values()))


def test_check_actions_reports_missing_templates_and_bad_expressions(tmp_path: Path) -> None:
    (tmp_path / "ok.subject.j2").write_text("s")
    (tmp_path / "ok.txt.j2").write_text("t")
    config = Config.model_validate(
        {
            "mqtt": {"enabled": False},
            "webhooks": [
                {"name": "ops", "url": "https://h.example.com/x", "secret": "whsec_" + "QUJD" * 8}
            ],
            "rules": [
                {
                    "name": "r1",
                    "on": ["invoice.*"],
                    "when": "object.total >",
                    "actions": [
                        {"type": "email", "to": ["{{ object.email"], "template": "ok"},
                        {"type": "email", "to": ["a@example.com"], "template": "missing"},
                        {"type": "webhook", "endpoint": "ops", "body": "nobody"},
                        {"type": "mqtt", "topic": "a/{{ source }}"},
                        {
                            "type": "invoice_action",
                            "action": "email",
                            "params": {"email": ["{{ x"]},
                        },
                    ],
                }
            ],
        }
    )
    problems = check_actions(config, TemplateRenderer(tmp_path))
    text = "\n".join(problems)
    assert "rules[0].actions[0]: an email action needs an [smtp] table" in text
    assert "rules[0].actions[3]: an mqtt action needs [mqtt] enabled" in text
    assert "missing.subject.j2 not found" in text
    assert "nobody.j2 not found" in text
    assert "when 'object.total >'" in text
    assert "inline template '{{ object.email'" in text
    assert "inline template '{{ x'" in text
