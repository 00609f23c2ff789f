"""JSON log lines carry event, delivery, rule and source ids as fields of their own."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from billnotify.logs import log_context, setup_logging


@pytest.fixture
def json_lines(capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def read() -> list[dict[str, str]]:
        err = capsys.readouterr().err
        return [json.loads(line) for line in err.splitlines() if line.startswith("{")]

    yield read
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


async def test_fields_from_the_context_reach_tasks_started_inside(json_lines) -> None:  # type: ignore[no-untyped-def]
    setup_logging("info", "json")
    log = logging.getLogger("billnotify.test")

    async def inner() -> None:
        log.info("inside a task")

    with log_context(delivery_id="dlv_1", rule="r1", event_id="evt_1"):
        log.info("attempt")
        await asyncio.create_task(inner())
        with log_context(source="acme"):
            log.info("nested")
    log.info("outside")
    lines = {line["message"]: line for line in json_lines()}
    want = {"delivery_id": "dlv_1", "rule": "r1", "event_id": "evt_1"}
    assert want.items() <= lines["attempt"].items()
    assert want.items() <= lines["inside a task"].items()
    assert {**want, "source": "acme"}.items() <= lines["nested"].items()
    assert not {"delivery_id", "rule", "event_id", "source"} & set(lines["outside"])


def test_explicit_extra_wins_and_secrets_stay_redacted(json_lines) -> None:  # type: ignore[no-untyped-def]
    setup_logging("info", "json", secrets=["s3cr3t-value"])
    log = logging.getLogger("billnotify.test")
    with log_context(source="acme"):
        log.info("token s3cr3t-value", extra={"source": "other"})
    (line,) = json_lines()
    assert line["source"] == "other"
    assert "s3cr3t-value" not in json.dumps(line)


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(TypeError), log_context(tenant="x"):  # type: ignore[arg-type]
        pass
