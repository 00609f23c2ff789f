"""The MQTT publisher: the event log, retained state and availability (SPEC §3).

:class:`MqttPublisher` is the only code that talks to the broker. On each connection
it runs a :class:`~billnotify.publish.pump.LogPump`, which publishes the event log from
the stored position through a window of unacknowledged publishes. When the broker
goes away it reconnects with capped exponential backoff and resumes from that
position: no event is lost, and only the publishes that were in flight can arrive
twice (subscribers de-duplicate on the CloudEvent ``id``). Events leave in log order on
one connection, so each object's events stay in order.

Availability is ``online`` (retained) after connecting and ``offline`` both on a clean
shutdown and, as the Last Will, when the process dies: at ``{prefix}/status``, or, for
one of several instances on one state, at ``{prefix}/status/{instance}`` with the client
id ``{client_id}-{instance}`` (SPEC §7.1). A store that cannot be read
makes it wait and retry, like a broker outage.

No aiomqtt exception leaves this module: they become :class:`~billnotify.errors.BusError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import aiomqtt

from billnotify.config.models import MqttConfig
from billnotify.errors import BusError, StoreError
from billnotify.leases import Role, run_while_held
from billnotify.publish.connection import OFFLINE, ONLINE, make_client, watch_disconnect
from billnotify.publish.outbox import Refused
from billnotify.publish.pump import CONTENT_TYPE, POSITION, LogPump
from billnotify.publish.topics import client_id, status_topic
from billnotify.publish.window import WindowStalled

if TYPE_CHECKING:
    from billnotify.publish.pump import PublishStore
    from billnotify.store.records import StoredEvent

logger = logging.getLogger(__name__)

__all__ = ["CONTENT_TYPE", "POSITION", "MqttPublisher"]

_BACKOFF_START = 0.5
_SHUTDOWN_TIMEOUT = 5.0


class MqttPublisher:
    """Publishes the event log, retained state and availability to one broker.

    Args:
        config: the ``[mqtt]`` table.
        store: the state store (event log, positions, dirty snapshots).
        clock: a monotonic clock in seconds (for outage durations).
        sleep: awaited between reconnection attempts.
        idle_interval: how often an idle publisher looks for dirty snapshots when
            no event is appended.
        publish_timeout: how long one publish may wait for its acknowledgement
            before the connection is considered broken.
        instance: this process's name when several share one state: its own client
            id and availability topic (None: the single-process ones).
        role: the ``publish`` lease: the log is published only while it is held
            (None: always). The connection stays up either way (rule actions use it).
    """

    def __init__(
        self,
        config: MqttConfig,
        store: PublishStore,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        idle_interval: float = 1.0,
        publish_timeout: float | None = None,
        instance: str | None = None,
        role: Role | None = None,
    ) -> None:
        self._config = config
        self._role = role
        self._client_id = client_id(config.client_id, instance)
        self._status = status_topic(config.prefix, instance)
        self._clock = clock
        self._sleep = sleep
        keepalive = config.keepalive.total_seconds()
        self._publish_timeout = publish_timeout or max(30.0, 2 * keepalive)
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._pump = LogPump(
            config,
            store,
            on_ack=self._acked,
            idle_interval=idle_interval,
            publish_timeout=self._publish_timeout,
            role=role,
        )
        self.published_total = 0
        """Messages (events, state, rule actions) acknowledged by the broker since start."""
        self.reconnects = 0
        """Connections that were lost and re-established."""
        self._client_was_connected = False

    # -- public API --------------------------------------------------------------------
    @property
    def last_published_seq(self) -> int:
        """Highest seq published and acknowledged together with every earlier one."""
        return self._pump.last_published_seq

    @property
    def publishing(self) -> bool:
        """Whether this process publishes the log (it holds the ``publish`` lease)."""
        return self._role is None or self._role.lease is not None

    @property
    def connected(self) -> bool:
        """Whether the publisher holds a live connection to the broker."""
        return self._connected.is_set()

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the publisher is connected.

        Raises:
            BusError: not connected within ``timeout`` seconds.
        """
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        except TimeoutError:
            raise BusError(f"not connected to {self._where} within {timeout}s") from None

    async def run(self) -> None:
        """Publish forever; reconnect when the broker goes away.

        Returns only by cancellation, after publishing ``offline`` (retained) and
        disconnecting cleanly.

        Raises:
            BusError: the TLS files cannot be loaded (a configuration problem).
        """
        failures = 0
        lost_at: float | None = None
        while True:
            try:
                await self._session(lost_at)
            except StoreError as exc:
                # the log cannot be read: a session again once it can (the broker is fine)
                self._pump.store_failed(exc)
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from exc
                lost_at = self._clock() if self._client_was_connected else lost_at
                delay = min(
                    self._config.reconnect_max.total_seconds(), _BACKOFF_START * 2**failures
                )
                failures += 1
                await self._sleep(delay)
            except (aiomqtt.MqttError, WindowStalled) as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # the error came while shutting down: never swallow the cancellation
                    raise asyncio.CancelledError from exc
                if isinstance(exc, Refused):
                    # held at the event until the broker takes it (its ACL, a quota): tried
                    # again on a backoff that grows, never skipped
                    lost_at = self._clock()
                    logger.error(
                        "the MQTT broker %s refused a message (%s); the log is held after seq"
                        " %d until the broker accepts it",
                        self._where,
                        exc,
                        self._pump.last_published_seq,
                    )
                elif self._client_was_connected:
                    failures = 0
                    self.reconnects += 1
                    lost_at = self._clock()
                    logger.warning("lost the MQTT broker %s: %s", self._where, exc)
                elif failures == 0:
                    logger.warning("cannot reach the MQTT broker %s: %s", self._where, exc)
                delay = min(
                    self._config.reconnect_max.total_seconds(), _BACKOFF_START * 2**failures
                )
                failures += 1
                logger.info(
                    "MQTT broker %s unavailable (%s); retrying in %.1fs", self._where, exc, delay
                )
                await self._sleep(delay)

    async def publish(
        self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish one message on the live connection (the rules' ``mqtt`` action).

        Raises:
            BusError: not connected, an invalid topic, or the broker did not
                acknowledge the message.
        """
        client = self._client
        if client is None or not self.connected:
            raise BusError(f"not connected to the MQTT broker {self._where}")
        try:
            await client.publish(
                topic, payload, qos=qos, retain=retain, timeout=self._publish_timeout
            )
        except aiomqtt.MqttError as exc:
            raise BusError(f"publish to {topic!r} failed: {exc}") from exc
        except ValueError as exc:  # paho: wildcard in topic, bad qos
            raise BusError(f"cannot publish to {topic!r}: {exc}") from exc
        self._acked()

    async def republish(self, events: Sequence[StoredEvent]) -> int:
        """Publish ``events`` again (``billnotify replay --to mqtt``).

        Uses the live connection when :meth:`run` holds one, otherwise a short-lived
        connection of its own (a distinct client id, no Last Will). The stored
        position does not move.

        Returns:
            How many events were published.

        Raises:
            BusError: the broker cannot be reached or did not acknowledge.
        """
        client = self._client
        if client is not None and self.connected:
            return await self._republish_on(client, events)
        temporary = make_client(
            self._config, f"{self._config.client_id}-replay-{uuid.uuid4().hex[:8]}", session=False
        )
        try:
            async with temporary:
                return await self._republish_on(temporary, events)
        except aiomqtt.MqttError as exc:
            raise BusError(f"replay to {self._where} failed: {exc}") from exc

    # -- one connection ----------------------------------------------------------------
    @property
    def _where(self) -> str:
        return f"{self._config.host}:{self._config.port}"

    async def _session(self, lost_at: float | None) -> None:
        self._client_was_connected = False
        client = make_client(self._config, self._client_id, session=True, availability=self._status)
        async with client:
            self._client_was_connected = True
            try:
                await self._serve(client, lost_at)
            except (aiomqtt.MqttError, WindowStalled):
                raise
            except BaseException:
                # Cancelled (clean shutdown) or failing: a clean DISCONNECT suppresses
                # the Last Will, so say it ourselves, and keep what was acknowledged.
                await self._say_offline(client)
                with contextlib.suppress(Exception):
                    await self._pump.save_position(self._pump.last_published_seq)
                raise
            finally:
                self._client = None
                self._connected.clear()

    async def _serve(self, client: aiomqtt.Client, lost_at: float | None) -> None:
        await client.publish(
            self._status,
            ONLINE,
            qos=1,
            retain=True,
            timeout=self._publish_timeout,
        )
        self._client = client
        self._connected.set()
        if lost_at is None:
            logger.info("connected to the MQTT broker %s", self._where)
        else:
            logger.info(
                "reconnected to the MQTT broker %s after %.1fs",
                self._where,
                self._clock() - lost_at,
            )
        pump = asyncio.create_task(
            run_while_held(self._role, functools.partial(self._pump.run, client)), name="mqtt-pump"
        )
        watch = asyncio.create_task(watch_disconnect(client), name="mqtt-watch")
        try:
            done, _pending = await asyncio.wait({pump, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, watch):
                task.cancel()
            await asyncio.gather(pump, watch, return_exceptions=True)
        for task in done:
            task.result()

    async def _say_offline(self, client: aiomqtt.Client) -> None:
        try:
            await client.publish(
                self._status,
                OFFLINE,
                qos=1,
                retain=True,
                timeout=_SHUTDOWN_TIMEOUT,
            )
        except aiomqtt.MqttError as exc:
            logger.warning("could not publish 'offline' before disconnecting: %s", exc)
        else:
            logger.info("published 'offline'; disconnecting from %s", self._where)

    async def _republish_on(self, client: aiomqtt.Client, events: Sequence[StoredEvent]) -> int:
        try:
            await self._pump.republish(client, events)
        except (aiomqtt.MqttError, WindowStalled) as exc:
            raise BusError(f"replay to {self._where} failed: {exc}") from exc
        return len(events)

    def _acked(self) -> None:
        self.published_total += 1
