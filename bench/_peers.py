"""What the delivery benchmarks share: local peers, the raw baselines and best-of-N timing.

Peers
    ``webhook_receiver()``   an aiohttp app on loopback that reads each POST to ``/hook``
                             and answers 200 with a small JSON body; yields its URL
    ``smtp_sink()``          an aiosmtpd server on loopback that accepts every message;
                             yields its port

Baselines (the same traffic without billnotify)
    ``raw_post_rate``        a bare aiohttp POST loop at a given concurrency
    ``raw_smtp_rate``        a bare aiosmtplib loop over kept-open connections

The product's side
    ``executor_rate``        one action executor performing the same action over and over

Timing
    ``timed``                ``count`` sends spread over ``workers`` tasks, in sends/s
    ``best_of``              warm up, then alternate the cases for ``rounds`` rounds and
                             keep the best rate of each
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from email.message import EmailMessage
from typing import Any

import aiohttp
import aiosmtplib
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from billnotify.actions.base import ActionExecutor
from billnotify.config.models import DEFAULT_TEMPLATES, Action, Rule
from billnotify.deliveries.base import Outcome
from billnotify.events import CloudEvent

Rate = Callable[[], Awaitable[float]]
"""One measured pass: returns its rate (sends/s)."""

TEMPLATES = DEFAULT_TEMPLATES
SECRET = "whsec_" + base64.b64encode(b"bench-secret-bench-secret-bench!").decode()
FROM = "Billing <billing@example.com>"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the event ---------------------------------------------------------------------------


def failed_task(object_id: str = "1234", **extra: str) -> dict[str, Any]:
    """The ``data`` of a ``billing_task.status_changed`` event: an invoice run that failed.

    Args:
        object_id: the task's ``id``.
        **extra: further fields of the task object, after the usual ones.
    """
    return {
        "object": {
            "id": object_id,
            "billingTaskType": "Generate Invoice",
            "status": "Failed",
            "customerID": "77",
            "retryCount": "2",
            "startedTime": "2026-11-21 10:01:00",
            "endedTime": "2026-11-21 10:15:00",
            "activityLog": "Step 3 failed",
            **extra,
        },
        "previous": {"status": "Running"},
        "changed": ["status", "endedTime"],
    }


def failed_task_event(**extra: str) -> CloudEvent:
    """The CloudEvent for task 1234 failing (``extra`` as in :func:`failed_task`)."""
    return CloudEvent(
        id="evt_bench",
        source="billnotify://acme",
        type="billing_task.status_changed",
        subject="billing_tasks/1234",
        time="2026-11-21T10:15:02Z",
        data=failed_task(**extra),
    )


# -- peers -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def webhook_receiver() -> AsyncIterator[str]:
    """Serve ``POST /hook`` on a free loopback port; yields ``http://127.0.0.1:PORT/hook``."""

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text='{"ok":true}', content_type="application/json")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    finally:
        await runner.cleanup()


class _Accept:
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 OK"


@contextlib.contextmanager
def smtp_sink() -> Iterator[int]:
    """Run an aiosmtpd server that accepts every message; yields its port."""
    port = free_port()
    controller = Controller(_Accept(), hostname="127.0.0.1", port=port, ready_timeout=5.0)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


# -- timing ------------------------------------------------------------------------------


async def timed(count: int, workers: int, send: Callable[[int], Awaitable[None]]) -> float:
    """Call ``send(0 .. count-1)`` from ``workers`` concurrent tasks; returns sends/s."""
    queue = iter(range(count))

    async def worker() -> None:
        for n in queue:
            await send(n)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return count / (time.perf_counter() - started)


async def best_of(
    rounds: int, cases: Mapping[str, Rate], warm_up: Iterable[Rate] = ()
) -> dict[str, float]:
    """Run each of ``warm_up`` once, then ``rounds`` rounds of every case in turn.

    Alternating the cases within a round keeps a slow spell of the machine from
    favouring one side.

    Returns:
        The best rate of each case, by name.
    """
    for rate in warm_up:
        await rate()
    best = dict.fromkeys(cases, 0.0)
    for _ in range(rounds):
        for name, rate in cases.items():
            best[name] = max(best[name], await rate())
    return best


# -- raw baselines -----------------------------------------------------------------------


async def raw_post_rate(
    session: aiohttp.ClientSession, url: str, body: bytes, count: int, concurrency: int
) -> float:
    """POSTs/s of a bare aiohttp loop sending ``body`` to ``url`` and reading each reply."""
    headers = {"content-type": "application/json"}

    async def send(n: int) -> None:
        async with session.post(url, data=body, headers=headers) as resp:
            await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}")

    return await timed(count, concurrency, send)


async def raw_smtp_rate(
    port: int,
    count: int,
    connections: int,
    *,
    to: str,
    subject: str,
    text: str,
    html: str,
) -> float:
    """Emails/s of a bare aiosmtplib loop sending text+HTML over kept-open connections."""
    clients = [
        aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        for _ in range(connections)
    ]
    for client in clients:
        await client.connect()
    free: asyncio.Queue[aiosmtplib.SMTP] = asyncio.Queue()
    for client in clients:
        free.put_nowait(client)

    async def send(n: int) -> None:
        message = EmailMessage()
        message["From"] = FROM
        message["To"] = to
        message["Subject"] = subject
        message["Message-ID"] = f"<dlv_{n}@example.com>"
        message.set_content(text)
        message.add_alternative(html, subtype="html")
        client = await free.get()
        try:
            await client.send_message(message)
        finally:
            free.put_nowait(client)

    try:
        return await timed(count, connections, send)
    finally:
        for client in clients:
            await client.quit()


# -- the product's side ------------------------------------------------------------------


async def executor_rate(
    executor: ActionExecutor,
    action: Action,
    event: CloudEvent,
    rule: Rule,
    count: int,
    workers: int,
) -> float:
    """Attempts/s of ``executor`` performing ``action`` for ``event``, ``count`` times.

    Raises:
        RuntimeError: an attempt did not succeed (the figure would mean nothing).
    """

    async def send(n: int) -> None:
        result = await executor.execute(action, event, rule, delivery_id=f"dlv_{n}", attempt=1)
        if result.outcome is not Outcome.SUCCESS:
            raise RuntimeError(f"{action.type} failed: {result.error}")

    return await timed(count, workers, send)
