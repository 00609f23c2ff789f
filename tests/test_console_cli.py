"""The console's command-line side (SPEC §7.4): ``deliveries retry/resolve --reason`` and
``replay`` are recorded (who = ``cli:<os user>``) and ``deliveries show`` lists the
record; ``check`` refuses a console without a token on a non-loopback address.

``billnotify`` runs as a subprocess on a real SQLite state.
"""

from __future__ import annotations

import getpass
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

import pg
from billnotify.config import parse_config
from billnotify.config.service import ServiceConfig, is_loopback
from billnotify.deliveries.base import DeliveryStatus
from billnotify.errors import ConfigError
from billnotify.events import CloudEvent
from billnotify.store import NewDelivery, SqliteStore
from billnotify.store.postgres import PgStore
from billnotify.store.records import OperatorAction
from billnotify.store.transfer import copy_state
from processes import cli

NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
TOKEN = "tok-" + "Gm4Rw8Ye2Nq6Ub1"


def _config(tmp_path: Path, service: str = "") -> Path:
    (tmp_path / "templates").mkdir(exist_ok=True)
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[service]
state = "state.db"
{service}

[mqtt]
enabled = false

[[sources]]
name = "acme"
kind = "billing_platform"
base_url = "http://127.0.0.1:1/backend/api/v1"
api_key = "k"
"""
    )
    return path


async def _uncertain(tmp_path: Path, count: int = 2) -> list[str]:
    ids = []
    async with SqliteStore(tmp_path / "state.db") as store:
        for n in range(count):
            event = CloudEvent(
                id=f"evt_cli_{n}",
                source="billnotify://acme",
                type="invoice.status_changed",
                subject=f"invoices/{n}",
                time="2026-11-21T10:00:00Z",
            )
            (stored,) = await store.commit("acme", [], [event])
            new = NewDelivery("r", 0, "email", event.id, stored.seq, True, target="c@example.com")
            await store.record_deliveries([new], "rules", stored.seq, NOW)
            await store.set_delivery_status(new.id, DeliveryStatus.UNCERTAIN, now=NOW)
            ids.append(new.id)
    return ids


async def test_cli_retry_and_resolve_are_recorded_and_shown(tmp_path: Path) -> None:
    config = str(_config(tmp_path))
    first, second = await _uncertain(tmp_path)
    reason = "the SMTP relay's log shows it delivered"
    code, out, err = await cli(
        "deliveries", "resolve", first, "--sent", "--reason", reason, "-c", config
    )
    assert code == 0, err
    code, _, err = await cli("deliveries", "retry", second, "--reason", "bounced", "-c", config)
    assert code == 0, err
    code, _, err = await cli("deliveries", "retry", first, "-c", config)  # now succeeded
    assert code == 1 and "only dead, failed, uncertain or muted" in err

    code, out, err = await cli("deliveries", "show", first, "-c", config)
    assert code == 0, err
    shown = json.loads(out)
    assert shown["status"] == "succeeded" and reason in shown["note"]
    who = f"cli:{getpass.getuser()}"
    assert [
        (a["who"], a["action"], a["reason"], a["result"]) for a in shown["operator_actions"]
    ] == [
        (who, "retry", "", "is succeeded; only dead, failed, uncertain or muted can be retried"),
        (who, "resolve_sent", reason, "uncertain -> succeeded"),
    ]
    code, out, _ = await cli("deliveries", "show", second, "-c", config)
    (retried,) = json.loads(out)["operator_actions"]
    assert (retried["action"], retried["reason"]) == ("retry", "bounced")


async def test_cli_replay_to_rules_is_recorded_per_event(tmp_path: Path) -> None:
    config = str(_config(tmp_path))
    await _uncertain(tmp_path, count=1)
    code, _, err = await cli(
        "replay", "evt_cli_0", "--to", "rules", "--reason", "rule fixed", "-c", config
    )
    assert code == 0, err
    async with SqliteStore(tmp_path / "state.db") as store:
        (action,) = await store.operator_actions("evt_cli_0")
    assert (action.action, action.reason) == ("replay", "rule fixed")
    assert action.result.startswith("to rules: ")


async def test_state_copy_takes_the_operator_actions_along(tmp_path: Path) -> None:
    reason = pg.available()
    if reason:
        pytest.skip(reason)
    target = pg.shared().database()
    async with SqliteStore(tmp_path / "state.db") as store:
        kept = [
            OperatorAction(NOW, "cli:ann", "retry", "dlv_a", "bounced", "dead -> pending"),
            OperatorAction(NOW, "console:bob", "enable_endpoint", "ops", "back", "enabled"),
        ]
        for action in kept:
            await store.record_operator_action(action)
    report = await copy_state(tmp_path / "state.db", target)
    assert report.counts["operator_actions"] == 2
    async with PgStore(target) as copied:
        assert await copied.operator_actions() == list(reversed(kept))
        # the copy's own actions come after the copied ones
        later = OperatorAction(NOW, "cli:ann", "retry", "dlv_a", "again", "x")
        await copied.record_operator_action(later)
        assert (await copied.operator_actions("dlv_a"))[0] == later


@pytest.mark.parametrize(
    ("service", "refused"),
    [
        ('http = "0.0.0.0:9464"', True),
        ('http = "192.0.2.10:9464"', True),
        ('http = "0.0.0.0:9464"\nconsole_token = "env:BN_CHECK_TOKEN"', False),
        ('http = "127.0.0.1:9464"', False),
        ('http = "[::1]:9464"', False),
        ('http = "localhost:9464"', False),
        ('http = ""', False),
    ],
)
async def test_check_refuses_a_console_without_a_token_off_loopback(
    tmp_path: Path, service: str, refused: bool
) -> None:
    config = str(_config(tmp_path, service))
    env = {"PATH": "/usr/bin:/bin", "BN_CHECK_TOKEN": TOKEN}
    code, out, err = await cli("check", "-c", config, env=env)
    if refused:
        assert code == 2, out + err
        assert "service.console_token: required when service.http" in err
    else:
        assert code == 0, err
        assert "console_token" not in err
    assert TOKEN not in out + err


def test_console_is_open_with_a_token_or_on_loopback(tmp_path: Path) -> None:
    def service(**fields: str) -> ServiceConfig:
        raw = {"service": fields, "mqtt": {"enabled": False}}
        return parse_config(raw, base_dir=tmp_path).service

    assert service(http="127.0.0.1:1").console_open
    assert not service(http="0.0.0.0:1").console_open
    assert not service(http="").console_open
    assert service(http="0.0.0.0:1", console_token=TOKEN).console_open
    assert [is_loopback(h) for h in ("127.0.0.2", "::1", "[::1]", "localhost", "::", "h")] == [
        True,
        True,
        True,
        True,
        False,
        False,
    ]


@pytest.mark.parametrize("token", ["", "short-token"])
def test_a_short_console_token_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    monkeypatch.setenv("BN_SHORT_TOKEN", token)
    raw = {"service": {"console_token": "env:BN_SHORT_TOKEN"}, "mqtt": {"enabled": False}}
    with pytest.raises(ConfigError) as failed:
        parse_config(raw, base_dir=tmp_path)
    assert "service.console_token: must be at least 16 characters" in str(failed.value)
    assert token not in str(failed.value) or not token
