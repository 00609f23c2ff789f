"""The two sides of the Node-RED peer benchmark, each a process tree started on its own.

``node_red``      Node-RED (pinned in ``bench/nodered/package.json``, installed by
                  ``npm ci`` into a cache folder on first use) running ``bench/nodered/
                  flow.json``: poll, compare statuses in memory, publish at QoS 1
``billnotify``    ``billnotify run`` with one ``billing_platform`` source watching
                  ``billing_tasks`` and the SQLite state in a temporary folder; under
                  py-spy when a profile is asked for
``Subscriber``    an independent ``mosquitto_sub`` stamping each message as it arrives

And what is read of a process tree from outside: CPU seconds and peak RSS.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from bench._billing_fake import API_KEY, PAGE_MAX
from bench._spy import RATE

NODE_RED_DIR = Path(__file__).parent / "nodered"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "billnotify-bench"
POLL_S = 1
OVERLAP_S = 5
"""How far back each incremental poll reaches, on both sides (billnotify's default)."""
HOOK_TOKEN = "bench-hook-token-0123456789"
"""The Bearer token of billnotify's inbound hook (SPEC §7.3), when it takes hooks."""
SUB = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
PUB = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"


class Skip(Exception):
    """The benchmark cannot run here (the message says why)."""


def node_red_home() -> Path:
    """The cached Node-RED install, made with ``npm ci`` from the pinned lock file.

    Raises:
        Skip: node or npm is missing.
    """
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise Skip("node and npm are needed to run Node-RED (https://nodejs.org); not on PATH")
    home = CACHE / "node-red"
    wanted = (NODE_RED_DIR / "package-lock.json").read_bytes()
    lock = home / "package-lock.json"
    if not (home / "node_modules" / "node-red").is_dir() or lock.read_bytes() != wanted:
        home.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(NODE_RED_DIR / name, home / name)
        print(f"  installing Node-RED into {home} (npm ci) ...", file=sys.stderr, flush=True)
        subprocess.run(
            [npm, "ci", "--omit=dev", "--no-audit", "--no-fund"],
            cwd=home,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return home


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(15):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


@contextlib.asynccontextmanager
async def node_red(
    folder: Path, platform_url: str, mqtt_port: int, prefix: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Node-RED running the flow against ``platform_url`` and the broker on ``mqtt_port``."""
    home = node_red_home()
    user_dir = folder / "node-red"
    user_dir.mkdir()
    shutil.copyfile(NODE_RED_DIR / "flow.json", user_dir / "flow.json")
    settings = user_dir / "settings.js"
    settings.write_text(
        "module.exports = {\n"
        f"  flowFile: {json.dumps(str(user_dir / 'flow.json'))},\n"
        "  uiHost: '127.0.0.1', uiPort: 0, httpAdminRoot: false, httpNodeRoot: false,\n"
        "  credentialSecret: false, externalModules: { autoInstall: false },\n"
        "  logging: { console: { level: 'warn', metrics: false, audit: false } },\n"
        "};\n"
    )
    env = {
        **os.environ,
        "PLATFORM_URL": platform_url,
        "API_KEY": API_KEY,
        "PAGE": str(PAGE_MAX),
        "OVERLAP_S": str(OVERLAP_S),
        "PREFIX": prefix,
        "MQTT_PORT": str(mqtt_port),
        "CLIENT_ID": prefix,
    }
    red = home / "node_modules" / "node-red" / "red.js"
    command = ["node", str(red), "--settings", str(settings), "--userDir", str(user_dir)]
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=subprocess.DEVNULL, stderr=sys.stderr
    )
    try:
        yield process
    finally:
        await _stop(process)


@contextlib.asynccontextmanager
async def billnotify(
    folder: Path,
    platform_url: str,
    mqtt_port: int,
    prefix: str,
    profile: Path | None = None,
    *,
    hook_port: int | None = None,
    poll_s: float = POLL_S,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``billnotify run`` (under py-spy, raw stacks to ``profile``, when given; taking
    inbound hooks with :data:`HOOK_TOKEN` on ``127.0.0.1:hook_port``, when given)."""
    config = folder / "billnotify.toml"
    http = "" if hook_port is None else f"127.0.0.1:{hook_port}"
    hook = "" if hook_port is None else 'hook_secret = "env:BENCH_HOOK_TOKEN"\n'
    config.write_text(
        f"""[service]
name = "bench"
state = "state.db"
http = "{http}"
log_level = "warning"

[mqtt]
url = "mqtt://127.0.0.1:{mqtt_port}"
client_id = "{prefix}"
prefix = "{prefix}"
qos = 1
protocol = 5
retain_state = []

[[sources]]
name = "bench"
kind = "billing_platform"
base_url = "{platform_url}"
api_key = "env:BENCH_API_KEY"
poll_interval = "{poll_s:g}s"
overlap = "{OVERLAP_S}s"
page_size = {PAGE_MAX}
watch = ["billing_tasks"]
{hook}"""
    )
    command = [sys.executable, "-m", "billnotify", "run", "-c", str(config)]
    if profile is not None:
        spy = CACHE / "py-spy" / "bin" / "py-spy"
        if not spy.exists():
            install = [sys.executable, "-m", "pip", "install", "-q", "py-spy"]
            await (
                await asyncio.create_subprocess_exec(*install, "--target", spy.parents[1])
            ).wait()
        record = [str(spy), "record", "--subprocesses", "--format", "raw", "--rate", str(RATE)]
        command = [*record, "--nonblocking", "-o", str(profile), "--", *command]
    env = {**os.environ, "BENCH_API_KEY": API_KEY, "BENCH_HOOK_TOKEN": HOOK_TOKEN}
    process = await asyncio.create_subprocess_exec(
        *command, env=env, cwd=folder, stdout=subprocess.DEVNULL, stderr=sys.stderr
    )
    try:
        yield process
    finally:
        if profile is not None:  # py-spy writes its file once the service has exited
            for child in _tree(process.pid)[1:2]:  # billnotify, py-spy's child
                os.kill(child, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(30):
                    await process.wait()
        await _stop(process)


# -- what a process tree costs (read from /proc: Linux) ------------------------------------
def _stat(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # the fields after "(name)"


def _tree(pid: int) -> list[int]:
    """``pid`` and its live descendants."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                parents.setdefault(int(_stat(int(entry.name))[1]), []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(current := todo.pop())
        todo += parents.get(current, [])
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the process ``pid`` and its live descendants."""
    ticks = 0
    for member in _tree(pid):
        with contextlib.suppress(OSError):
            fields = _stat(member)
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def peak_rss(pid: int, skip: tuple[str, ...] = ("py-spy",)) -> float:
    """Sum of the peak resident sets (``VmHWM``) of the tree (``skip``: by name), in MiB."""
    total = 0
    for member in _tree(pid):
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{member}/status").read_text().splitlines()
            if status[0].split()[1] in skip:
                continue
            total += sum(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    return total / 1024


# -- the independent subscriber ------------------------------------------------------------
class Subscriber:
    """``mosquitto_sub`` on ``{prefix}/events/#``; each line: arrival time, then the payload."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process
        self.lines: list[bytes] = []
        self._more = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, port: int, prefix: str) -> AsyncIterator[Subscriber]:
        """Subscribed (a probe message came through) until the block ends."""
        command = [SUB, "-h", "127.0.0.1", "-p", str(port), "-V", "mqttv5", "-q", "1"]
        command += ["-t", f"{prefix}/events/#", "-F", "%U %p"]
        process = await asyncio.create_subprocess_exec(
            "stdbuf", "-oL", *command, stdout=subprocess.PIPE
        )
        subscriber = cls(process)
        try:
            deadline = time.monotonic() + 10
            while not subscriber.lines:
                if time.monotonic() > deadline:
                    raise RuntimeError("mosquitto_sub did not subscribe")
                probe = [PUB, "-h", "127.0.0.1", "-p", str(port), "-q", "1"]
                await (
                    await asyncio.create_subprocess_exec(
                        *probe, "-t", f"{prefix}/events/probe", "-m", "probe"
                    )
                ).wait()
                await subscriber.wait_for(1, 0.2, strict=False)
            subscriber.lines.clear()
            yield subscriber
        finally:
            subscriber._process.kill()
            await subscriber._process.wait()
            subscriber._reader.cancel()

    async def _read(self) -> None:
        assert self._process.stdout is not None
        while line := await self._process.stdout.readline():
            self.lines.append(line)
            self._more.set()

    async def wait_for(self, count: int, timeout: float, *, strict: bool = True) -> None:
        """Until ``count`` messages have come.

        Raises:
            TimeoutError: not within ``timeout`` seconds (when ``strict``).
        """
        deadline = time.monotonic() + timeout
        while len(self.lines) < count:
            self._more.clear()
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await self._more.wait()
            except TimeoutError:
                if strict:
                    raise TimeoutError(f"{len(self.lines)} of {count} messages came") from None
                return

    def arrivals(self) -> list[tuple[float, str, str]]:
        """``(arrival time.time(), task id, status)`` of each message so far."""
        seen = []
        for line in self.lines:
            stamp, payload = line.split(b" ", 1)
            task = json.loads(payload)["data"]["object"]
            seen.append((float(stamp), str(task["id"]), str(task["status"])))
        return seen
