"""Invoice-action ``params`` are checked against seed 002 before they cost anything.

Literal values are checked by ``billnotify check`` (every problem with its TOML path,
exit status 2); templated ones once rendered (see ``test_actions_invoice.py``). Whole
numbers are sent as numbers.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

from billnotify.config.invoice_params import check_params, is_templated, param_problems
from billnotify.errors import InvalidParameterError
from servers import toml_config

UUID = "550e8400-e29b-41d4-a716-446655440000"


@pytest.mark.parametrize(
    ("action", "params", "sent"),
    [
        ("generateDownloadLink", {"expiryHours": 72, "maxUses": 2}, {"expiryHours": 72, "maxUses": 2}),
        ("generateDownloadLink", {"expiryHours": "168", "maxUses": " 1 "}, {"expiryHours": 168, "maxUses": 1}),
        ("linkToXero", {"xeroID": UUID.upper()}, {"xeroID": UUID}),
        ("email", {"email": "a@example.com; b@example.org"}, {"email": "a@example.com; b@example.org"}),
        ("email", {"email": [" a@example.com"], "billStyle": "Full", "attachments": ["Price List"]},
         {"email": ["a@example.com"], "billStyle": "Full", "attachments": ["Price List"]}),
        ("emailCdrs", {}, {}),
        ("recreate", {}, {}),
    ],
)  # fmt: skip
def test_valid_params_are_sent_as_the_platform_expects(
    action: str, params: dict[str, Any], sent: dict[str, Any]
) -> None:
    assert param_problems(action, params) == {}
    assert check_params(action, params) == sent


@pytest.mark.parametrize(
    ("action", "params", "problems"),
    [
        ("generateDownloadLink", {"expiryHours": "soon"},
         {"expiryHours": "must be a whole number, got 'soon'"}),
        ("generateDownloadLink", {"expiryHours": 48, "maxUses": 0},
         {"expiryHours": "must be one of 1, 6, 24, 72, 168, 336, 720, got 48",
          "maxUses": "must be between 1 and 2, got 0"}),
        ("generateDownloadLink", {"expiryHours": 7.5}, {"expiryHours": "must be a whole number, got 7.5"}),
        ("generateDownloadLink", {"maxUses": True}, {"maxUses": "must be a whole number, got True"}),
        ("generateDownloadLink", {"expiry": 24},
         {"expiry": "unknown parameter of generateDownloadLink (expected expiryHours, maxUses)"}),
        ("linkToXero", {}, {"xeroID": "required by linkToXero"}),
        ("linkToXero", {"xeroID": "INV-1"},
         {"xeroID": "must be a UUID such as 00000000-0000-0000-0000-000000000000, got 'INV-1'"}),
        ("recreate", {"force": True}, {"force": "unknown parameter: recreate takes none"}),
        ("email", {"email": ["ops@example.com", "nobody"]},
         {"email": "'nobody' is not an email address"}),
        ("email", {"email": []},
         {"email": "is empty (leave the parameter out for the platform's default)"}),
        ("email", {"billStyle": 3}, {"billStyle": "must be text, got 3"}),
    ],
)  # fmt: skip
def test_literal_problems(action: str, params: dict[str, Any], problems: dict[str, str]) -> None:
    assert param_problems(action, params) == problems
    with pytest.raises(InvalidParameterError) as info:
        check_params(action, params)
    assert info.value.param in problems
    assert str(info.value).startswith(f"invoice_action {action} param {info.value.param}: ")


def test_templated_values_wait_for_rendering() -> None:
    params = {"expiryHours": "{{ object.hours }}", "email": ["{{ object.email }}", "a@b.org"]}
    assert is_templated(params["expiryHours"]) and is_templated(params["email"])
    assert param_problems("generateDownloadLink", {"expiryHours": params["expiryHours"]}) == {}
    assert param_problems("email", {"email": params["email"]}) == {}


async def test_check_reports_every_bad_param_with_its_toml_path(tmp_path: Path) -> None:
    (tmp_path / "templates").mkdir()
    raw = {
        "service": {"http": ""},
        "mqtt": {"enabled": False},
        "sources": [
            {
                "name": "acme",
                "kind": "billing_platform",
                "base_url": "https://acme.example.com/backend/api/v1",
                "api_key": "env:ACME_KEY",
            }
        ],
        "rules": [
            {
                "name": "links",
                "on": ["invoice.status_changed"],
                "actions": [
                    {"type": "invoice_action", "action": "recreate"},
                ],
            },
            {
                "name": "more-links",
                "on": ["invoice.status_changed"],
                "actions": [
                    {
                        "type": "invoice_action",
                        "action": "generateDownloadLink",
                        "params": {"expiryHours": "soon", "maxUses": 3, "xeroID": UUID},
                    },
                    {"type": "invoice_action", "action": "linkToXero"},
                    {
                        "type": "invoice_action",
                        "action": "email",
                        "params": {"billStyle": "{{ object.style }}", "email": "x@@y"},
                    },
                ],
            },
        ],
    }
    config = tmp_path / "config.toml"
    config.write_text(toml_config(raw))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "billnotify", "check", "-c", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin", "ACME_KEY": "k" * 20},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode() + err.decode()
    assert proc.returncode == 2, text
    for line in (
        "rules[1].actions[0].params.expiryHours: must be a whole number, got 'soon'",
        "rules[1].actions[0].params.maxUses: must be between 1 and 2, got 3",
        "rules[1].actions[0].params.xeroID: unknown parameter of generateDownloadLink",
        "rules[1].actions[1].params.xeroID: required by linkToXero",
        "rules[1].actions[2].params.email: 'x@@y' is not an email address",
    ):
        assert line in text, text
    assert "billStyle" not in text  # templated: checked once rendered
