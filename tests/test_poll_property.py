"""Property billing polling against the simulator: published / updated headers, enriched
with Billing/<id>, a day of LastUpdate overlap without duplicates, token renewal."""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from billnotify.clients.property_billing import PropertyBillingClient
from billnotify.config.models import PropertyBillingSource
from billnotify.simulator import ManualClock, Simulator
from billnotify.sources import PropertyBillingSync
from billnotify.store import SqliteStore

PROPERTY = "2eff1042c50c1eda889e61573e3c194c"
OTHER = "7c1d2a9e4b5f4e0d8a3b6c9d0e1f2a3b"


async def _noop_sleep(_: float) -> None:
    return None


@pytest.fixture
def sim_options() -> dict[str, Any]:
    return {"token_ttl": 60.0, "clock": ManualClock()}


@pytest.fixture
async def syncs(
    sim: Simulator, tmp_path: Path
) -> AsyncIterator[tuple[SqliteStore, PropertyBillingClient, list[PropertyBillingSync]]]:
    config = PropertyBillingSource.model_validate(
        {
            "name": "metering",
            "kind": "property_billing",
            "base_url": sim.property_base_url,
            "auth_url": sim.auth_url,
            "username": "sim",
            "password": "sim-password",
            "administrator_ids": ["1234"],
            "properties": [PROPERTY, OTHER],
        }
    )
    client = PropertyBillingClient(
        config.base_url,
        config.auth_url,
        config.username,
        config.password,
        config.administrator_ids,
        sleep=_noop_sleep,
        clock=lambda: sim.clock.now().timestamp(),
    )
    async with SqliteStore(tmp_path / "state.db") as store:
        yield (
            store,
            client,
            [PropertyBillingSync(config, p, client, store) for p in config.properties],
        )
    await client.close()


async def _poll(syncs: list[PropertyBillingSync]) -> None:
    for sync in syncs:
        await sync.poll_once()


async def test_headers_published_updated_and_enriched(sim: Simulator, syncs) -> None:  # type: ignore[no-untyped-def]
    store, _, property_syncs = syncs
    sim.state.add_billing_header(PROPERTY)
    await _poll(property_syncs)
    assert await store.read_events(0) == []  # the baseline
    new = sim.state.add_billing_header(PROPERTY)
    other = sim.state.add_billing_header(OTHER)
    await _poll(property_syncs)
    await _poll(property_syncs)  # the LastUpdate overlap re-reads them: no duplicates
    sim.clock.advance(30)  # type: ignore[attr-defined]
    sim.state.update_billing_header(new["id"])
    await _poll(property_syncs)
    events = [s.event for s in await store.read_events(0)]
    assert collections.Counter(e.type for e in events) == {
        "billing_header.published": 2,
        "billing_header.updated": 1,
    }
    published = {e.subject: e for e in events if e.type == "billing_header.published"}
    assert set(published) == {f"billing_headers/{new['id']}", f"billing_headers/{other['id']}"}
    event = published[f"billing_headers/{new['id']}"]
    assert event.source == "billnotify://metering"
    assert event.data["object"]["propertyUUId"] == PROPERTY
    assert event.data["billing"]["globalDocumentId"].startswith("BE")
    updated = next(e for e in events if e.type == "billing_header.updated")
    assert updated.data["previous"]["updateTimeStamp"] == new["updateTimeStamp"]


async def test_an_expired_token_is_renewed(sim: Simulator, syncs) -> None:  # type: ignore[no-untyped-def]
    store, client, property_syncs = syncs
    await _poll(property_syncs)
    first = client.auth.authentications  # type: ignore[attr-defined]
    sim.clock.advance(120)  # type: ignore[attr-defined]
    sim.state.add_billing_header(PROPERTY)
    await _poll(property_syncs)
    assert client.auth.authentications > first  # type: ignore[attr-defined]
    assert [s.event.type for s in await store.read_events(0)] == ["billing_header.published"]


async def test_the_cursor_is_the_day_in_the_platforms_zone(sim: Simulator, syncs) -> None:  # type: ignore[no-untyped-def]
    store, client, property_syncs = syncs
    config = property_syncs[0].config.model_copy(update={"timezone": "Europe/London"})
    # 23:30 UTC on 15 July is already 00:30 on 16 July in London (British Summer Time).
    now = datetime(2026, 7, 15, 23, 30, tzinfo=UTC)
    sync = PropertyBillingSync(config, PROPERTY, client, store, clock=lambda: now)
    await sync.poll_once()
    assert await store.get_cursor("metering", sync.resource) == "2026-07-16"
