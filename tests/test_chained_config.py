"""Chained actions in the config (SPEC §7.5, §5): ``id`` / ``after`` checked with their
TOML paths, ``check`` warns of ``results.<id>`` outside the chain, ``render`` and dry
runs show a chained action with a sample answer, and how a dependent moves on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from billnotify.cli.checks import run_check_file
from billnotify.cli.commands import render_rule, replay_to_rules
from billnotify.components import build_actions, build_rule_handler
from billnotify.config.loader import parse_config
from billnotify.deliveries.base import DeliveryStatus, Outcome
from billnotify.deliveries.chain import ChainFollower, Settled, transition
from billnotify.errors import ConfigError
from billnotify.events import build_event
from billnotify.store import MemoryStore, NewDelivery, StoredEvent
from billnotify.store.records import AttemptEnd
from servers import toml_config

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
SOURCE = {"name": "acme", "kind": "billing_platform", "base_url": "http://x", "api_key": "k"}
LINK = {"type": "invoice_action", "id": "link", "action": "generateDownloadLink"}
MAIL = {
    "type": "email",
    "after": "link",
    "to": ["customer@example.com"],
    "template": "download",
}


def _raw(actions: list[dict[str, Any]], **rule: Any) -> dict[str, Any]:
    return {
        "sources": [SOURCE],
        "smtp": {"host": "127.0.0.1", "port": 2525, "from": "billing@example.com"},
        "rules": [{"name": "chain", "on": ["invoice.*"], "actions": actions, **rule}],
    }


def _templates(folder: Path, text: str = "Get it: {{ results.link.download_url }}") -> None:
    templates = folder / "templates"
    templates.mkdir(exist_ok=True)
    (templates / "download.subject.j2").write_text("Invoice {{ object.id }}")
    (templates / "download.txt.j2").write_text(text)


def _issues(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, base_dir=Path("."))
    return caught.value.issues


def test_ids_and_afters_are_checked_with_their_toml_paths() -> None:
    mqtt = {"type": "mqtt", "topic": "t"}
    issues = _issues(
        _raw(
            [
                {**mqtt, "id": "a", "after": "b"},  # names a later action: no cycles
                {**mqtt, "id": "b", "after": "a"},
                {**mqtt, "id": "a"},  # the same id twice
                {**mqtt, "after": "nothing"},
                {**mqtt, "id": "c", "after": "c"},
                {**mqtt, "id": "not a name"},
            ]
        )
    )
    text = "\n".join(issues)
    assert "rules[0].actions[0].after: 'b' names a later action" in text
    assert "rules[0].actions[2].id: 'a' is already the id of actions[0]" in text
    assert "rules[0].actions[3].after: 'nothing' names no action" in text
    assert "rules[0].actions[4].after: 'c' is this action's own id" in text
    assert "rules[0].actions[5].id: 'not a name' must be a name" in text
    assert "actions[1]" not in text  # 'b' after 'a' is a valid chain
    grouped = _issues(_raw([{**mqtt, "id": "a"}, {**mqtt, "after": "a"}], group_by=["source"]))
    assert any("rules[0].actions[1].after: a grouped rule" in i for i in grouped), grouped


async def test_check_warns_of_results_read_outside_the_chain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _templates(tmp_path)
    unchained = {**MAIL}
    del unchained["after"]
    raw = _raw([LINK, MAIL, unchained])
    (tmp_path / "config.toml").write_text(toml_config(raw))
    assert await run_check_file(tmp_path / "config.toml") == 0
    err = capsys.readouterr().err
    assert "rules[0].actions[2]: its templates read results.link" in err
    assert "rules[0].actions[1]" not in err  # chained after link: fine


async def test_render_shows_a_chained_action_with_a_sample_answer(tmp_path: Path) -> None:
    _templates(tmp_path)
    config = parse_config(_raw([LINK, MAIL]), base_dir=tmp_path)
    actions = build_actions(config)
    event = build_event(
        source="acme",
        entity="invoice",
        object_id="7",
        type_="invoice.created",
        key="7",
        time=T0,
        data={"object": {"id": "7", "customerID": "1"}},
    )
    try:
        link, mail = await render_rule(config, actions.renderer, actions.executors, "chain", event)
        assert link.summary["action"] == "generateDownloadLink"
        assert "error" not in mail.summary, mail.summary
        assert "https://billing.example.com/download/invoice/SAMPLE-TOKEN" in str(mail.summary)

        # a dry run records it the same way, with the sample answer
        dry = parse_config(_raw([LINK, MAIL], dry_run=True), base_dir=tmp_path)
        store = MemoryStore()
        await store.open()
        handler = build_rule_handler(dry, store, build_actions(dry), lambda: T0)
        planned = await handler.plan(StoredEvent(1, event))
        assert [p.delivery.status for p in planned] == [DeliveryStatus.DRY_RUN] * 2
        assert planned[1].error is None
        assert planned[1].rendered is not None and "SAMPLE-TOKEN" in planned[1].rendered

        # not a dry run: the chained action is recorded waiting
        live = parse_config(_raw([LINK, MAIL]), base_dir=tmp_path)
        handler = build_rule_handler(live, store, build_actions(live), lambda: T0)
        planned = await handler.plan(StoredEvent(1, event))
        assert [p.delivery.status for p in planned] == [
            DeliveryStatus.PENDING,
            DeliveryStatus.WAITING,
        ]
    finally:
        await actions.close()


@pytest.mark.parametrize(
    ("before", "expect", "to", "note"),
    [
        ("succeeded", ("waiting", "skipped"), "pending", "after link: succeeded"),
        ("dead", ("waiting",), "skipped", "after link: dead"),
        ("uncertain", ("waiting",), "skipped", "after link: uncertain"),
        ("dry_run", ("waiting",), "skipped", "after link: dry_run"),
        ("skipped", ("waiting",), "skipped", "after link: skipped"),
        ("muted", ("waiting",), "skipped", "after link: muted"),
        ("pending", ("skipped",), "waiting", "after link: pending"),
        ("retry_scheduled", ("skipped",), "waiting", "after link: retry_scheduled"),
    ],
)
def test_how_a_dependent_moves_on_with_its_predecessor(
    before: str, expect: tuple[str, ...], to: str, note: str
) -> None:
    move = transition(DeliveryStatus(before), "link", "dlv_x")
    assert move is not None
    assert ([s.value for s in move.expect], move.status.value, move.note) == (
        list(expect),
        to,
        note,
    )


async def test_the_sweep_goes_round_so_old_skipped_rows_never_hide_a_waiting_one() -> None:

    rule = parse_config(_raw([LINK, MAIL]), base_dir=Path(".")).rules[0]
    store = MemoryStore()
    await store.open()
    W = DeliveryStatus.WAITING

    def pair(n: int) -> tuple[NewDelivery, NewDelivery]:
        first = NewDelivery("chain", 0, "invoice_action", f"evt_{n}", n, exactly_once=False)
        return first, NewDelivery("chain", 1, "email", f"evt_{n}", n, True, status=W)

    old = [pair(n) for n in range(1200)]
    await store.record_deliveries([d for p in old for d in p], "rules", 1, T0)
    await store.finish_attempts(  # every old link dead: their emails get skipped
        [AttemptEnd(f.id, 1, T0, Outcome.PERMANENT, DeliveryStatus.DEAD) for f, _ in old]
    )
    chains = ChainFollower([rule], store, lambda: T0)
    assert len(await chains.sweep(whole=True)) == 1200
    first, then = pair(5000)
    await store.record_deliveries([first, then], "rules", 2, T0 + timedelta(seconds=1))
    await store.finish_attempts(
        [AttemptEnd(first.id, 1, T0, Outcome.SUCCESS, DeliveryStatus.SUCCEEDED)]
    )
    passes = 0
    while (got := await store.get_delivery(then.id)) and got.status is W:
        passes += 1
        await chains.sweep(limit=500)
        assert passes <= 3, "the waiting email was never reached"
    assert got is not None and got.status is DeliveryStatus.PENDING
    assert passes == 3  # 1,200 skipped rows before it: pages of 500, 500, then it


async def test_a_forced_replay_makes_a_chained_action_wait_again_for_its_predecessor(
    tmp_path: Path,
) -> None:

    _templates(tmp_path)
    config = parse_config(_raw([LINK, MAIL]), base_dir=tmp_path)
    actions = build_actions(config)
    store = MemoryStore()
    await store.open()
    try:
        event = build_event(
            source="acme",
            entity="invoice",
            object_id="7",
            type_="invoice.created",
            key="7",
            time=T0,
            data={"object": {"id": "7"}},
        )
        [stored] = await store.commit("acme", [], [event])
        handler = build_rule_handler(config, store, actions, lambda: T0)
        await handler.catch_up()
        ids = [d.id for d in sorted(await store.list_deliveries(), key=lambda d: d.action_index)]
        for id_ in ids:
            await store.set_delivery_status(id_, DeliveryStatus.SUCCEEDED, now=T0)
        result = await replay_to_rules(handler, [stored], force=True)
        assert result.reset == 2
        got = [await store.get_delivery(id_) for id_ in ids]
        assert [d.status for d in got if d] == [DeliveryStatus.PENDING, DeliveryStatus.WAITING]
    finally:
        await actions.close()


async def test_a_dead_head_skips_the_whole_chain_and_a_retry_brings_it_back() -> None:
    mqtt = {"type": "mqtt", "topic": "t"}
    actions = [{**mqtt, "id": "a"}, {**mqtt, "id": "b", "after": "a"}, {**mqtt, "after": "b"}]
    rule = parse_config(_raw(actions), base_dir=Path(".")).rules[0]
    store = MemoryStore()
    await store.open()
    W = DeliveryStatus.WAITING
    rows = [
        NewDelivery(
            "chain", i, "mqtt", "evt_1", 1, False, status=DeliveryStatus.PENDING if i == 0 else W
        )
        for i in range(3)
    ]
    await store.record_deliveries(rows, "rules", 1, T0)
    chains = ChainFollower([rule], store, lambda: T0)

    async def statuses() -> list[str]:
        got = [await store.get_delivery(r.id) for r in rows]
        return [d.status.value for d in got if d]

    dead = Settled("chain", 0, "evt_1", DeliveryStatus.DEAD)
    assert [m.note for m in await chains.follow([dead])] == ["after a: dead", "after b: skipped"]
    assert await statuses() == ["pending", "skipped", "skipped"]  # (a as the test left it)
    again = Settled("chain", 0, "evt_1", DeliveryStatus.PENDING)  # an operator's retry
    assert [m.status.value for m in await chains.follow([again])] == ["waiting", "waiting"]
    ok = Settled("chain", 0, "evt_1", DeliveryStatus.SUCCEEDED)
    assert [m.id for m in await chains.follow([ok])] == [rows[1].id]  # c waits for b to run
    assert await statuses() == ["pending", "pending", "waiting"]
