"""Durable delivery throughput: the whole ledger path against raw client loops.

One round appends ``N`` events to a fresh :class:`SqliteStore` (in pages of
``EVENTS_PER_COMMIT``, as a poll would), while a :class:`RuleHandler` records one
delivery per event (a single webhook rule, or a single ``at_least_once`` email rule) and
a :class:`DeliveryWorker` attempts them with the real executors against a local aiohttp
receiver or aiosmtpd server. The clock stops when every delivery is committed
``succeeded``; the ledger is then checked row by row.

The ledger path runs on each store ``billnotify run`` can have: SQLite (the store in its
own process, as the service runs it) and PostgreSQL (:class:`PgStore`, a fresh database
of a private server started here from the machine's binaries, see ``bench/_postgres.py``;
the ``*.postgres`` rows are skipped, saying why, where those binaries are missing). Both
are compared with the same raw baseline, measured in the same rounds.

The baseline is the same traffic without any ledger, at the same concurrency and body
size: a raw aiohttp POST loop with ``delivery_concurrency`` requests in flight, and a raw
aiosmtplib loop over as many kept-open connections as the executor's pool (which is also
the worker's ``delivery_concurrency`` for the email case). Rounds alternate between the
two sides; the best round of each is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp

from bench import BenchResult, _postgres
from bench._peers import (
    FROM,
    SECRET,
    TEMPLATES,
    Rate,
    best_of,
    failed_task,
    raw_post_rate,
    raw_smtp_rate,
    smtp_sink,
    webhook_receiver,
)
from bench._postgres import Opener, stores_of
from billnotify.actions import build_executors
from billnotify.actions.base import ActionExecutor
from billnotify.actions.email import EmailExecutor
from billnotify.components import delivery_settings, rule_settings
from billnotify.config.loader import parse_config
from billnotify.config.models import Config, EmailAction
from billnotify.deliveries.base import DeliveryStatus
from billnotify.deliveries.worker import DeliveryWorker
from billnotify.events import CloudEvent, build_event
from billnotify.rules.engine import RuleHandler
from billnotify.templating import TemplateRenderer

WEBHOOKS = 3000
WEBHOOK_CONCURRENCY = 50
EMAILS = 600
EMAIL_CONCURRENCY = 4
EVENTS_PER_COMMIT = 100
ROUNDS = 3
DEADLINE = 120.0
T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
TYPE = "billing_task.status_changed"


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _events(count: int) -> list[CloudEvent]:
    return [
        build_event(
            source="acme",
            entity="billing_task",
            object_id=str(n),
            type_=TYPE,
            key=str(n),
            time=T0,
            data=failed_task(str(n)),
        )
        for n in range(count)
    ]


def _config(action: dict[str, Any], concurrency: int, hook_url: str, smtp_port: int) -> Config:
    return parse_config(
        {
            "service": {"delivery_concurrency": concurrency, "http": ""},
            "sources": [
                {"name": "acme", "kind": "billing_platform", "base_url": "http://x", "api_key": "k"}
            ],
            "smtp": {"host": "127.0.0.1", "port": smtp_port, "from": FROM, "timeout": "10s"},
            "webhooks": [
                {
                    "name": "sink",
                    "url": hook_url,
                    "secret": SECRET,
                    "allow_private": True,
                    "timeout": "10s",
                }
            ],
            "rules": [{"name": "bench", "on": [TYPE], "actions": [action]}],
        },
        base_dir=TEMPLATES.parent,
    )


# -- the durable path --------------------------------------------------------------------


async def _ledger_rate(
    opener: Opener,
    config: Config,
    executors: dict[str, ActionExecutor],
    templates: TemplateRenderer,
    events: list[CloudEvent],
    action_type: str,
) -> float:
    """Deliveries/s from the first append to the last ``succeeded`` commit."""
    async with opener() as store:
        worker = DeliveryWorker(
            delivery_settings(config), store, executors, _utcnow, poll_interval=0.5
        )
        handler = RuleHandler(
            rule_settings(config), store, templates, executors, _utcnow, on_recorded=worker.wake
        )
        succeeded = worker.settled
        started = time.perf_counter()
        tasks = [
            asyncio.create_task(worker.run(), name="bench-worker"),
            asyncio.create_task(handler.run(), name="bench-rules"),
        ]
        try:
            for start in range(0, len(events), EVENTS_PER_COMMIT):
                await store.commit("acme", [], events[start : start + EVENTS_PER_COMMIT])
            deadline = time.monotonic() + DEADLINE
            while succeeded[DeliveryStatus.SUCCEEDED.value] < len(events):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"ledger bench stuck: {dict(worker.settled)}")
                if any(v for k, v in succeeded.items() if k != DeliveryStatus.SUCCEEDED):
                    raise RuntimeError(f"deliveries did not succeed: {succeeded}")
                await asyncio.sleep(0.002)
            elapsed = time.perf_counter() - started
            await worker.drain(5.0)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        counts = await store.count_deliveries()
        if counts != {(action_type, DeliveryStatus.SUCCEEDED.value): len(events)}:
            raise RuntimeError(f"ledger not settled as expected: {counts}")
    return len(events) / elapsed


async def _race(
    stores: Mapping[str, Opener],
    config: Config,
    executors: dict[str, ActionExecutor],
    templates: TemplateRenderer,
    events: list[CloudEvent],
    action_type: str,
    raw: Rate,
    warm_up: int,
) -> dict[str, float]:
    """Best of ``ROUNDS`` for ``raw`` and the ledger path on each of ``stores`` (by
    name); closes the executors.

    Each side runs once first to warm its pools, the ledger over ``warm_up`` events.
    """
    ledger = {
        name: functools.partial(_ledger_rate, opener, config, executors, templates)
        for name, opener in stores.items()
    }
    cases = {name: functools.partial(rate, events, action_type) for name, rate in ledger.items()}
    warm = [functools.partial(rate, events[:warm_up], action_type) for rate in ledger.values()]
    try:
        return await best_of(ROUNDS, {"raw": raw, **cases}, warm_up=[raw, *warm])
    finally:
        for executor in executors.values():
            await executor.close()


# -- the cases ---------------------------------------------------------------------------


def _rows(
    name: str, unit: str, best: dict[str, float], notes: str, stores: Mapping[str, Opener]
) -> list[BenchResult]:
    """``name`` on SQLite, and ``name.postgres`` where PostgreSQL ran: the same baseline."""
    rows = [BenchResult.versus(name, best["sqlite"], unit, best["raw"], notes + "; SQLite")]
    if "postgres" in stores:
        notes += "; PostgreSQL (private server, fsync off, loopback), same raw rounds"
        rows.append(
            BenchResult.versus(f"{name}.postgres", best["postgres"], unit, best["raw"], notes)
        )
    return rows


async def _webhooks(templates: TemplateRenderer, stores: Mapping[str, Opener]) -> list[BenchResult]:
    async with (
        webhook_receiver() as url,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session,
    ):
        config = _config({"type": "webhook", "endpoint": "sink"}, WEBHOOK_CONCURRENCY, url, 25)
        executors = build_executors(
            config.smtp,
            config.webhooks,
            billing_clients={},
            property_clients={},
            mqtt=None,
            templates=templates,
        )
        events = _events(WEBHOOKS)
        body = events[0].to_json().encode()
        raw = functools.partial(raw_post_rate, session, url, body, WEBHOOKS, WEBHOOK_CONCURRENCY)
        best = await _race(
            stores, config, executors, templates, events, "webhook", raw, warm_up=500
        )
    notes = (
        f"{WEBHOOKS} events -> rules -> worker -> local receiver, delivery_concurrency "
        f"{WEBHOOK_CONCURRENCY}, vs raw aiohttp POSTs, best of {ROUNDS}"
    )
    return _rows("ledger.webhook", "deliveries/s", best, notes, stores)


async def _emails(templates: TemplateRenderer, stores: Mapping[str, Opener]) -> list[BenchResult]:
    email = {
        "type": "email",
        "to": ["ops@example.com"],
        "template": "task_failed",
        "at_least_once": True,
    }
    with smtp_sink() as port:
        config = _config(email, EMAIL_CONCURRENCY, "http://127.0.0.1:9/hook", port)
        executors = build_executors(
            config.smtp,
            config.webhooks,
            billing_clients={},
            property_clients={},
            mqtt=None,
            templates=templates,
            smtp_pool_size=EMAIL_CONCURRENCY,
        )
        events = _events(EMAILS)
        executor = executors["email"]
        assert isinstance(executor, EmailExecutor)
        composed = executor.compose(EmailAction.model_validate(email), events[0], config.rules[0])
        raw = functools.partial(
            raw_smtp_rate,
            port,
            EMAILS,
            EMAIL_CONCURRENCY,
            to="ops@example.com",
            subject=composed.subject,
            text=composed.text,
            html=composed.html or "",
        )
        best = await _race(stores, config, executors, templates, events, "email", raw, warm_up=100)
    notes = (
        f"{EMAILS} events -> rules -> worker -> local aiosmtpd (task_failed, at_least_once), "
        f"{EMAIL_CONCURRENCY} connections = delivery_concurrency, vs raw aiosmtplib, "
        f"best of {ROUNDS}"
    )
    return _rows("ledger.email", "emails/s", best, notes, stores)


async def run() -> list[BenchResult]:
    """Measure durably recorded deliveries/s against raw client loops, on each store."""
    templates = TemplateRenderer(TEMPLATES)
    with contextlib.ExitStack() as stack:
        reason = _postgres.unavailable()
        if reason:
            print(f"  ledger: the PostgreSQL rows are skipped: {reason}", file=sys.stderr)
        stores = stores_of(None if reason else stack.enter_context(_postgres.private()))
        return await _webhooks(templates, stores) + await _emails(templates, stores)
