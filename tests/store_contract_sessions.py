"""The store contract for the console's sessions (see ``store_contract.py``)."""

from __future__ import annotations

from datetime import timedelta

from billnotify.store import Store
from billnotify.store.records import ConsoleSession
from store_contract import NOW


def session(key: str, seen: float = 0, *, lasts: float = 3600, **kw: str) -> ConsoleSession:
    """A session opened at NOW, seen ``seen`` seconds later, ending ``lasts`` after NOW."""
    at = NOW + timedelta(seconds=seen)
    return ConsoleSession(
        key,
        kw.get("who", "console:ann"),
        kw.get("mark", "m"),
        NOW,
        at,
        NOW + timedelta(seconds=lasts),
    )


class ConsoleSessionsContract:
    async def test_a_session_is_kept_whole_and_found_by_its_key(self, backend: Store) -> None:
        assert await backend.get_console_session("k1") is None
        kept = session("k1", 0.5, who="console:zoë", mark="abc")
        await backend.add_console_session(kept)
        found = await backend.get_console_session("k1")
        assert found == kept
        assert found is not None and found.seen_at.utcoffset() == timedelta(0)
        assert await backend.get_console_session("k2") is None

    async def test_touch_moves_seen_and_sets_the_flash_until_replaced(self, backend: Store) -> None:
        await backend.add_console_session(session("k1"))
        later = NOW + timedelta(minutes=5)
        assert await backend.touch_console_session("k1", later, "retry: dead -> pending")
        found = await backend.get_console_session("k1")
        assert found is not None
        assert (found.seen_at, found.flash) == (later, "retry: dead -> pending")
        assert await backend.touch_console_session("k1", later + timedelta(seconds=1))
        found = await backend.get_console_session("k1")
        assert found is not None and found.flash == "retry: dead -> pending"  # None keeps it
        assert await backend.touch_console_session("k1", later, "")
        found = await backend.get_console_session("k1")
        assert found is not None and found.flash == ""
        assert not await backend.touch_console_session("gone", later)
        assert await backend.get_console_session("gone") is None

    async def test_drop_ends_a_session_once(self, backend: Store) -> None:
        await backend.add_console_session(session("k1"))
        await backend.add_console_session(session("k2"))
        assert await backend.drop_console_session("k1")
        assert not await backend.drop_console_session("k1")
        assert await backend.get_console_session("k1") is None
        assert await backend.get_console_session("k2") is not None

    async def test_prune_drops_ended_idle_and_surplus_sessions(self, backend: Store) -> None:
        await backend.add_console_session(session("ended", 50, lasts=60))
        await backend.add_console_session(session("idle", 10))
        for n in range(4):
            await backend.add_console_session(session(f"live{n}", 100 + n))
        now = NOW + timedelta(seconds=60)
        assert await backend.prune_console_sessions(now, NOW + timedelta(seconds=30), 3) == 3
        kept = [
            k
            for k in ("ended", "idle", "live0", "live1", "live2", "live3")
            if await backend.get_console_session(k) is not None
        ]
        assert kept == ["live1", "live2", "live3"]  # the three seen last
        assert await backend.prune_console_sessions(now, NOW, 10) == 0
