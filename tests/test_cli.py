"""The command line as an operator uses it: events, replay, deliveries, render."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from billnotify.deliveries.base import DeliveryStatus
from billnotify.events import CloudEvent, build_event
from billnotify.store import SqliteStore
from processes import cli

NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


def _event(object_id: str, type_: str, entity: str = "invoice") -> CloudEvent:
    return build_event(
        source="acme",
        entity=entity,
        object_id=object_id,
        type_=type_,
        key=f"{object_id}-{type_}",
        time=NOW,
        data={
            "object": {"id": object_id, "status": ["Approved"], "invoiceNumber": "ACC1/1"},
            "added": ["Approved"],
            "removed": [],
        },
    )


def _config(
    tmp_path: Path,
    *,
    mqtt_url: str = "mqtt://127.0.0.1:1",
    prefix: str = "x",
    api_key: str = "k",
    extra: str = "",
) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[service]
state = "state.db"
[mqtt]
url = "{mqtt_url}"
prefix = "{prefix}"
[[sources]]
name = "acme"
kind = "billing_platform"
base_url = "http://127.0.0.1:1/backend/api/v1"
api_key = "{api_key}"
[[webhooks]]
name = "ops"
url = "http://127.0.0.1:1/hook"
secret = "whsec_QUJDREVGR0hJSktMTU5PUA=="
allow_private = true
[[rules]]
name = "approved"
on = ["invoice.status_changed"]
when = "'Approved' in event.data.added"
[[rules.actions]]
type = "webhook"
endpoint = "ops"
[[rules.actions]]
type = "invoice_action"
action = "email"
params = {{ email = ["{{{{ object.invoiceNumber }}}}@example.com"] }}
{extra}
"""
    )
    return path


async def _seed(tmp_path: Path) -> list[CloudEvent]:
    events = [
        _event("1", "invoice.status_changed"),
        _event("2", "invoice.paid"),
        _event("3", "billing_task.created", "billing_task"),
    ]
    async with SqliteStore(tmp_path / "state.db") as store:
        await store.commit("acme", [], events)
    return events


async def test_events_lists_and_filters(tmp_path: Path) -> None:
    config = _config(tmp_path)
    events = await _seed(tmp_path)
    code, out, _ = await cli("events", "-c", str(config))
    assert code == 0
    assert [line.split()[-1] for line in out.splitlines()] == [e.id for e in events]
    code, out, _ = await cli("events", "-c", str(config), "--type", "invoice.*", "--json")
    assert [json.loads(line)["id"] for line in out.splitlines()] == [events[0].id, events[1].id]
    code, out, _ = await cli("events", "-c", str(config), "--since", "2099-01-01")
    assert (code, out) == (0, "")
    code, _, err = await cli("events", "-c", str(config), "--since", "yesterday-ish")
    assert code == 2 and "not a duration or ISO time" in err


async def test_replay_to_mqtt_republishes(
    tmp_path: Path, mosquitto: Any, mqtt_subscriber: Any, mqtt_prefix: str
) -> None:
    config = _config(tmp_path, mqtt_url=mosquitto.url(), prefix=mqtt_prefix)
    events = await _seed(tmp_path)
    async with mqtt_subscriber(mosquitto, f"{mqtt_prefix}/events/#") as sub:
        code, out, err = await cli("replay", events[0].id, "-c", str(config), "--to", "mqtt")
        assert code == 0, err
        assert "re-published 1 event" in out
        topic = f"{mqtt_prefix}/events/acme/invoice/1/status_changed"
        await sub.wait_for(lambda messages: any(m.topic.value == topic for m in messages))
        payload = json.loads(sub.payloads(topic)[0])
        assert payload["id"] == events[0].id
    code, _, err = await cli("replay", "evt_nope", "-c", str(config))
    assert code == 1 and "unknown event id" in err


async def test_replay_to_rules_then_deliveries_commands(tmp_path: Path) -> None:
    config = _config(tmp_path)
    await _seed(tmp_path)
    code, out, err = await cli("replay", "--since", "1h", "-c", str(config), "--to", "rules")
    assert code == 0, err
    assert "2 new delivery(ies)" in out
    code, out, _ = await cli("replay", "--since", "1h", "-c", str(config), "--to", "rules")
    assert "0 new delivery(ies)" in out and "2 already recorded" in out
    code, out, _ = await cli("deliveries", "-c", str(config), "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert sorted(r["action_type"] for r in rows) == ["invoice_action", "webhook"]
    customer = next(r for r in rows if r["action_type"] == "invoice_action")
    assert customer["exactly_once"] is True
    async with SqliteStore(tmp_path / "state.db") as store:
        await store.set_delivery_status(customer["id"], DeliveryStatus.UNCERTAIN, now=NOW)
    code, out, _ = await cli("deliveries", "-c", str(config), "--status", "uncertain")
    assert customer["id"] in out
    code, out, _ = await cli("deliveries", "resolve", customer["id"], "--sent", "-c", str(config))
    assert code == 0 and "succeeded" in out
    code, out, _ = await cli("deliveries", "show", customer["id"], "-c", str(config))
    assert json.loads(out)["status"] == "succeeded"
    code, _, err = await cli("deliveries", "resolve", customer["id"], "--sent", "-c", str(config))
    assert code == 1 and "only uncertain" in err
    code, _, err = await cli("deliveries", "-c", str(config), "--status", "bogus")
    assert code != 0 and "unknown delivery status" in err


async def test_render_prints_what_each_action_would_send(tmp_path: Path) -> None:
    config = _config(tmp_path)
    event_file = tmp_path / "event.json"
    event_file.write_text(_event("7", "invoice.status_changed").to_json())
    code, out, err = await cli("render", "approved", "--event", str(event_file), "-c", str(config))
    assert code == 0, err
    rendered = json.loads(out)
    assert [r["action_type"] for r in rendered] == ["webhook", "invoice_action"]
    assert rendered[1]["summary"]["params"] == {"email": ["ACC1/1@example.com"]}
    assert "whsec_" not in out
    code, _, err = await cli("render", "nope", "--event", str(event_file), "-c", str(config))
    assert code != 0 and "nope" in err


async def test_read_only_commands_need_no_secrets(tmp_path: Path) -> None:
    config = _config(tmp_path, api_key="env:BILLNOTIFY_TEST_NEVER_SET")
    events = await _seed(tmp_path)
    code, out, err = await cli("events", "-c", str(config))
    assert code == 0, err
    assert events[0].id in out
    code, out, err = await cli("deliveries", "-c", str(config))
    assert code == 0, err
    assert "(0 deliveries)" in out
    code, _, err = await cli("deliveries", "show", "dlv_nope", "-c", str(config))
    assert code == 1 and "unknown delivery dlv_nope" in err
    code, out, err = await cli("status", "-c", str(config))
    assert code == 0, err
    assert "events: 3 logged" in out and "mqtt 3" in out and "deliveries: none" in out
    # a command that uses the secret still says which one is missing
    code, _, err = await cli("render", "approved", "--event", "x.json", "-c", str(config))
    assert code == 2 and "BILLNOTIFY_TEST_NEVER_SET is not set" in err


async def test_render_exits_1_on_a_template_error_and_3_when_the_rule_would_not_fire(
    tmp_path: Path,
) -> None:
    broken = """
[[rules]]
name = "broken"
on = ["invoice.*"]
[[rules.actions]]
type = "mqtt"
topic = "x/{{ object.no_such_field }}"
"""
    config = _config(tmp_path, extra=broken)
    event_file = tmp_path / "event.json"
    event_file.write_text(_event("7", "invoice.status_changed").to_json())
    code, out, err = await cli("render", "broken", "--event", str(event_file), "-c", str(config))
    assert code == 1, err
    assert "template error: rules[1].actions[0] (mqtt):" in err and "no_such_field" in err
    assert "billnotify: warning: sources[0].api_key: a secret written in the config" in err
    assert "error" in json.loads(out)[0]["summary"]

    paid = tmp_path / "paid.json"
    paid.write_text(_event("7", "invoice.paid").to_json())
    code, out, err = await cli("render", "approved", "--event", str(paid), "-c", str(config))
    assert code == 3, err
    assert "rule 'approved' would not fire for this event" in err
    assert "'invoice.paid' matches none of on = ['invoice.status_changed']" in err
    assert len(json.loads(out)) == 2  # still shows what it would send

    not_approved = _event("8", "invoice.status_changed")
    assert not_approved.data is not None
    not_approved.data["added"] = ["Paid"]
    event_file.write_text(not_approved.to_json())
    code, _, err = await cli("render", "approved", "--event", str(event_file), "-c", str(config))
    assert code == 3, err
    assert "when \"'Approved' in event.data.added\" is false for this event" in err


async def test_run_warns_about_a_literal_secret_by_its_path_before_starting(
    tmp_path: Path,
) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[service]\nhttp = ""\n[mqtt]\nenabled = false\npassword = "pw-literal"\n')
    (tmp_path / "state.db").write_bytes(b"")  # refused at start: run stops right after loading
    code, out, err = await cli("run", "-c", str(path))
    assert code != 0
    assert err.startswith(
        'billnotify: warning: mqtt.password: a secret written in the config file; prefer "env:NAME"'
    )
    assert "pw-literal" not in out + err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "needs event ids or --since T"),
        (["evt_1", "--since", "1h"], "takes event ids or --since, not both"),
    ],
)
async def test_replay_without_what_to_replay_is_a_usage_error(
    tmp_path: Path, argv: list[str], message: str
) -> None:
    # no config file at all: the usage error comes first
    code, out, err = await cli("replay", *argv, "-c", str(tmp_path / "missing.toml"))
    assert code == 2
    assert err.startswith("usage: billnotify replay (ID... | --since T)")
    assert message in err and "Traceback" not in err and out == ""


@pytest.mark.parametrize("argv", [["--version"], ["run", "--help"]])
async def test_help_and_version(argv: list[str]) -> None:
    code, out, _ = await cli(*argv)
    assert code == 0 and out


async def test_check_connect_tries_every_peer(tmp_path: Path, mosquitto: Any) -> None:
    from billnotify.simulator import Simulator
    from servers import SmtpSink, free_port

    sim = Simulator()
    await sim.start()
    smtp = SmtpSink().start()
    try:

        def write(mqtt_port: int, smtp_port: int, api_key: str) -> Path:
            path = tmp_path / "connect.toml"
            path.write_text(
                f"""
[mqtt]
url = "mqtt://127.0.0.1:{mqtt_port}"
[smtp]
host = "127.0.0.1"
port = {smtp_port}
from = "billing@example.com"
[[sources]]
name = "acme"
kind = "billing_platform"
base_url = "{sim.billing_base_url}"
api_key = "{api_key}"
[[sources]]
name = "metering"
kind = "property_billing"
base_url = "{sim.property_base_url}"
auth_url = "{sim.auth_url}"
username = "sim"
password = "sim-password"
administrator_ids = ["1234"]
properties = ["2eff1042c50c1eda889e61573e3c194c"]
"""
            )
            return path

        good = write(mosquitto.port, smtp.port, "sim-key")
        code, out, err = await cli("check", "--connect", "-c", str(good))
        assert code == 0, out + err
        assert out.count("ok  ") == 4, out
        bad = write(free_port(), free_port(), "wrong-key-123")
        code, out, _ = await cli("check", "--connect", "-c", str(bad))
        assert code == 1
        assert out.count("FAIL") == 3, out  # the platform refuses the key; broker, SMTP down
        assert "wrong-key-123" not in out
    finally:
        smtp.stop()
        await sim.stop()
