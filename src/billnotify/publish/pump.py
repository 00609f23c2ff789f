"""The event log on one MQTT connection: from the stored position, in log order, windowed.

:class:`LogPump` reads the store's event log from the consumer position ``mqtt`` and
publishes every event, keeping a window of up to ``max_inflight`` unacknowledged
publishes, and stores as its position only a ``seq`` up to which *everything* was
acknowledged; it publishes retained state as snapshots turn dirty. The
:class:`~billnotify.publish.mqtt.MqttPublisher` owns the connection and runs a pump on
each one it gets.

A store that cannot be written (a full disk) does not stop it: a position that cannot
be saved is saved later (until then a restart publishes a little again). Either is
logged once per episode.

With several processes on one store only the holder of the ``publish`` lease runs a
pump, so events leave in log order from one publisher: a pump looks at its lease before
each batch and writes its position fenced by it, so one that lost the lease (a paused
process that woke up) stops instead of moving the position of the new holder.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from billnotify.config.models import MqttConfig
from billnotify.errors import FencedError, StoreError
from billnotify.publish.connection import effective_protocol, properties
from billnotify.publish.outbox import Outbox, outbox
from billnotify.publish.state import StatePublisher
from billnotify.publish.topics import event_topic, logged_event_topic
from billnotify.publish.window import InflightWindow, Publish

if TYPE_CHECKING:
    from billnotify.leases import Role
    from billnotify.store.base import EventLog, Snapshots
    from billnotify.store.records import LogEntry, StoredEvent

    class PublishStore(EventLog, Snapshots, Protocol):
        """What the publisher needs of the store: the log it follows (with its position)
        and the snapshots it publishes retained."""


logger = logging.getLogger(__name__)

POSITION = "mqtt"
"""The consumer name of the publisher's position in the event log."""
CONTENT_TYPE = "application/cloudevents+json"


class LogPump:
    """Publishes the event log and retained state on the connection it is given.

    Args:
        config: the ``[mqtt]`` table.
        store: the state store (event log, positions, dirty snapshots).
        on_ack: called once for every message the broker acknowledges.
        idle_interval: how often an idle pump looks for dirty snapshots when no event
            is appended.
        publish_timeout: how long the window may wait for an acknowledgement before
            the connection is considered broken.
        role: the ``publish`` lease this pump works under (None: a single process).
    """

    def __init__(
        self,
        config: MqttConfig,
        store: PublishStore,
        *,
        on_ack: Callable[[], None],
        idle_interval: float,
        publish_timeout: float,
        role: Role | None = None,
    ) -> None:
        self._config = config
        self._role = role
        self._store = store
        self._on_ack = on_ack
        self._idle_interval = idle_interval
        self._publish_timeout = publish_timeout
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
        self._stored_seq = 0
        self._store_failing = False

    async def run(self, client: aiomqtt.Client) -> None:
        """Publish the log from the stored position, then follow it as it grows.

        The next batch is read while the current one is published and the position
        is stored in the background, so the window never runs dry waiting for SQLite.
        Returns only by an error (of the connection or the store, or
        :class:`~billnotify.errors.FencedError` once the lease is lost) or cancellation.
        """
        store = self._store
        limit = self._config.batch_size
        loop = asyncio.get_running_loop()
        self._stored_seq = await store.get_position(POSITION)
        # acknowledged on the previous connection, but not stored before it broke
        await self.save_position(self.last_published_seq)
        position = self.last_published_seq = self._stored_seq
        window = self._window(acked=position)
        box = outbox(client)
        reader = asyncio.create_task(store.read_log(position, limit))
        saver: asyncio.Task[None] | None = None
        state_due = loop.time()
        try:
            while True:
                batch = await reader
                if self._role is not None:
                    self._role.fence()  # a lapsed lease stops the pump before a publish
                if batch:
                    sent = batch[-1].seq
                    reader = asyncio.create_task(store.read_log(sent, limit))
                    for entry in batch:
                        await window.submit(entry.seq, self._entry_publisher(box, entry))
                    acked = self.last_published_seq = window.advance()
                    if saver is not None and saver.done():
                        saver.result()  # a store failure ends the pump
                        saver = None
                    if saver is None and acked > self._stored_seq:
                        saver = asyncio.create_task(self.save_position(acked))
                    if loop.time() >= state_due:  # keep retained state flowing in a backlog
                        await self._publish_state(client, window)
                        state_due = loop.time() + self._idle_interval
                    continue
                # caught up: settle everything, then sleep until the log grows
                if saver is not None:
                    await saver
                    saver = None
                self.last_published_seq = await window.drain()
                await self.save_position(self.last_published_seq)
                while await self._publish_state(client, window):
                    pass
                state_due = loop.time() + self._idle_interval
                await self._wait_for_events(window.acked)
                reader = asyncio.create_task(store.read_log(window.acked, limit))
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            self.last_published_seq = max(self.last_published_seq, window.settle())
            await window.close()
            if saver is not None:
                await asyncio.gather(saver, return_exceptions=True)

    async def republish(self, client: aiomqtt.Client, events: Sequence[StoredEvent]) -> None:
        """Publish ``events`` on ``client`` and wait for every acknowledgement; the
        stored position does not move.

        Raises:
            aiomqtt.MqttError: the connection failed.
            WindowStalled: the broker stopped acknowledging.
        """
        window, box = self._window(), outbox(client)
        try:
            for stored in events:
                await window.submit(stored.seq, self._event_publisher(box, stored))
            await window.drain()
        finally:
            await window.close()

    async def save_position(self, acked: int) -> None:
        """Store ``acked`` as the position; one that cannot be stored now is later.

        Raises:
            FencedError: the ``publish`` lease moved to another process.
        """
        if acked > self._stored_seq:
            fence = self._role.fence() if self._role is not None else None
            try:
                # Shielded: a shutdown must not interrupt a store transaction half-way.
                await asyncio.shield(self._store.set_position(POSITION, acked, fence=fence))
            except FencedError:
                raise
            except StoreError as exc:
                self.store_failed(exc)
                return
            self._store_recovered()
            self._stored_seq = max(self._stored_seq, acked)

    def store_failed(self, exc: StoreError) -> None:
        """Log a store failure, once per episode."""
        if not self._store_failing:
            self._store_failing = True
            logger.warning("MQTT publisher: %s; publishing on, retrying the store", exc)

    def _store_recovered(self) -> None:
        if self._store_failing:
            self._store_failing = False
            logger.info("MQTT publisher: the store is writable again")

    def _window(self, acked: int = 0) -> InflightWindow:
        return InflightWindow(
            self._config.max_inflight,
            acked=acked,
            on_ack=self._on_ack,
            stall_timeout=self._publish_timeout,
        )

    async def _publish_state(self, client: aiomqtt.Client, window: InflightWindow) -> bool:
        """A page of retained state; none while the store cannot clear what was sent
        (it stays dirty and goes again later)."""
        try:
            return await self._state.publish_page(client, window)
        except StoreError as exc:
            self.store_failed(exc)
            return False

    def _event_publisher(self, box: Outbox, stored: StoredEvent) -> Publish:
        event = stored.event
        topic = event_topic(self._config.prefix, event)
        return self._publisher(box, stored.seq, event.id, topic, event.to_json())

    def _entry_publisher(self, box: Outbox, entry: LogEntry) -> Publish:
        """An event as logged, sent as it was logged: it is byte for byte what the parsed
        event would serialise to (``tests/test_events_json.py``), and its topic is made of
        the columns logged beside it (``tests/test_mqtt_topics.py``): it is never parsed."""
        topic = logged_event_topic(self._config.prefix, entry.type, entry.source, entry.subject)
        return self._publisher(box, entry.seq, entry.id, topic, entry.json)

    def _publisher(self, box: Outbox, seq: int, event_id: str, topic: str, payload: str) -> Publish:
        try:
            topic.encode()
        except UnicodeEncodeError as exc:  # a lone surrogate in an id: never publishable
            logger.error("event %s (seq %d) has no valid topic: %s; skipped", event_id, seq, exc)
            return _nothing
        # No timer per message: the window watches for stalls.
        return functools.partial(
            box.publish, topic, payload.encode(), self._config.qos, False, self._event_props
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


async def _nothing() -> None:
    """Stands in for an event that cannot be published, so the position moves on."""
