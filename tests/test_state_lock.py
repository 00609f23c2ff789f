"""One service per SQLite state (issue 10, item 1): a second ``billnotify run`` on a state
that a live process holds refuses to start and names the holder; a SIGKILLed holder
never blocks a restart; read-only commands work beside the running service."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from billnotify.errors import StoreError
from billnotify.simulator import Simulator
from billnotify.store.lock import StateLock, StateLockedError
from servers import free_port, sim_source, toml_config


def _config(folder: Path, name: str, sim: Simulator, http_port: int) -> Path:
    path = folder / name
    raw = {
        "service": {
            "name": "locktest",
            "state": "state.db",  # the same file for every config in ``folder``
            "http": f"127.0.0.1:{http_port}",
            "log_level": "warning",
        },
        "mqtt": {"enabled": False},
        "sources": [sim_source(sim, poll_interval="200ms", watch=["billing_tasks"])],
    }
    path.write_text(toml_config(raw))
    return path


def _start(config: Path, stderr: Path) -> subprocess.Popen[bytes]:
    with stderr.open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "billnotify", "run", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "billnotify", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


async def _until_healthy(port: int, proc: subprocess.Popen[bytes], within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        assert proc.poll() is None, f"the service exited with {proc.returncode}"
        try:
            await asyncio.to_thread(
                urllib.request.urlopen, f"http://127.0.0.1:{port}/healthz", None, 1
            )
            return
        except OSError:
            pass
        assert time.monotonic() < deadline, "the service never came up"
        await asyncio.sleep(0.05)


@pytest.mark.fault
@pytest.mark.timeout(60)
async def test_a_second_service_on_a_held_state_refuses_and_a_killed_holder_does_not_block(
    tmp_path: Path, sim: Simulator
) -> None:
    sim.state.add_billing_task(status="Pending")
    first_port, second_port = free_port(), free_port()
    first_config = _config(tmp_path, "first.toml", sim, first_port)
    second_config = _config(tmp_path, "second.toml", sim, second_port)
    first = _start(first_config, tmp_path / "first.err")
    procs = [first]
    try:
        await _until_healthy(first_port, first, 30)

        began = time.monotonic()
        second = _start(second_config, tmp_path / "second.err")
        procs.append(second)
        status = await asyncio.to_thread(second.wait, 30)
        refused_in = time.monotonic() - began
        message = (tmp_path / "second.err").read_text()
        assert status != 0
        assert refused_in < 10, refused_in
        assert "in use by another billnotify process" in message
        assert f"pid {first.pid} on host" in message
        assert f"http 127.0.0.1:{first_port}" in message
        assert "since 20" in message  # when the holder started
        assert str(tmp_path / "state.db") in message
        assert first.poll() is None  # the holder was not disturbed

        # reading the state needs no lock; nor does editing the ledger
        for args in (["events"], ["deliveries"], ["deliveries", "retry", "nope"]):
            done = await asyncio.to_thread(_cli, *args, "-c", str(second_config))
            assert "in use" not in done.stderr, done.stderr
            if args != ["deliveries", "retry", "nope"]:
                assert done.returncode == 0, done.stderr
        done = await asyncio.to_thread(_cli, "events", "-c", str(second_config))
        assert "billing_task" in done.stdout or done.stdout == ""  # baseline: no events

        first.send_signal(signal.SIGKILL)
        await asyncio.to_thread(first.wait, 10)
        third = _start(second_config, tmp_path / "third.err")
        procs.append(third)
        await _until_healthy(second_port, third, 30)
        third.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(third.wait, 30) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def test_the_lock_is_exclusive_and_names_its_holder(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    with StateLock(state, {"service": "one", "http": "127.0.0.1:1"}):
        with pytest.raises(StateLockedError) as caught:
            StateLock(state).acquire()
        assert caught.value.holder["pid"] == os.getpid()
        assert caught.value.holder["service"] == "one"
        assert "service 'one', http 127.0.0.1:1, since " in str(caught.value)
    with StateLock(state):  # released: free again
        pass


def test_a_lock_that_cannot_be_created_says_where(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match=f"cannot create the state lock {blocker}/state.db.lock"):
        StateLock(blocker / "state.db").acquire()
