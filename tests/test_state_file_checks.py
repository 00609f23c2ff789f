"""A state path that exists must be billnotify's (issue 10, item 10): an empty file, a file
that is not SQLite or a SQLite database of something else stops the start with what to
do, and is left as it was; a new baseline only for a path that does not exist."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from billnotify.errors import StoreError
from billnotify.simulator import Simulator
from billnotify.store import SqliteStore
from billnotify.store.schema import SCHEMA_VERSION
from servers import free_port, sim_source, toml_config


def _config(folder: Path, sim: Simulator, http_port: int) -> Path:
    path = folder / "config.toml"
    raw = {
        "service": {
            "name": "statefile",
            "state": "state.db",
            "http": f"127.0.0.1:{http_port}",
            "log_level": "warning",
        },
        "mqtt": {"enabled": False},
        "sources": [sim_source(sim, poll_interval="200ms", watch=["billing_tasks"])],
    }
    path.write_text(toml_config(raw))
    return path


def _billnotify(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "billnotify", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _foreign_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        db.execute("INSERT INTO notes (text) VALUES ('mine')")
    db.close()


def _tables(path: Path) -> set[str]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    finally:
        db.close()


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda p: p.write_bytes(b""), "is empty (0 bytes)"),
        (lambda p: p.write_text("state = 1\n"), "is not a SQLite database"),
        (_foreign_sqlite, "is a SQLite database but not a billnotify state"),
    ],
    ids=["empty", "not-sqlite", "foreign-sqlite"],
)
async def test_run_refuses_a_state_that_is_not_billnotifys(
    tmp_path: Path, sim: Simulator, make, says: str
) -> None:
    state = tmp_path / "state.db"
    make(state)
    before = state.read_bytes()
    config = _config(tmp_path, sim, free_port())
    done = await asyncio.to_thread(_billnotify, "run", "-c", str(config))
    assert done.returncode != 0
    assert f"the state file {state} {says}" in done.stderr, done.stderr
    assert "new baseline" in done.stderr  # and what to do
    assert state.read_bytes() == before  # left as it was
    # the read-only commands refuse it too
    listed = await asyncio.to_thread(_billnotify, "events", "-c", str(config))
    assert listed.returncode != 0
    assert says in listed.stderr
    assert state.read_bytes() == before


async def test_an_empty_state_beside_a_wal_is_refused_and_the_wal_kept(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    state.write_bytes(b"")
    wal = tmp_path / "state.db-wal"
    wal.write_bytes(b"\x37\x7f\x06\x82" + bytes(60))  # SQLite would delete it on open
    with pytest.raises(StoreError, match=r"is empty .* keep state.db-wal \(64 bytes\)"):
        await SqliteStore(state).open()
    assert wal.stat().st_size == 64


async def test_a_state_of_a_newer_billnotify_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    async with SqliteStore(state):
        pass
    with sqlite3.connect(state) as db:
        db.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),)
        )
    db.close()
    with pytest.raises(
        StoreError,
        match=f"schema version '{SCHEMA_VERSION + 1}'; this billnotify understands up to",
    ):
        await SqliteStore(state).open()


async def test_the_first_start_makes_the_state_and_a_start_beside_wal_files_keeps_it(
    tmp_path: Path, sim: Simulator
) -> None:
    sim.state.add_billing_task(status="Pending")
    port = free_port()
    config = _config(tmp_path, sim, port)
    state = tmp_path / "state" / "state.db"  # in a folder that does not exist yet
    text = config.read_text().replace('state = "state.db"', 'state = "state/state.db"')
    config.write_text(text)
    beside: sqlite3.Connection | None = None
    try:
        for round_ in range(2):
            proc = _start(config, tmp_path / f"run{round_}.err")
            try:
                deadline = time.monotonic() + 30
                while not (_has_cursor(state) and await asyncio.to_thread(_healthy, port)):
                    assert proc.poll() is None, (tmp_path / f"run{round_}.err").read_text()
                    assert time.monotonic() < deadline, "no baseline"
                    await asyncio.sleep(0.05)
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(proc.wait, 30) == 0
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
            if beside is None:
                # a commit still in the WAL, which stays with its index while we hold it
                beside = sqlite3.connect(state, isolation_level=None)
                beside.execute("INSERT INTO meta (key, value) VALUES ('beside', 'kept')")
                assert Path(f"{state}-wal").stat().st_size > 0
                assert Path(f"{state}-shm").exists()
    finally:
        if beside is not None:
            beside.close()
    assert {"meta", "events", "deliveries"} <= _tables(state)
    db = sqlite3.connect(state)
    assert db.execute("SELECT value FROM meta WHERE key = 'beside'").fetchone() == ("kept",)
    db.close()
    assert sorted(p.name for p in state.parent.iterdir() if ".new-" in p.name) == []


def _start(config: Path, stderr: Path) -> subprocess.Popen[bytes]:
    with stderr.open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "billnotify", "run", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
            return True
    except OSError:
        return False


def _has_cursor(state: Path) -> bool:
    if not state.exists():
        return False
    try:
        db = sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=5)
        try:
            return bool(db.execute("SELECT count(*) FROM cursors").fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error:
        return False


async def test_a_new_state_is_made_aside_and_linked_into_place(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    # what a start killed while making the state left behind: not the state, and replaced
    (tmp_path / f"state.db.new-{os.getpid()}").write_text("half a file")
    async with SqliteStore(state) as store:
        assert await store.last_seq() == 0
    assert [p.name for p in tmp_path.iterdir() if ".new-" in p.name] == []
    assert "schema_version" in {
        key for (key,) in sqlite3.connect(state).execute("SELECT key FROM meta")
    }
