"""What ``billnotify status`` and ``billnotify state copy`` do (SPEC §6, §7.1).

``status`` shows the event log, the ledger and, for a state that several processes
share, every live instance and every lease; ``state copy`` moves a SQLite state into
PostgreSQL (``store/transfer.py``) and says what it copied.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol, runtime_checkable

from billnotify.cli.commands import status_lines
from billnotify.config.models import Config
from billnotify.config.service import is_postgres, postgres_url_problem
from billnotify.errors import ConfigError
from billnotify.events import format_time
from billnotify.store.base import Leases, Store


@runtime_checkable
class _Leased(Leases, Protocol):
    """A store that knows its instances and leases."""


async def status_report(config: Config, store: Store, now: datetime | None = None) -> list[str]:
    """``billnotify status``: the log and the ledger, then live instances and leases."""
    state = config.service.state if config.service.postgres else str(config.state_path)
    lines = await status_lines(store, state)
    if any(rule.grouped for rule in config.rules):
        from billnotify.rules.groups import group_status

        lines += await group_status(store, now or datetime.now(UTC))
    if isinstance(store, _Leased):
        lines += await instance_lines(store, now or datetime.now(UTC), config.service.lease_ttl)
    return lines


async def instance_lines(store: Leases, now: datetime, ttl: timedelta) -> list[str]:
    """One line per live instance (heartbeat younger than ``ttl``) and per lease."""
    instances = await store.instances(now, ttl)
    lines = [f"instances: {len(instances)} live (lease_ttl {ttl.total_seconds():g}s)"]
    for instance in instances:
        said = " ".join(f"{key}={value}" for key, value in sorted(instance.info.items()))
        lines.append(
            f"  instance {instance.name}: up since {format_time(instance.started_at)}, "
            f"heartbeat {format_time(instance.heartbeat_at)}" + (f", {said}" if said else "")
        )
    leases = await store.leases()
    lines.append(f"leases: {len(leases)}")
    for lease in leases:
        state = "held" if lease.expires_at > now else "lapsed"
        lines.append(
            f"  lease {lease.name}: {state} by {lease.holder} (epoch {lease.epoch}), "
            f"expires {format_time(lease.expires_at)}"
        )
    return lines


async def copy_command(config: Config, target: str, *, source: str | None, force: bool) -> int:
    """``billnotify state copy --to URL``: the config's SQLite state (or ``source``)
    into the PostgreSQL database ``target``; prints the counts.

    Raises:
        ConfigError: ``--to`` is not a usable PostgreSQL URL, or there is no SQLite
            state to copy from.
        StoreError: the copy failed (the target is left as it was).
    """
    from billnotify.store.transfer import copy_state  # asyncpg only where it is used

    problem = (
        postgres_url_problem(target)
        if is_postgres(target)
        else "must be postgresql://USER@HOST:PORT/DB"
    )
    if problem is not None:
        raise ConfigError([f"--to: {problem}"])
    if source is not None:
        path = Path(source).expanduser()
    elif config.service.postgres:
        raise ConfigError(
            [
                "--from-config: [service] state is already PostgreSQL; name the SQLite file with --from"
            ]
        )
    else:
        path = config.state_path
    # the config's state password serves a target that is the configured database
    secret = config.service.state_password
    password = secret.reveal() if secret is not None and target == config.service.state else None
    report = await copy_state(path, target, password=password, force=force)
    print(f"copied {path} into {target}: {report}", file=sys.stdout)
    return 0
