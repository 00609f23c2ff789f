"""Retained per-record state: ``{prefix}/state/{source}/{entity}/{id}`` (SPEC §3).

The store marks a snapshot *dirty* whenever it is written; a page of dirty snapshots
is published (retained) for the entities in ``retain_state`` and then cleared, so the
retained state catches up after an outage instead of being lost with it. Snapshots
of other entities are cleared without publishing. A record the platform deleted
(SPEC §7.5) clears its topic with an empty retained message; a restored one sets it again.

With ``retain_state = []`` nothing is read or cleared: each written record read back
(and parsed) only to clear its flag served nothing (7 µs per change in a profile of
issue 13's burst, too little for the benchmark to tell apart from its noise), and the
flags left set mean that retaining an entity later publishes the state of every record
written since.
"""

from __future__ import annotations

import asyncio
import functools
import json
from typing import TYPE_CHECKING

import aiomqtt
from paho.mqtt.packettypes import PacketTypes

from billnotify.config.models import MqttConfig
from billnotify.publish.connection import effective_protocol, properties
from billnotify.publish.outbox import outbox
from billnotify.publish.topics import state_topic
from billnotify.publish.window import InflightWindow
from billnotify.sources.deletions import DELETED

if TYPE_CHECKING:
    from billnotify.store.base import Snapshots


class StatePublisher:
    """Publishes the store's dirty snapshots as retained messages.

    Args:
        config: the ``[mqtt]`` table (prefix, qos, retain_state, batch_size).
        store: where the dirty snapshots are.
    """

    def __init__(self, config: MqttConfig, store: Snapshots) -> None:
        self._config = config
        self._store = store
        self._retain = frozenset(config.retain_state)
        # at least QoS 1: a snapshot is cleared only once the broker has it
        self._qos = max(1, config.qos)
        self._props = (
            properties(PacketTypes.PUBLISH, ContentType="application/json")
            if effective_protocol(config) == 5
            else None
        )

    async def publish_page(self, client: aiomqtt.Client, window: InflightWindow) -> bool:
        """Publish and clear one page of dirty snapshots; whether there was one.

        Raises:
            Exception: a publish in ``window`` failed (the caller reconnects); the
                page stays dirty and is published again.
        """
        if not self._retain:
            return False
        snapshots = await self._store.dirty_snapshots(limit=self._config.batch_size)
        if not snapshots:
            return False
        box, sent = outbox(client), []
        for snap in snapshots:
            if snap.entity not in self._retain:
                continue
            topic = state_topic(self._config.prefix, snap.source, snap.entity, snap.id)
            payload = (
                b""  # an empty retained message clears the topic: the record is gone
                if DELETED in snap.marks
                else json.dumps(snap.record, separators=(",", ":"), default=str).encode()
            )
            publish = functools.partial(box.publish, topic, payload, self._qos, True, self._props)
            sent.append(await window.submit(None, publish))
        await window.wait(sent)
        # Shielded: a shutdown must not interrupt a store transaction half-way.
        await asyncio.shield(self._store.clear_dirty(snapshots))
        return True
