"""``billnotify`` as a child process: a command run to its end, and ``billnotify run`` for
the tests that SIGKILL it and start it again.

``cli(*args)`` runs ``billnotify ARGS`` and returns its exit status, stdout and
stderr.

``BillnotifyRun(config)`` starts ``billnotify run -c config`` in the config's folder (its
output appended to ``billnotify.log`` there), SIGKILLs it and starts it again (by hand,
or every so much progress with ``kill_every``), waits on a condition with a deadline
while failing early if the process died, and stops it with SIGTERM. As an ``async with`` block it leaves no process behind, whatever failed.

``query(db, sql)`` reads the state file while the service writes it (WAL: a reader does
not block the writer); ``count(db, sql)`` is the first column of its first row.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from servers import PYTHON

T = TypeVar("T")


async def cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[int, str, str]:
    """``billnotify ARGS`` to its end (within 60 s): (exit status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "billnotify", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=cwd,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def query(db: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    """The rows of ``sql`` on the state file ``db``; none before its schema exists."""
    if not db.exists():
        return []
    try:
        with contextlib.closing(
            sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        ) as conn:
            return list(conn.execute(sql, params).fetchall())
    except sqlite3.OperationalError:  # the schema is not there yet
        return []


def count(db: Path, sql: str) -> int:
    """The single number ``sql`` selects (0 before the schema exists)."""
    rows = query(db, sql)
    return int(str(rows[0][0])) if rows else 0


class BillnotifyRun:
    """``billnotify run -c config`` as a child process that a test kills and restarts.

    Args:
        config: the TOML config; the process runs in its folder and logs to
            ``billnotify.log`` beside it.
        http_port: where the config serves ``/healthz``, if it does: :meth:`stop` then
            waits for it, so that a stop is graceful and not a kill during start-up.
    """

    def __init__(self, config: Path, *, http_port: int | None = None) -> None:
        self.config = config
        self.http_port = http_port
        self.log = config.parent / "billnotify.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.kills = 0

    async def __aenter__(self) -> BillnotifyRun:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                PYTHON, "-m", "billnotify", "run", "-c", str(self.config),
                stdout=out, stderr=out, cwd=self.config.parent,
            )  # fmt: skip

    async def kill(self) -> None:
        """SIGKILL, and wait until the process is gone."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        self.kills += 1

    async def restart(self) -> None:
        """SIGKILL, then start again."""
        await self.kill()
        await self.start()

    async def kill_every(
        self, step: int, progress: Callable[[], int], what: str, kills: int, timeout: float = 30
    ) -> AsyncIterator[int]:
        """SIGKILL each time ``progress()`` has grown by ``step`` (say, ``step`` more
        emails received), until ``kills`` kills; yields the count after each kill, the
        process dead, and starts it again when the loop body is done."""
        while self.kills < kills:
            target = progress() + step
            await self.until(
                lambda t=target: progress() >= t,
                f"{target} {what} before kill {self.kills + 1}",
                timeout,
            )
            await self.kill()
            yield self.kills
            await self.start()

    async def stop(self) -> int:
        """SIGTERM (once ``/healthz`` answers, with ``http_port``); the exit code."""
        assert self.proc is not None
        if self.http_port is not None:
            await self.until(self._healthy, "the service to come up", 30)
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), 30)

    async def until(
        self,
        condition: Callable[[], T],
        what: str,
        timeout: float = 30,
        detail: Callable[[], str] | None = None,
    ) -> T:
        """``condition()``'s first truthy value; fails after ``timeout`` seconds, or at
        once if the process exited, with the log's tail (and ``detail()``) in the message."""
        assert self.proc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (value := condition()):
            if self.proc.returncode is not None:
                raise AssertionError(
                    f"billnotify exited ({self.proc.returncode}) waiting for {what}\n" + self.tail()
                )
            if loop.time() > deadline:
                more = f": {detail()}" if detail else ""
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what}{more}\n{self.tail()}"
                )
            await asyncio.sleep(0.02)
        return value

    def tail(self) -> str:
        """The end of the process's log."""
        return self.log.read_text()[-3000:] if self.log.exists() else ""

    def _healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.http_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=1):
                return True
        except OSError:
            return False
