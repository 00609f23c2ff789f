"""MqttPublisher over TLS (mqtts://) against mosquitto with a trustme CA."""

from __future__ import annotations

import gc
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from billnotify.config.models import MqttConfig
from billnotify.errors import BusError
from billnotify.events import build_event
from billnotify.publish import MqttPublisher
from billnotify.store import SqliteStore
from servers import running

# paho leaks the socket of a failed TLS handshake (closed by the GC, with a warning).
_PAHO_TLS_LEAK = pytest.mark.filterwarnings(
    "ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning"
)


def tls_config(broker: Any, port: int, prefix: str, **overrides: Any) -> MqttConfig:
    values: dict[str, Any] = {
        "url": f"mqtts://127.0.0.1:{port}",
        "prefix": prefix,
        "client_id": f"{prefix}-tls",
        "ca_file": str(broker.tls.ca),
        "reconnect_max": timedelta(seconds=1),
    }
    values.update(overrides)
    return MqttConfig(**values)


async def _commit_one(store: SqliteStore) -> None:
    event = build_event(
        source="acme",
        entity="billing_task",
        object_id="42",
        type_="billing_task.created",
        key="k",
        time=datetime(2026, 1, 1, tzinfo=UTC),
        data={"object": {"id": "42"}},
    )
    await store.commit("acme", [], [event])


async def _never_connects(config: MqttConfig, store: SqliteStore) -> None:
    publisher = MqttPublisher(config, store)
    async with running(publisher):
        with pytest.raises(BusError, match="not connected"):
            await publisher.wait_connected(1.5)
    gc.collect()  # the leaked socket is reported now, under the test's filter


async def test_tls_with_a_private_ca(
    mosquitto_tls: Any, mqtt_prefix: str, mqtt_subscriber: Any, store: SqliteStore
) -> None:
    await _commit_one(store)
    config = tls_config(mosquitto_tls, mosquitto_tls.tls_port, mqtt_prefix)
    assert config.tls
    publisher = MqttPublisher(config, store)
    async with (
        mqtt_subscriber(mosquitto_tls, f"{mqtt_prefix}/#") as sub,
        running(publisher),
    ):
        await publisher.wait_connected(10)
        await sub.wait_for(
            lambda msgs: bool(sub.on(f"{mqtt_prefix}/events/acme/billing_task/42/created"))
        )


@_PAHO_TLS_LEAK
async def test_tls_rejects_a_server_the_ca_did_not_sign(
    mosquitto_tls: Any, mqtt_prefix: str, store: SqliteStore
) -> None:
    # no ca_file: the system CAs do not know the trustme CA
    config = tls_config(mosquitto_tls, mosquitto_tls.tls_port, mqtt_prefix, ca_file=None)
    await _never_connects(config, store)


async def test_client_certificate(
    mosquitto_tls: Any, mqtt_prefix: str, mqtt_subscriber: Any, store: SqliteStore
) -> None:
    await _commit_one(store)
    files = mosquitto_tls.tls
    config = tls_config(
        mosquitto_tls,
        mosquitto_tls.mtls_port,
        mqtt_prefix,
        cert_file=str(files.client_cert),
        key_file=str(files.client_key),
    )
    publisher = MqttPublisher(config, store)
    async with (
        mqtt_subscriber(mosquitto_tls, f"{mqtt_prefix}/events/#") as sub,
        running(publisher),
    ):
        await publisher.wait_connected(10)
        await sub.wait_for(lambda msgs: len(msgs) == 1)


@_PAHO_TLS_LEAK
async def test_client_certificate_required(
    mosquitto_tls: Any, mqtt_prefix: str, store: SqliteStore
) -> None:
    config = tls_config(mosquitto_tls, mosquitto_tls.mtls_port, mqtt_prefix)
    await _never_connects(config, store)


async def test_missing_tls_files_are_a_bus_error(
    mosquitto_tls: Any, mqtt_prefix: str, store: SqliteStore
) -> None:
    config = tls_config(
        mosquitto_tls, mosquitto_tls.tls_port, mqtt_prefix, ca_file="/nonexistent/ca.pem"
    )
    with pytest.raises(BusError, match="TLS"):
        await MqttPublisher(config, store).run()


def test_tls_insecure_skips_only_the_hostname_check(mosquitto_tls: Any) -> None:
    import ssl

    from billnotify.publish.connection import tls_context

    strict = tls_context(tls_config(mosquitto_tls, mosquitto_tls.tls_port, "p"))
    assert strict.check_hostname and strict.verify_mode == ssl.CERT_REQUIRED
    loose = tls_context(tls_config(mosquitto_tls, mosquitto_tls.tls_port, "p", tls_insecure=True))
    assert not loose.check_hostname and loose.verify_mode == ssl.CERT_REQUIRED
