"""Publishes on one aiomqtt connection, each a future that the broker's acknowledgement
settles.

``aiomqtt.Client.publish`` is a coroutine: the publisher ran each message in a task of
its own, which waited on an ``asyncio.Event`` that aiomqtt sets from paho's
``on_publish``, and aiomqtt scans every call awaiting an answer twice per publish (a
warning threshold). A window of 100 publishes cost some 80 to 100 µs of CPU per message
that way, against about 50 with paho's ``publish`` and a future settled from
``on_publish`` (``docs/performance.md``, issue 13). :class:`Outbox` does the latter on
the paho client aiomqtt keeps (``Client._client``, in every aiomqtt 2.x release; the
dependency is pinned below 3 and ``tests/test_outbox.py`` holds it), and hands every
acknowledgement that is not its own to aiomqtt, so aiomqtt's own publishes on the
same connection (availability, status) work as before.

Outcomes: a publish paho refuses fails with ``aiomqtt.MqttCodeError``, as aiomqtt's
would; so does one the broker refuses (an MQTT 5 acknowledgement with a failure reason
code, such as ``Not authorized`` for a topic its ACL denies), which aiomqtt counted as
sent: the publisher then keeps its position and tries again, rather than moving past an
event no subscriber got. A connection lost leaves the futures pending (the publisher
watches the connection and abandons its window, as it did with the tasks).
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

_OUTBOXES: weakref.WeakKeyDictionary[aiomqtt.Client, Outbox] = weakref.WeakKeyDictionary()


class Refused(aiomqtt.MqttCodeError):
    """The broker acknowledged a message with a failure reason code: it did not take it
    (the connection itself is fine)."""


def outbox(client: aiomqtt.Client) -> Outbox:
    """The outbox of ``client`` (one per connection, made on first use)."""
    box = _OUTBOXES.get(client)
    if box is None:
        box = _OUTBOXES[client] = Outbox(client)
    return box


class Outbox:
    """Publishes on ``client`` as futures (use :func:`outbox`: one per client)."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self._paho: paho.Client = client._client
        self._waiting: dict[int, asyncio.Future[None]] = {}
        self._theirs = self._paho.on_publish
        self._paho.on_publish = self._acknowledged

    def __len__(self) -> int:
        return len(self._waiting)

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> asyncio.Future[None]:
        """Send one message; the future is done when the broker has it (QoS 0: once
        written to the connection)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        info = self._paho.publish(topic, payload, qos, retain, properties)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            future.set_exception(aiomqtt.MqttCodeError(info.rc, "Could not publish message"))
        elif qos == 0 and info.is_published():  # a QoS 1 or 2 answer is read later
            future.set_result(None)
        else:
            self._waiting[info.mid] = future
        return future

    def _acknowledged(self, client: paho.Client, userdata: Any, mid: int, *rest: Any) -> None:
        future = self._waiting.pop(mid, None)
        if future is None:
            if self._theirs is not None:
                self._theirs(client, userdata, mid, *rest)
        elif future.done():  # abandoned meanwhile
            pass
        elif rest and isinstance(reason := rest[0], ReasonCode) and reason.is_failure:
            future.set_exception(Refused(reason))  # "[code:135] Not authorized"
        else:
            future.set_result(None)
