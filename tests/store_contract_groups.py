"""The store contract for grouped rules' members and flushes (see ``store_contract.py``)."""

from __future__ import annotations

import json
from datetime import timedelta

from billnotify.deliveries.base import DeliveryStatus
from billnotify.store import NewDelivery, Store
from billnotify.store.group_records import GroupFlush, GroupMember
from store_contract import NOW

WAIT = NOW + timedelta(seconds=30)


def member(event_id: str, seq: int, key: str = '{"source":"acme"}') -> GroupMember:
    return GroupMember("digest", key, event_id, seq, WAIT)


def flush_of(
    flush_id: str, event_ids: tuple[str, ...], key: str = '{"source":"acme"}'
) -> GroupFlush:
    deliveries = (
        NewDelivery("digest", 0, "webhook", flush_id, 2, exactly_once=False, target="ops"),
        NewDelivery("digest", 1, "email", flush_id, 2, exactly_once=True, target="ops@x"),
    )
    return GroupFlush(
        "digest",
        key,
        flush_id,
        json.dumps({"id": flush_id}),
        event_ids,
        deliveries,
        {},
        NOW + timedelta(minutes=5),
    )


class GroupsContract:
    async def test_members_are_collected_once_and_open_their_group(self, backend: Store) -> None:
        assert await backend.next_group_flush_at() is None
        assert await backend.add_group_members([member("e1", 1), member("e2", 2)], NOW) == 2
        assert await backend.add_group_members([member("e2", 2)], NOW) == 0  # read again
        other = GroupMember("digest", "{}", "e3", 3, NOW + timedelta(seconds=90))
        assert await backend.add_group_members([other], NOW) == 1
        assert await backend.next_group_flush_at() == WAIT
        assert await backend.due_groups(NOW) == []
        due = await backend.due_groups(WAIT)
        assert [(g.rule, g.key, g.flush_at, g.flushes) for g in due] == [
            ("digest", '{"source":"acme"}', WAIT, 0)
        ]
        assert due[0].members == (("e1", 1), ("e2", 2))
        later = await backend.due_groups(NOW + timedelta(hours=1))
        assert [g.key for g in later] == ['{"source":"acme"}', "{}"]
        assert [g.members for g in await backend.due_groups(WAIT, members_limit=1)] == [
            (("e1", 1),)
        ]

    async def test_a_flush_records_its_deliveries_and_digest_in_one_step(
        self, backend: Store
    ) -> None:
        await backend.add_group_members([member("e1", 1), member("e2", 2)], NOW)
        flush = flush_of("grp_1", ("e1", "e2"))
        assert await backend.flush_group(flush, WAIT) == 2
        assert await backend.flush_group(flush, WAIT) == 0  # never twice
        assert await backend.get_digest("grp_1") == json.dumps({"id": "grp_1"})
        assert await backend.get_digest("grp_nope") is None
        rows = await backend.get_deliveries([d.id for d in flush.deliveries])
        assert sorted((d.action_type, d.event_id, d.status) for d in rows) == [
            ("email", "grp_1", DeliveryStatus.PENDING),
            ("webhook", "grp_1", DeliveryStatus.PENDING),
        ]
        assert await backend.next_group_flush_at() == NOW + timedelta(minutes=5)
        due = await backend.due_groups(NOW + timedelta(minutes=5))
        assert [(g.flushes, g.members) for g in due] == [(1, ())]
        # a member collected again after its flush is not collected twice
        assert await backend.add_group_members([member("e2", 2), member("e3", 3)], NOW) == 1
        due = await backend.due_groups(NOW + timedelta(minutes=5))
        assert due[0].members == (("e3", 3),)

    async def test_a_group_with_nothing_new_closes_and_a_new_event_opens_it_again(
        self, backend: Store
    ) -> None:
        await backend.add_group_members([member("e1", 1)], NOW)
        await backend.flush_group(flush_of("grp_1", ("e1",)), WAIT)
        key = '{"source":"acme"}'
        await backend.add_group_members([member("e2", 2)], NOW)
        assert await backend.flush_group(GroupFlush("digest", key), WAIT) == 0
        assert await backend.next_group_flush_at() is not None  # e2 waits: not closed
        await backend.flush_group(flush_of("grp_2", ("e2",)), WAIT)
        assert await backend.flush_group(GroupFlush("digest", key), WAIT) == 0
        assert await backend.next_group_flush_at() is None
        later = NOW + timedelta(hours=1)
        await backend.add_group_members([GroupMember("digest", key, "e3", 3, later)], NOW)
        assert await backend.next_group_flush_at() == later
        due = await backend.due_groups(later)
        assert [(g.flushes, g.members) for g in due] == [(0, (("e3", 3),))]

    async def test_open_groups_and_waiting_members_are_counted(self, backend: Store) -> None:
        assert await backend.count_groups() == (0, 0)
        await backend.add_group_members(
            [member("e1", 1), member("e2", 2), member("e3", 3, "{}")], NOW
        )
        assert await backend.count_groups() == (2, 3)
        await backend.flush_group(flush_of("grp_1", ("e1", "e2")), WAIT)
        assert await backend.count_groups() == (2, 1)  # flushed, still open for its interval
        await backend.flush_group(GroupFlush("digest", '{"source":"acme"}'), WAIT)
        assert await backend.count_groups() == (1, 1)  # nothing new: closed
