"""DeliveryWorker state machine: a real SqliteStore, fake executors, an injected clock.

The executors here are fakes of our own ``ActionExecutor`` interface, so that each
outcome can be produced on demand; the end-to-end tests use the real ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from billnotify.actions.base import Rendered
from billnotify.components import delivery_settings, rule_settings
from billnotify.config.loader import parse_config
from billnotify.config.models import Action, Config, Rule
from billnotify.deliveries.base import AttemptResult, DeliveryStatus, Outcome
from billnotify.deliveries.worker import DeliveryWorker
from billnotify.events import CloudEvent, build_event
from billnotify.rules.engine import RuleHandler
from billnotify.store import SqliteStore
from billnotify.templating import TemplateRenderer
from servers import Clock

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@dataclass
class FakeExecutor:
    """Answers each execute() with the next scripted result (the last one repeats)."""

    action_type: str
    results: list[AttemptResult] = field(default_factory=list)
    once: bool = False
    calls: list[tuple[str, int]] = field(default_factory=list)
    gate: asyncio.Event | None = None
    raises: Exception | None = None
    running: int = 0
    max_running: int = 0

    def exactly_once(self, action: Action) -> bool:
        return self.once

    def target(self, action: Action, event: CloudEvent) -> str:
        return f"{self.action_type}:{event.object_id}"

    async def render(self, action: Action, event: CloudEvent, rule: Rule) -> Rendered:
        return Rendered(self.action_type, self.target(action, event), {"subject": event.id})

    async def execute(
        self, action: Action, event: CloudEvent, rule: Rule, *, delivery_id: str, attempt: int
    ) -> AttemptResult:
        self.calls.append((delivery_id, attempt))
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.raises is not None:
                raise self.raises
            index = min(len(self.calls), len(self.results)) - 1
            return self.results[index] if self.results else AttemptResult(Outcome.SUCCESS, 200)
        finally:
            self.running -= 1

    async def close(self) -> None:
        pass


def _config(schedule: list[str] | None = None, **service: Any) -> Config:
    hook: dict[str, Any] = {
        "name": "ops",
        "url": "http://127.0.0.1:9/hook",
        "secret": SECRET,
        "allow_private": True,
    }
    if schedule is not None:
        hook["retry_schedule"] = schedule
    return parse_config(
        {
            "service": service,
            "sources": [
                {"name": "acme", "kind": "billing_platform", "base_url": "http://x", "api_key": "k"}
            ],
            "webhooks": [hook],
            "rules": [
                {
                    "name": "hook",
                    "on": ["billing_task.*"],
                    "actions": [{"type": "webhook", "endpoint": "ops"}],
                },
                {
                    "name": "mail",
                    "on": ["invoice.*"],
                    "actions": [{"type": "invoice_action", "action": "email"}],
                },
            ],
        },
        base_dir=Path("."),
    )


def _event(n: int, entity: str = "billing_task") -> CloudEvent:
    return build_event(
        source="acme",
        entity=entity,
        object_id=str(n),
        type_=f"{entity}.created",
        key=str(n),
        time=T0,
        data={"object": {"id": str(n)}},
    )


@dataclass
class Rig:
    store: SqliteStore
    clock: Clock
    config: Config
    hook: FakeExecutor
    mail: FakeExecutor
    tmp: Path

    @property
    def executors(self) -> dict[str, Any]:
        return {"webhook": self.hook, "invoice_action": self.mail}

    async def emit(self, *events: CloudEvent) -> None:
        await self.store.commit("acme", [], list(events))
        handler = RuleHandler(
            rule_settings(self.config),
            self.store,
            TemplateRenderer(self.tmp),
            self.executors,
            self.clock,
        )
        await handler.catch_up()

    def worker(self, config: Config | None = None, **kw: Any) -> DeliveryWorker:
        return DeliveryWorker(
            delivery_settings(config or self.config), self.store, self.executors, self.clock, **kw
        )

    async def invoice_action_answered(self, result: AttemptResult):
        """One invoice event whose invoice action one worker pass answers with ``result``;
        returns its delivery."""
        self.mail.results = [result]
        await self.emit(_event(1, "invoice"))
        await self.worker().run_once()
        return await self.only()

    async def only(self, status: DeliveryStatus | None = None):
        rows = await self.store.list_deliveries([status] if status else None)
        assert len(rows) == 1, rows
        full = await self.store.get_delivery(rows[0].id)
        assert full is not None
        return full


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Callable[..., Rig]]:
    stores: list[SqliteStore] = []

    async def make(config: Config | None = None) -> Rig:
        store = SqliteStore(tmp_path / f"state{len(stores)}.db")
        await store.open()
        stores.append(store)
        return Rig(
            store,
            Clock(T0),
            config or _config(),
            FakeExecutor("webhook"),
            FakeExecutor("invoice_action", once=True),
            tmp_path,
        )

    yield make
    for store in stores:
        await store.close()


async def test_success_is_recorded_with_one_attempt(rig) -> None:
    r = await rig()
    await r.emit(_event(1))
    worker = r.worker()
    assert await worker.run_once() == 1
    row = await r.only()
    assert row.status is DeliveryStatus.SUCCEEDED and row.attempts == 1
    assert row.history[0].outcome is Outcome.SUCCESS
    assert worker.attempts["success"] == 1
    assert await worker.run_once() == 0


async def test_the_endpoints_retry_schedule_is_honoured_then_dead(rig) -> None:
    r = await rig(_config(["0s", "10s", "1m"]))
    r.hook.results = [AttemptResult(Outcome.RETRYABLE, 503, "HTTP 503")]
    await r.emit(_event(1))
    worker = r.worker()
    await worker.run_once()
    row = await r.only()
    assert row.status is DeliveryStatus.RETRY_SCHEDULED
    assert row.next_attempt_at == T0 + timedelta(seconds=10)
    r.clock.advance(9)
    assert await worker.run_once() == 0  # not yet due
    r.clock.advance(1)
    assert await worker.run_once() == 1
    row = await r.only()
    assert row.next_attempt_at == T0 + timedelta(seconds=70)
    r.clock.advance(60)
    await worker.run_once()
    row = await r.only()
    assert row.status is DeliveryStatus.DEAD and row.attempts == 3
    assert "gave up after 3" in (row.last_error or "")
    assert [c[1] for c in r.hook.calls] == [1, 2, 3]
    assert worker.attempts["retryable"] == 3


async def test_retry_after_wins_over_a_shorter_slot(rig) -> None:
    r = await rig(_config(["0s", "10s", "1m"]))
    r.hook.results = [
        AttemptResult(Outcome.RETRYABLE, 429, "HTTP 429", retry_after=120),
        AttemptResult(Outcome.SUCCESS, 200),
    ]
    await r.emit(_event(1))
    worker = r.worker()
    await worker.run_once()
    row = await r.only()
    assert row.next_attempt_at == T0 + timedelta(seconds=120)
    assert row.last_status_code == 429
    r.clock.advance(119)
    assert await worker.run_once() == 0
    r.clock.advance(1)
    await worker.run_once()
    assert (await r.only()).status is DeliveryStatus.SUCCEEDED


async def test_other_actions_use_the_default_schedule(rig) -> None:
    r = await rig()
    row = await r.invoice_action_answered(
        AttemptResult(Outcome.RETRYABLE, 500, "500601 Email sending failed")
    )
    assert row.status is DeliveryStatus.RETRY_SCHEDULED
    assert row.next_attempt_at == T0 + timedelta(seconds=5)


async def test_410_disables_the_endpoint_and_later_deliveries_die_unsent(rig) -> None:
    r = await rig()
    r.hook.results = [AttemptResult(Outcome.PERMANENT, 410, "HTTP 410", disable_endpoint=True)]
    await r.emit(_event(1))
    worker = r.worker()
    await worker.run_once()
    assert "ops" in await r.store.disabled_endpoints()
    await r.emit(_event(2))
    await worker.run_once()
    assert len(r.hook.calls) == 1
    rows = {d.event_id: d for d in await r.store.list_deliveries()}
    second = rows[_event(2).id]
    assert second.status is DeliveryStatus.DEAD and second.attempts == 0
    assert "disabled" in (second.last_error or "")


async def test_permanent_failure_is_dead_at_once(rig) -> None:
    r = await rig()
    row = await r.invoice_action_answered(
        AttemptResult(Outcome.PERMANENT, 400, "400702 Invalid email address")
    )
    assert row.status is DeliveryStatus.DEAD and row.last_error == "400702 Invalid email address"


async def test_an_uncertain_answer_parks_exactly_once_deliveries(rig) -> None:
    r = await rig()
    r.mail.results = [AttemptResult(Outcome.UNCERTAIN, None, "connection lost after sending")]
    r.hook.results = [AttemptResult(Outcome.UNCERTAIN, None, "connection lost")]
    await r.emit(_event(1, "invoice"), _event(2))
    await r.worker().run_once()
    rows = {d.action_type: d for d in await r.store.list_deliveries()}
    assert rows["invoice_action"].status is DeliveryStatus.UNCERTAIN
    assert rows["webhook"].status is DeliveryStatus.RETRY_SCHEDULED


async def test_an_executor_that_raises_is_uncertain_not_a_crash(rig) -> None:
    r = await rig()
    r.mail.raises = RuntimeError("bug")
    await r.emit(_event(1, "invoice"))
    await r.worker().run_once()
    row = await r.only()
    assert row.status is DeliveryStatus.UNCERTAIN and "bug" in (row.last_error or "")


async def test_a_crash_mid_send_is_uncertain_or_retried_after_recovery(rig) -> None:
    r = await rig()
    r.mail.gate = asyncio.Event()  # never set: the request "hangs"
    r.hook.gate = r.mail.gate
    await r.emit(_event(1, "invoice"), _event(2))
    worker = r.worker()
    task = asyncio.create_task(worker.run())
    async with asyncio.timeout(5):
        while len(r.mail.calls) + len(r.hook.calls) < 2:
            await asyncio.sleep(0.01)
    statuses = {d.status for d in await r.store.list_deliveries()}
    assert statuses == {DeliveryStatus.SENDING}  # committed before the request
    task.cancel()  # the process "dies"
    with pytest.raises(asyncio.CancelledError):
        await task

    r.mail.gate = r.hook.gate = None
    restarted = r.worker()
    assert await restarted.recover() == (1, 1)
    await restarted.run_once()
    rows = {d.action_type: d for d in await r.store.list_deliveries()}
    assert rows["invoice_action"].status is DeliveryStatus.UNCERTAIN
    assert "interrupted" in (rows["invoice_action"].last_error or "")
    assert rows["webhook"].status is DeliveryStatus.SUCCEEDED
    assert len(r.mail.calls) == 1 and len(r.hook.calls) == 2


async def test_dry_run_renders_records_and_sends_nothing(rig) -> None:
    r = await rig(_config(dry_run=True))
    await r.emit(_event(1), _event(2, "invoice"))
    assert await r.worker().run_once() == 0
    assert r.hook.calls == [] and r.mail.calls == []
    rows = await r.store.list_deliveries()
    assert {d.status for d in rows} == {DeliveryStatus.DRY_RUN}
    rendered = await r.store.get_rendered(rows[0].id)
    assert rendered is not None and '"summary"' in rendered and "evt_" in rendered


async def test_a_pending_delivery_under_a_dry_run_config_is_not_sent(rig) -> None:
    r = await rig()
    await r.emit(_event(1))
    await r.worker(_config(dry_run=True)).run_once()
    assert r.hook.calls == []
    assert (await r.only()).status is DeliveryStatus.DRY_RUN


async def test_a_delivery_whose_rule_is_gone_dies_unsent(rig) -> None:
    r = await rig()
    await r.emit(_event(1))
    other = _config().model_copy(update={"rules": _config().rules[1:]})
    await r.worker(other).run_once()
    row = await r.only()
    assert row.status is DeliveryStatus.DEAD and "no longer exists" in (row.last_error or "")
    assert r.hook.calls == []


async def test_no_more_than_the_concurrency_run_at_once(rig) -> None:
    r = await rig(_config(delivery_concurrency=2))
    gate = r.hook.gate = asyncio.Event()
    await r.emit(*(_event(n) for n in range(5)))
    worker = r.worker(poll_interval=0.05)
    task = asyncio.create_task(worker.run())
    async with asyncio.timeout(5):
        while r.hook.running < 2:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # give it the chance to over-commit (it must not)
    assert r.hook.running == 2 and worker.in_flight == 2
    gate.set()
    async with asyncio.timeout(5):
        while len(await r.store.list_deliveries([DeliveryStatus.SUCCEEDED])) < 5:
            await asyncio.sleep(0.01)
    assert r.hook.max_running == 2
    assert await worker.drain(1) == 0
    await asyncio.wait_for(task, 5)


async def _held_attempt(rig) -> tuple[Rig, DeliveryWorker, asyncio.Task[None]]:
    """A running worker whose one attempt has started and waits at the executor's gate."""
    r = await rig()
    r.hook.gate = asyncio.Event()
    await r.emit(_event(1))
    worker = r.worker()
    task = asyncio.create_task(worker.run())
    async with asyncio.timeout(5):
        while not r.hook.calls:
            await asyncio.sleep(0.01)
    return r, worker, task


async def test_drain_waits_for_quick_attempts_and_cuts_slow_ones(rig) -> None:
    r, worker, task = await _held_attempt(rig)
    assert await worker.drain(0.05) == 1
    await asyncio.wait_for(task, 5)
    assert (await r.only()).status is DeliveryStatus.SENDING  # left for recovery

    r, worker, task = await _held_attempt(rig)
    asyncio.get_running_loop().call_later(0.05, r.hook.gate.set)
    assert await worker.drain(5) == 0
    await asyncio.wait_for(task, 5)
    assert (await r.only()).status is DeliveryStatus.SUCCEEDED


async def test_an_injected_timer_walks_the_schedule_in_virtual_time(rig) -> None:
    r = await rig(_config(["0s", "1h", "5h"]))
    r.hook.results = [
        AttemptResult(Outcome.RETRYABLE, 503, "HTTP 503"),
        AttemptResult(Outcome.RETRYABLE, 503, "HTTP 503"),
        AttemptResult(Outcome.SUCCESS, 200),
    ]
    slept: list[float] = []

    def timer(seconds: float, callback: Callable[[], object]) -> asyncio.Handle:
        slept.append(seconds)
        r.clock.advance(seconds)
        return asyncio.get_running_loop().call_soon(callback)

    await r.emit(_event(1))
    worker = r.worker(timer=timer, poll_interval=86400)
    task = asyncio.create_task(worker.run())
    async with asyncio.timeout(5):
        while (await r.only()).status is not DeliveryStatus.SUCCEEDED:
            await asyncio.sleep(0.01)
    await worker.drain(0)
    await task
    history = (await r.only()).history
    assert [a.started_at - T0 for a in history] == [
        timedelta(0),
        timedelta(hours=1),
        timedelta(hours=6),
    ]
    assert 3600 in slept and 18000 in slept


async def test_run_wakes_on_new_deliveries_and_when_a_retry_comes_due(tmp_path: Path) -> None:
    config = _config(["0s", "300ms"])
    hook = FakeExecutor(
        "webhook",
        [AttemptResult(Outcome.RETRYABLE, 503, "HTTP 503"), AttemptResult(Outcome.SUCCESS, 200)],
    )
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)  # noqa: E731
    async with SqliteStore(tmp_path / "state.db") as store:
        worker = DeliveryWorker(
            delivery_settings(config), store, {"webhook": hook}, clock, poll_interval=60
        )
        handler = RuleHandler(
            rule_settings(config),
            store,
            TemplateRenderer(tmp_path),
            {"webhook": hook},
            clock,
            idle_timeout=60,
            on_recorded=worker.wake,
        )
        tasks = [asyncio.create_task(worker.run()), asyncio.create_task(handler.run())]
        await asyncio.sleep(0.05)  # both idle, with a 60 s fallback
        await store.commit("acme", [], [_event(1)])
        async with asyncio.timeout(5):  # far less than the 60 s poll: woken, not polled
            while not hook.calls:
                await asyncio.sleep(0.01)
            while len(hook.calls) < 2:  # the retry slot 300 ms later
                await asyncio.sleep(0.01)
        (row,) = await store.list_deliveries()
        assert row.attempts == 2
        await worker.drain(1)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_backlog_read_ahead_is_sent_once_each_within_the_concurrency(rig) -> None:
    r = await rig(_config(delivery_concurrency=4))
    await r.emit(*(_event(n) for n in range(40)))
    worker = r.worker(poll_interval=0.05)
    task = asyncio.create_task(worker.run())
    async with asyncio.timeout(10):
        while worker.settled["succeeded"] < 40:
            await asyncio.sleep(0.01)
    assert await worker.drain(1) == 0
    await asyncio.wait_for(task, 5)
    ids = [delivery_id for delivery_id, _ in r.hook.calls]
    assert len(ids) == 40 and len(set(ids)) == 40  # nothing read ahead was sent twice
    assert r.hook.max_running <= 4
    rows = await r.store.list_deliveries()
    assert {(d.status, d.attempts) for d in rows} == {(DeliveryStatus.SUCCEEDED, 1)}


def _held(store: SqliteStore, method: str) -> asyncio.Event:
    """Make ``store.<method>`` wait until the returned event is set."""
    gate = asyncio.Event()
    original = getattr(store, method)

    async def held(*args: Any) -> Any:
        await gate.wait()
        return await original(*args)

    setattr(store, method, held)
    return gate


async def test_a_delivery_settles_only_once_its_outcome_is_committed(rig) -> None:
    r = await rig()
    await r.emit(_event(1))
    worker = r.worker()
    committed = _held(r.store, "finish_attempts")
    task = asyncio.create_task(worker.run_once())
    async with asyncio.timeout(5):
        while not r.hook.calls:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # the request is over; its outcome is not committed
    assert worker.in_flight == 1 and worker.settled["succeeded"] == 0
    assert (await r.only()).status is DeliveryStatus.SENDING
    committed.set()
    await asyncio.wait_for(task, 5)
    assert worker.in_flight == 0 and worker.settled["succeeded"] == 1
    assert (await r.only()).status is DeliveryStatus.SUCCEEDED


async def test_drain_waits_for_a_start_under_way_and_sends_what_it_started(rig) -> None:
    r = await rig()
    await r.emit(_event(1))
    worker = r.worker()
    gate = _held(r.store, "start_attempts")
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(0.05)  # the start is under way, nothing in flight yet
    assert worker.in_flight == 0 and not r.hook.calls
    draining = asyncio.create_task(worker.drain(5))
    await asyncio.sleep(0.05)
    assert not draining.done()
    gate.set()
    assert await asyncio.wait_for(draining, 5) == 0
    await asyncio.wait_for(task, 5)
    assert len(r.hook.calls) == 1  # committed 'sending', so it was attempted, not left behind
    assert (await r.only()).status is DeliveryStatus.SUCCEEDED
