"""``billnotify demo``: the whole product on one machine, nothing outside.

Starts the simulator (its scenario ticking every second), an SMTP sink and a webhook
sink, writes a config that points the real :class:`~billnotify.app.Service` at them with
an embedded MQTT broker, runs it, and shows what happens until ``--duration`` passes or
Ctrl-C; then stops the service gracefully and prints a summary.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.logging import RichHandler

from billnotify.app import Service
from billnotify.config import load_config
from billnotify.demo.configfile import DemoPeers, templates_folder, write_demo_config
from billnotify.demo.sinks import SmtpSink, WebhookSink
from billnotify.demo.view import DemoInfo, DemoMonitor, PlainReporter, render_live, summary_lines
from billnotify.digests import is_flush_id
from billnotify.simulator import Simulator
from billnotify.store import SqliteStore

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
TICK_SECONDS = 1.0
"""Seconds per scenario step: fast enough that something happens every few seconds."""
REFRESH_SECONDS = 0.5
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
"""How long a stop may take (the service's shutdown grace is 5 s) before it is cut short."""
_NOISY = ("amqtt", "transitions", "passlib", "mail.log", "asyncio")

EXIT_OK, EXIT_FAILURE = 0, 1


def port_is_free(host: str, port: int) -> bool:
    """Whether a listener could bind ``host:port`` now (as asyncio servers bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = HOST) -> int:
    """A port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _working_folder(requested: Path | None) -> Iterator[Path]:
    if requested is None:
        with tempfile.TemporaryDirectory(prefix="billnotify-demo-") as temp:
            yield Path(temp)
        return
    folder = requested.expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    # The simulator starts from scratch every run: state from an earlier run would
    # describe records that no longer exist.
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (folder / name).unlink(missing_ok=True)
    for name in ("mail", "webhooks"):
        shutil.rmtree(folder / name, ignore_errors=True)
    yield folder


class _BriefFormatter(logging.Formatter):
    """The message without its traceback: the terminal stays readable, the log has it."""

    def __init__(self, with_level: bool) -> None:
        super().__init__()
        self._with_level = with_level

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if self._with_level:
            return f"{record.levelname} {record.name}: {message}"
        return f"{record.name}: {message}"


@contextlib.contextmanager
def _logging(folder: Path, console: Console | None) -> Iterator[None]:
    """Everything to ``billnotify.log``; warnings also to the terminal."""
    root = logging.getLogger()
    to_file = logging.FileHandler(folder / "billnotify.log", encoding="utf-8")
    to_file.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
    )
    to_file.setLevel(logging.INFO)
    to_screen: logging.Handler
    if console is not None:
        to_screen = RichHandler(console=console, show_path=False, markup=False)
        to_screen.setFormatter(_BriefFormatter(with_level=False))
    else:
        to_screen = logging.StreamHandler(sys.stderr)
        to_screen.setFormatter(_BriefFormatter(with_level=True))
    to_screen.setLevel(logging.WARNING)
    saved_level = root.level
    saved = {name: logging.getLogger(name).level for name in _NOISY}
    root.addHandler(to_file)
    root.addHandler(to_screen)
    root.setLevel(logging.INFO)
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.removeHandler(to_screen)
        root.removeHandler(to_file)
        to_file.close()
        root.setLevel(saved_level)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


@dataclass
class _Options:
    duration: float | None
    port: int
    mqtt_port: int
    live: bool
    keep: bool
    """The working folder stays after the demo (``--dir``)."""


async def run_demo(
    duration: float | None,
    port: int,
    mqtt_port: int,
    workdir: Path | None,
    live: bool,
) -> int:
    """Run the demo; return the exit status (0 after a graceful stop).

    Args:
        duration: stop after this many seconds (None: until Ctrl-C).
        port: the simulator's port (0: a free one).
        mqtt_port: the embedded broker's port; a free one if it is taken.
        workdir: the working folder (config, state, log, received mail and webhooks);
            a temporary folder, removed at the end, when None.
        live: a live view; plain lines instead when False or stdout is not a terminal.
    """
    options = _Options(duration, port, mqtt_port, live and sys.stdout.isatty(), workdir is not None)
    with _working_folder(workdir) as folder:
        console = Console() if options.live else None
        with _logging(folder, console):
            return await _Demo(folder, options, console).run()


class _Demo:
    def __init__(self, folder: Path, options: _Options, console: Console | None) -> None:
        self.folder = folder
        self.options = options
        self.console = console
        self.stop = asyncio.Event()
        self.service_task: asyncio.Task[None] | None = None

    def _on_signal(self) -> None:
        if self.stop.is_set() and self.service_task is not None:
            logger.warning("interrupted again: stopping at once")
            self.service_task.cancel()
        self.stop.set()

    def _say(self, line: str) -> None:
        if self.console is not None:
            self.console.print(line, markup=False, highlight=False)
        else:
            print(line, flush=True)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)
        for sig in signals:
            loop.add_signal_handler(sig, self._on_signal)
        try:
            return await self._run()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)

    async def _run(self) -> int:
        notes: list[str] = []
        mqtt_port = self.options.mqtt_port
        if not port_is_free(HOST, mqtt_port):
            mqtt_port = free_port()
            notes.append(f"MQTT port {self.options.mqtt_port} is taken: using {mqtt_port}")
        templates = templates_folder()
        if templates is None:
            templates = self.folder / "templates"
            notes.append("no shipped templates found: email and body templates will fail")
        async with contextlib.AsyncExitStack() as stack:
            sim = Simulator()
            sim.scenario.populate()
            try:
                await sim.start(HOST, self.options.port)
            except OSError as exc:
                self._say(f"billnotify demo: cannot serve the simulator: {exc}")
                return EXIT_FAILURE
            stack.push_async_callback(sim.stop)
            smtp = SmtpSink(HOST, 0, self.folder / "mail")
            await smtp.start()
            stack.push_async_callback(smtp.stop)
            secret = "whsec_" + base64.b64encode(os.urandom(24)).decode("ascii")
            hooks = WebhookSink(secret, HOST, 0, self.folder / "webhooks")
            await hooks.start()
            stack.push_async_callback(hooks.stop)
            http_port = free_port()
            path = write_demo_config(
                self.folder,
                DemoPeers(
                    billing_base_url=sim.billing_base_url,
                    property_base_url=sim.property_base_url,
                    auth_url=sim.auth_url,
                    api_key=sim.api_key,
                    username=sim.username,
                    password=sim.password,
                    administrator_ids=sim.administrator_ids,
                    properties=tuple(sim.scenario.properties),
                    mqtt_port=mqtt_port,
                    smtp_port=smtp.port,
                    webhook_base_url=hooks.base_url,
                    webhook_secret=secret,
                    http_port=http_port,
                    templates=templates,
                ),
            )
            config = load_config(path)
            info = DemoInfo(
                folder=str(self.folder),
                simulator=f"{sim.base_url} (scenario step every {TICK_SECONDS:g}s)",
                mqtt_host=HOST,
                mqtt_port=mqtt_port,
                smtp=f"{HOST}:{smtp.port} (messages saved in {self.folder / 'mail'})",
                webhooks=f"{hooks.base_url}/hooks/... (signatures verified)",
                console=f"http://{HOST}:{http_port}/ (the operator console)",
                metrics=f"http://{HOST}:{http_port}/metrics",
                log=str(self.folder / "billnotify.log"),
                duration=self.options.duration,
                notes=tuple(notes),
            )
            return await self._run_service(Service(config), sim, smtp, hooks, info)
        raise AssertionError("unreachable")  # pragma: no cover - mypy cannot see it

    async def _run_service(
        self,
        service: Service,
        sim: Simulator,
        smtp: SmtpSink,
        hooks: WebhookSink,
        info: DemoInfo,
    ) -> int:
        begun = time.monotonic()
        self.service_task = asyncio.create_task(service.run(self.stop), name="service")
        if not await self._started(service):
            if self.stop.is_set() and not self.service_task.done():
                return await self._wait_stopped()  # Ctrl-C while starting: not a failure
            return await self._finish_failed()
        scenario = asyncio.create_task(sim.run_scenario(TICK_SECONDS), name="scenario")
        monitor = DemoMonitor(
            service.store,
            smtp,
            hooks,
            published=lambda: service.publisher.published_total if service.publisher else 0,
        )
        try:
            await self._watch(monitor, info)
        finally:
            self.stop.set()
            scenario.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await scenario
        status = await self._wait_stopped()
        await self._summary(service, monitor, time.monotonic() - begun)
        return status

    async def _started(self, service: Service) -> bool:
        assert self.service_task is not None
        started = asyncio.create_task(service.started.wait())
        stopping = asyncio.create_task(self.stop.wait())
        await asyncio.wait(
            {started, stopping, self.service_task},
            timeout=START_TIMEOUT,
            return_when=asyncio.FIRST_COMPLETED,
        )
        for task in (started, stopping):
            task.cancel()
        return service.started.is_set() and not self.service_task.done()

    async def _finish_failed(self) -> int:
        self.stop.set()
        await self._wait_stopped()
        self._say("billnotify demo: the service did not start (see the messages above)")
        return EXIT_FAILURE

    async def _watch(self, monitor: DemoMonitor, info: DemoInfo) -> None:
        assert self.service_task is not None
        deadline = None
        if self.options.duration is not None:
            deadline = time.monotonic() + self.options.duration
        live: Live | None = None
        plain: PlainReporter | None = None
        if self.console is not None:
            live = Live(render_live(info, monitor), console=self.console, refresh_per_second=4)
            live.start()
        else:
            plain = PlainReporter(lambda line: print(line, flush=True))
            plain.intro(info)
        try:
            while not self.stop.is_set() and not self.service_task.done():
                new = await monitor.refresh()
                if live is not None:
                    live.update(render_live(info, monitor))
                if plain is not None:
                    plain.report(monitor, new)
                if deadline is not None and time.monotonic() >= deadline:
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(REFRESH_SECONDS):
                        await self.stop.wait()
        finally:
            if live is not None:
                live.stop()

    async def _wait_stopped(self) -> int:
        """Wait for the service to finish its graceful stop; its exit status."""
        assert self.service_task is not None
        task = self.service_task
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await asyncio.shield(task)
        except TimeoutError:
            logger.error("the service did not stop within %.0fs", STOP_TIMEOUT)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            return EXIT_FAILURE
        except asyncio.CancelledError:
            if not task.cancelled():
                raise
            return EXIT_OK  # interrupted twice: stopped at once, on purpose
        except Exception:
            logger.exception("the service failed")
            return EXIT_FAILURE
        return EXIT_OK

    async def _summary(self, service: Service, monitor: DemoMonitor, seconds: float) -> None:
        # The service closed its store on the way out: read the final state afresh.
        event_types: Counter[str] = Counter()
        deliveries: Counter[str] = Counter()
        async with SqliteStore(service.config.state_path) as store:
            for stored in await store.list_events(limit=0):
                event_types[stored.event.type] += 1
            for (_action, status), count in (await store.count_deliveries()).items():
                deliveries[status] += count
            digests = sum(
                1 for d in await store.list_deliveries(limit=1_000_000) if is_flush_id(d.event_id)
            )
        lines = summary_lines(
            seconds=seconds,
            event_types=event_types,
            deliveries=deliveries,
            emails=len(monitor.smtp.received),
            webhooks=len(monitor.webhooks.received),
            webhooks_valid=monitor.webhooks.valid,
            published=monitor.published(),
            digests=digests,
        )
        if self.options.keep:
            lines.append(f"  working folder: {self.folder}")
        for line in lines:
            self._say(line)
