"""``billnotify state copy`` carries the answers chained actions read (SPEC §7.1, §7.5):
a dependent still ``waiting`` in the SQLite state finds its predecessor's answer on
PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

import pg
from billnotify.deliveries.base import DeliveryStatus
from billnotify.store import NewDelivery, SqliteStore
from billnotify.store.postgres import PgStore
from billnotify.store.transfer import copy_state

NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


async def test_kept_answers_and_waiting_dependents_are_copied(tmp_path: Path) -> None:
    reason = pg.available()
    if reason:
        pytest.skip(reason)
    url = pg.shared().database()
    link = NewDelivery("r", 0, "invoice_action", "evt_1", 1, exactly_once=False)
    mail = NewDelivery(
        "r", 1, "email", "evt_1", 1, exactly_once=True, status=DeliveryStatus.WAITING
    )
    async with SqliteStore(tmp_path / "state.db") as store:
        await store.record_deliveries([link, mail], "rules", 1, NOW)
        await store.keep_result(link.id, '{"download_url": "https://x/d/1"}', NOW)
    report = await copy_state(tmp_path / "state.db", url)
    assert report.counts["delivery_results"] == 1
    target = PgStore(url)
    await target.open()
    try:
        assert await target.get_results([link.id]) == {link.id: '{"download_url": "https://x/d/1"}'}
        assert [d.id for d in await target.chained_deliveries()] == [mail.id]
    finally:
        await target.close()
