"""Building aiomqtt clients from ``[mqtt]`` and watching their connection.

Kept apart from the publisher so that everything that knows aiomqtt's and paho's
constructor details (protocol versions, sessions, TLS, MQTT 5 properties) is in one
small place.
"""

from __future__ import annotations

import ssl
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from billnotify.config.models import MqttConfig
from billnotify.errors import BusError
from billnotify.publish.topics import status_topic

OFFLINE = b"offline"
ONLINE = b"online"
SESSION_EXPIRY = 24 * 3600
"""MQTT 5 session expiry (seconds): the broker keeps the session across outages."""
CONNECT_TIMEOUT = 10.0


def effective_protocol(config: MqttConfig) -> int:
    """The MQTT version to speak: 4 (3.1.1) or 5.

    The embedded broker (``embedded://``) speaks 3.1.1 only, so it always gets 4,
    whatever ``protocol`` says.
    """
    return 4 if config.embedded else config.protocol


def make_client(
    config: MqttConfig, identifier: str, *, session: bool, availability: str | None = None
) -> aiomqtt.Client:
    """An aiomqtt client for ``config``, not yet connected.

    Args:
        config: the ``[mqtt]`` table.
        identifier: the MQTT client id.
        session: a persistent session (MQTT 3.1.1 ``clean_session=False``, MQTT 5
            ``clean_start=False`` with a session expiry) and the Last Will
            ``offline`` on ``availability``; False for short-lived helper connections.
        availability: the availability topic (default ``{prefix}/status``).

    Raises:
        BusError: the TLS files cannot be loaded.
    """
    kwargs: dict[str, Any] = {
        "hostname": config.host,
        "port": config.port,
        "identifier": identifier,
        "username": config.username,
        "password": config.password.reveal() if config.password is not None else None,
        "keepalive": max(1, int(config.keepalive.total_seconds())),
        # No limit in paho: the publisher's window (``max_inflight``) is the limit. paho
        # with a limit walks every message in flight on each acknowledgement (some 8 µs
        # a message with 100 in flight); without one it does not.
        "max_inflight_messages": 0,
        "timeout": CONNECT_TIMEOUT,
    }
    if effective_protocol(config) == 5:
        kwargs["protocol"] = aiomqtt.ProtocolVersion.V5
        kwargs["clean_start"] = not session
        if session:
            kwargs["properties"] = properties(
                PacketTypes.CONNECT, SessionExpiryInterval=SESSION_EXPIRY
            )
    else:
        kwargs["protocol"] = aiomqtt.ProtocolVersion.V311
        kwargs["clean_session"] = not session
    if session:
        topic = availability or status_topic(config.prefix)
        kwargs["will"] = aiomqtt.Will(topic, OFFLINE, qos=1, retain=True)
    if config.tls:
        kwargs["tls_context"] = tls_context(config)
    client = aiomqtt.Client(**kwargs)
    # aiomqtt logs a warning per call beyond this many calls awaiting an answer; a full
    # window is normal here, not a symptom.
    client.pending_calls_threshold = 4 * config.max_inflight + 100
    return client


def tls_context(config: MqttConfig) -> ssl.SSLContext:
    """The client TLS context: system CAs or ``ca_file``, an optional client cert.

    Raises:
        BusError: a file is missing or not a valid certificate / key.
    """
    try:
        context = ssl.create_default_context(cafile=config.ca_file)
        if config.cert_file:
            context.load_cert_chain(config.cert_file, config.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise BusError(f"cannot load the MQTT TLS files: {exc}") from exc
    if config.tls_insecure:
        context.check_hostname = False
    return context


class _PackedOnce(Properties):
    """Properties whose wire form is computed once.

    paho packs a message's properties again on every publish, which costs as much as
    the rest of the publish; these never change after :func:`properties` built them.
    """

    def pack(self) -> bytes:
        packed = self.__dict__.get("_packed")
        if packed is None:
            packed = super().pack()  # type: ignore[no-untyped-call]
            object.__setattr__(self, "_packed", packed)  # paho refuses unknown names
        return bytes(packed)


def properties(packet_type: int, **values: Any) -> Properties:
    """MQTT 5 properties of one packet type (None values left out), packed once."""
    props = _PackedOnce(packet_type)  # type: ignore[no-untyped-call]
    for name, value in values.items():
        if value is not None:
            setattr(props, name, value)
    return props


async def watch_disconnect(client: aiomqtt.Client) -> None:
    """Raise ``MqttError`` as soon as the connection drops.

    The publisher subscribes to nothing, so the message iterator only ends, with an
    ``MqttError``, when the connection is lost; publishes awaiting their
    acknowledgement would otherwise wait for their timeout to notice.
    """
    async for _message in client.messages:
        pass
    raise aiomqtt.MqttError("the connection closed")
