"""``include_device_consumptions`` on a property billing source (seed 003): the service asks
``Billing/<id>?includeDeviceConsumptions=true`` and the consumptions arrive in the event's
``data.billing`` on MQTT; without the option it asks ``=false`` and none arrive. A config
that asks for them without ``enrich`` is refused with the key's path."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from billnotify.config import parse_config
from billnotify.errors import ConfigError
from billnotify.simulator import Simulator
from conftest import Mosquitto, Subscriber
from service_harness import events_on, running_service

SubscriberFactory = Callable[..., contextlib.AbstractAsyncContextManager[Subscriber]]
PROPERTY = "2eff1042c50c1eda889e61573e3c194c"


def _source(sim: Simulator, name: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "property_billing",
        "base_url": sim.property_base_url,
        "auth_url": sim.auth_url,
        "username": sim.username,
        "password": sim.password,
        "administrator_ids": list(sim.administrator_ids),
        "properties": [PROPERTY],
        "poll_interval": "200ms",
        "timeout": "5s",
        "max_attempts": 1,
        **fields,
    }


async def test_device_consumptions_are_asked_for_and_arrive(
    tmp_path: Path,
    sim: Simulator,
    mosquitto: Mosquitto,
    mqtt_prefix: str,
    mqtt_subscriber: SubscriberFactory,
) -> None:
    raw = {
        "service": {"name": "meters", "state": "state.db", "http": "", "shutdown_grace": "5s"},
        "mqtt": {"url": mosquitto.url(), "client_id": f"bn-{mqtt_prefix}", "prefix": mqtt_prefix},
        "sources": [
            _source(sim, "metering", include_device_consumptions=True),
            _source(sim, "plain"),
        ],
    }
    async with (
        mqtt_subscriber(mosquitto, f"{mqtt_prefix}/events/#") as sub,
        running_service(raw, tmp_path),
    ):
        header = sim.state.add_billing_header(PROPERTY)
        topic = f"billing_header/{header['id']}/published"
        await sub.wait_for(
            lambda _: all(
                events_on(sub, f"{mqtt_prefix}/events/{name}/{topic}")
                for name in ("metering", "plain")
            )
        )

    path = f"/api/v1/Billing/{header['id']}?includeDeviceConsumptions="
    asked = [r for r in sim.requests if r.startswith(f"GET {path}")]
    assert sorted(asked) == [f"GET {path}false", f"GET {path}true"]

    [(_, metering)] = events_on(sub, f"{mqtt_prefix}/events/metering/{topic}")
    units = metering["data"]["billing"]["units"]
    assert units and all(unit["deviceConsumptions"] for unit in units)
    expected = sim.state.billing(header["id"], include_device_consumptions=True)["units"]
    assert [u["deviceConsumptions"] for u in units] == [u["deviceConsumptions"] for u in expected]
    [(_, plain)] = events_on(sub, f"{mqtt_prefix}/events/plain/{topic}")
    assert plain["data"]["billing"]["units"]
    assert not any("deviceConsumptions" in unit for unit in plain["data"]["billing"]["units"])


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        (
            {"enrich": False, "include_device_consumptions": True},
            "sources[0].include_device_consumptions: needs enrich = true",
        ),
        ({"include_device_consumptions": "sometimes"}, "sources[0].include_device_consumptions"),
    ],
)
def test_a_wrong_include_device_consumptions_names_its_path(
    tmp_path: Path, sim: Simulator, fields: dict[str, Any], error: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"sources": [_source(sim, "metering", **fields)]}, base_dir=tmp_path)
    assert error in str(caught.value)
