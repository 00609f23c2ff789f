"""The MQTT publisher: the event log, retained state and availability (SPEC §3).

:class:`MqttPublisher` is the only code that talks to the broker. It reads the store's
event log from the consumer position ``mqtt`` and publishes every event, keeping a
window of up to ``max_inflight`` unacknowledged publishes, and stores as its position
only a ``seq`` up to which *everything* was acknowledged. When the broker goes away
it reconnects with capped exponential backoff and resumes from that position: no
event is lost, and only the publishes that were in flight can arrive twice
(subscribers de-duplicate on the CloudEvent ``id``). Events leave in log order on
one connection, so each object's events stay in order.

Retained state follows the store's *dirty* snapshots; availability is ``online``
(retained) after connecting and ``offline`` both on a clean shutdown and, as the
Last Will, when the process dies.

A store that cannot be written (a full disk) does not stop it: a position that cannot
be saved is saved later (until then a restart publishes a little again), and a store
that cannot be read makes it wait and retry, like a broker outage. Either is logged once
per episode.

No aiomqtt exception leaves this module: they become :class:`~billnotify.errors.BusError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from billnotify.config.models import MqttConfig
from billnotify.errors import BusError, StoreError
from billnotify.publish.connection import (
    OFFLINE,
    ONLINE,
    effective_protocol,
    make_client,
    properties,
    watch_disconnect,
)
from billnotify.publish.state import StatePublisher
from billnotify.publish.topics import event_topic, status_topic
from billnotify.publish.window import InflightWindow, Publish, WindowStalled

if TYPE_CHECKING:
    from billnotify.store.base import Store
    from billnotify.store.records import StoredEvent

logger = logging.getLogger(__name__)

POSITION = "mqtt"
"""The consumer name of the publisher's position in the event log."""
CONTENT_TYPE = "application/cloudevents+json"
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
    """

    def __init__(
        self,
        config: MqttConfig,
        store: Store,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        idle_interval: float = 1.0,
        publish_timeout: float | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._clock = clock
        self._sleep = sleep
        self._idle_interval = idle_interval
        keepalive = config.keepalive.total_seconds()
        self._publish_timeout = publish_timeout or max(30.0, 2 * keepalive)
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._state = StatePublisher(config, store)
        self._event_props: Properties | None = None
        if effective_protocol(config) == 5:
            expiry = config.message_expiry
            self._event_props = properties(
                PacketTypes.PUBLISH,
                ContentType=CONTENT_TYPE,
                MessageExpiryInterval=max(1, int(expiry.total_seconds())) if expiry else None,
            )
        self.last_published_seq = 0
        """Highest seq published and acknowledged together with every earlier one."""
        self.published_total = 0
        """Messages (events, state, rule actions) acknowledged by the broker since start."""
        self.reconnects = 0
        """Connections that were lost and re-established."""
        self._client_was_connected = False
        self._stored_seq = 0
        self._store_failing = False

    # -- public API --------------------------------------------------------------------
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
                self._store_failed(exc)
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
                if self._client_was_connected:
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
        client = make_client(self._config, self._config.client_id, session=True)
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
                    await self._save_position(self.last_published_seq)
                raise
            finally:
                self._client = None
                self._connected.clear()

    async def _serve(self, client: aiomqtt.Client, lost_at: float | None) -> None:
        await client.publish(
            status_topic(self._config.prefix),
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
        pump = asyncio.create_task(self._pump(client), name="mqtt-pump")
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
                status_topic(self._config.prefix),
                OFFLINE,
                qos=1,
                retain=True,
                timeout=_SHUTDOWN_TIMEOUT,
            )
        except aiomqtt.MqttError as exc:
            logger.warning("could not publish 'offline' before disconnecting: %s", exc)
        else:
            logger.info("published 'offline'; disconnecting from %s", self._where)

    async def _pump(self, client: aiomqtt.Client) -> None:
        """Publish the log from the stored position, then follow it as it grows.

        The next batch is read while the current one is published and the position
        is stored in the background, so the window never runs dry waiting for SQLite.
        """
        store = self._store
        limit = self._config.batch_size
        loop = asyncio.get_running_loop()
        self._stored_seq = await store.get_position(POSITION)
        # acknowledged on the previous connection, but not stored before it broke
        await self._save_position(self.last_published_seq)
        position = self.last_published_seq = self._stored_seq
        window = self._window(acked=position)
        reader = asyncio.create_task(store.read_events(position, limit))
        saver: asyncio.Task[None] | None = None
        state_due = loop.time()
        try:
            while True:
                batch = await reader
                if batch:
                    sent = batch[-1].seq
                    reader = asyncio.create_task(store.read_events(sent, limit))
                    for stored in batch:
                        await window.submit(stored.seq, self._event_publisher(client, stored))
                    acked = self.last_published_seq = window.advance()
                    if saver is not None and saver.done():
                        saver.result()  # a store failure ends the pump
                        saver = None
                    if saver is None and acked > self._stored_seq:
                        saver = asyncio.create_task(self._save_position(acked))
                    if loop.time() >= state_due:  # keep retained state flowing in a backlog
                        await self._publish_state(client, window)
                        state_due = loop.time() + self._idle_interval
                    continue
                # caught up: settle everything, then sleep until the log grows
                if saver is not None:
                    await saver
                    saver = None
                self.last_published_seq = await window.drain()
                await self._save_position(self.last_published_seq)
                while await self._publish_state(client, window):
                    pass
                state_due = loop.time() + self._idle_interval
                await self._wait_for_events(window.acked)
                reader = asyncio.create_task(store.read_events(window.acked, limit))
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            self.last_published_seq = max(self.last_published_seq, window.settle())
            await window.close()
            if saver is not None:
                await asyncio.gather(saver, return_exceptions=True)

    def _window(self, acked: int = 0) -> InflightWindow:
        return InflightWindow(
            self._config.max_inflight,
            acked=acked,
            on_ack=self._acked,
            stall_timeout=self._publish_timeout,
        )

    async def _save_position(self, acked: int) -> None:
        """Store ``acked`` as the position; one that cannot be stored now is later."""
        if acked > self._stored_seq:
            try:
                # Shielded: a shutdown must not interrupt a store transaction half-way.
                await asyncio.shield(self._store.set_position(POSITION, acked))
            except StoreError as exc:
                self._store_failed(exc)
                return
            self._store_recovered()
            self._stored_seq = max(self._stored_seq, acked)

    async def _publish_state(self, client: aiomqtt.Client, window: InflightWindow) -> bool:
        """A page of retained state; none while the store cannot clear what was sent
        (it stays dirty and goes again later)."""
        try:
            return await self._state.publish_page(client, window)
        except StoreError as exc:
            self._store_failed(exc)
            return False

    def _store_failed(self, exc: StoreError) -> None:
        if not self._store_failing:
            self._store_failing = True
            logger.warning("MQTT publisher: %s; publishing on, retrying the store", exc)

    def _store_recovered(self) -> None:
        if self._store_failing:
            self._store_failing = False
            logger.info("MQTT publisher: the store is writable again")

    def _event_publisher(self, client: aiomqtt.Client, stored: StoredEvent) -> Publish:
        event = stored.event
        topic = event_topic(self._config.prefix, event)
        try:
            topic.encode()
        except UnicodeEncodeError as exc:  # a lone surrogate in an id: never publishable
            logger.error(
                "event %s (seq %d) has no valid topic: %s; skipped", event.id, stored.seq, exc
            )
            return _nothing
        # The aiomqtt call itself, with no wrapper: this is the hot path.
        return functools.partial(
            client.publish,
            topic,
            event.to_json().encode(),
            qos=self._config.qos,
            retain=False,
            properties=self._event_props,
            timeout=math.inf,  # the window watches for stalls; no timer per message
        )

    async def _wait_for_events(self, sent: int) -> None:
        appended = self._store.appended
        async with appended:
            # Checked under the condition's lock: an append that lands after this
            # check notifies only once we wait, so it cannot be missed.
            if await self._store.last_seq() > sent:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._idle_interval):
                    await appended.wait()

    async def _republish_on(self, client: aiomqtt.Client, events: Sequence[StoredEvent]) -> int:
        window = self._window()
        try:
            for stored in events:
                await window.submit(stored.seq, self._event_publisher(client, stored))
            await window.drain()
        except (aiomqtt.MqttError, WindowStalled) as exc:
            raise BusError(f"replay to {self._where} failed: {exc}") from exc
        finally:
            await window.close()
        return len(events)

    def _acked(self) -> None:
        self.published_total += 1


async def _nothing() -> None:
    """Stands in for an event that cannot be published, so the position moves on."""
