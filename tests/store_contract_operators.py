"""The store contract for the record of operator actions (see ``store_contract.py``)."""

from __future__ import annotations

from datetime import timedelta

from billnotify.store import Store
from billnotify.store.records import OperatorAction
from store_contract import NOW


def action(seconds: float, subject: str, what: str = "retry", **kw: str) -> OperatorAction:
    return OperatorAction(NOW + timedelta(seconds=seconds), "cli:ann", what, subject, **kw)


class OperatorLogContract:
    async def test_actions_are_kept_whole_and_read_newest_first(self, backend: Store) -> None:
        assert await backend.operator_actions() == []
        first = action(1, "dlv_a", "resolve_sent", reason="customer confirmed", result="ok")
        second = action(2, "hook-a", "enable_endpoint", reason="moved", result="enabled")
        await backend.record_operator_action(first)
        await backend.record_operator_action(second)
        assert await backend.operator_actions() == [second, first]
        assert await backend.operator_actions(limit=1) == [second]

    async def test_actions_are_read_by_subject(self, backend: Store) -> None:
        for n, subject in enumerate(["dlv_a", "dlv_b", "dlv_a"]):
            await backend.record_operator_action(action(n, subject, reason=f"r{n}"))
        found = await backend.operator_actions("dlv_a")
        assert [(a.subject, a.reason) for a in found] == [("dlv_a", "r2"), ("dlv_a", "r0")]
        assert await backend.operator_actions("dlv_none") == []

    async def test_actions_at_one_instant_keep_their_order(self, backend: Store) -> None:
        for reason in ("one", "two", "three"):
            await backend.record_operator_action(action(0, "dlv_a", reason=reason))
        assert [a.reason for a in await backend.operator_actions("dlv_a")] == [
            "three",
            "two",
            "one",
        ]

    async def test_times_come_back_aware_and_equal(self, backend: Store) -> None:
        await backend.record_operator_action(action(0.5, "dlv_a"))
        (found,) = await backend.operator_actions()
        assert found.at == NOW + timedelta(seconds=0.5)
        assert found.at.utcoffset() == timedelta(0)
