"""``[service]``: the process itself, and where its templates are found."""

from __future__ import annotations

import ipaddress
import os
import socket
from datetime import timedelta
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationInfo, field_validator, model_validator

from billnotify.config.base import StrictModel, check_name
from billnotify.config.types import Duration
from billnotify.errors import ConfigError
from billnotify.secrets import Secret

DEFAULT_TEMPLATES = Path(__file__).resolve().parents[1] / "default_templates"
"""The templates shipped with the package; a config's own folder is layered over them."""


def template_folders(folder: Path) -> list[Path]:
    """Where templates are looked up: ``folder`` when it exists (a template there wins),
    then the shipped defaults, so a folder holding only overrides still finds the rest."""
    return [folder, DEFAULT_TEMPLATES] if folder.is_dir() else [DEFAULT_TEMPLATES]


POSTGRES_SCHEMES = ("postgresql://", "postgres://")
"""How a ``[service] state`` naming a PostgreSQL database starts (libpq URL form)."""


def is_postgres(state: str) -> bool:
    """Whether ``state`` names a PostgreSQL database rather than a SQLite file."""
    return state.startswith(POSTGRES_SCHEMES)


def postgres_url_problem(url: str) -> str | None:
    """Why ``url`` is not a usable ``postgresql://USER@HOST:PORT/DB``, or None.

    A password in the URL is refused: it would be written in the config file and could
    end up in a log line; it comes from ``PGPASSWORD``, ``~/.pgpass`` or
    ``state_password``. The message never repeats the URL (it may hold that password).
    """
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 -- raises on a port that is not a number
    except ValueError:
        return "the port of a postgresql:// state URL must be a number"
    if parts.password is not None:
        return (
            "a postgresql:// state URL must not hold a password: use PGPASSWORD, "
            '~/.pgpass or state_password = "env:NAME"'
        )
    if not parts.hostname:
        return "a postgresql:// state URL names its host: postgresql://USER@HOST:PORT/DB"
    if not parts.path.strip("/"):
        return "a postgresql:// state URL names its database: postgresql://USER@HOST:PORT/DB"
    return None


def check_listen(value: str | None) -> str | None:
    """A ``host:port`` listen address (empty: none)."""
    if not value:
        return None
    _host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"must be host:port, got {value!r}")
    return value


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a listen address) can be reached from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def default_instance() -> str:
    """This process's name when ``[service] instance`` is not set: ``hostname-pid``."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _resolve(base_dir: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base_dir / path


class ServiceConfig(StrictModel):
    """``[service]``: the process itself."""

    name: str = "billnotify"
    """The service's name, used in logs and as the source of its own events (``billnotify://NAME``)."""
    state: str = "state.db"
    """SQLite file (relative to ``$STATE_DIRECTORY`` when set, else to the config file's folder), ``sqlite:///path`` URL, or ``postgresql://USER@HOST:PORT/DB`` for several instances on one database."""
    state_password: Secret | None = None
    """Password of a ``postgresql://`` state (``env:NAME`` / ``file:/path``); without it ``PGPASSWORD`` or ``~/.pgpass``."""
    instance: str | None = None
    """This process's name among several sharing one state (MQTT client id suffix, ``/readyz``, ``status``); default ``hostname-pid``; ``run --instance`` overrides it."""
    lease_ttl: Duration = timedelta(seconds=15)
    """How long a role (polling a resource, publishing) stays with an instance that stopped renewing it; a dead holder's lease moves after this."""
    templates: str = "templates"
    """Folder of your own templates (relative to the config file's folder); they override the shipped ones of the same name."""
    http: str | None = "127.0.0.1:9464"
    """``host:port`` for /healthz, /readyz, /metrics and the console; empty to disable."""
    console_token: Secret | None = None
    """Token (16 characters or more) that opens the operator console at ``/`` (``env:NAME`` / ``file:/path``); without it the console is served only on a loopback ``http`` address."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log verbosity."""
    log_format: Literal["text", "json"] = "text"
    """``text`` for people, ``json`` (one object per line) for log collectors."""
    dry_run: bool = False
    """Render and record every delivery, send nothing."""
    shutdown_grace: Duration = timedelta(seconds=10)
    """How long SIGTERM waits for in-flight deliveries before parking them."""
    delivery_concurrency: int = Field(default=16, ge=1, le=1000)
    """Delivery attempts in flight at once."""

    _name_ok = field_validator("name")(check_name)

    @field_validator("instance")
    @classmethod
    def _check_instance(cls, value: str | None) -> str | None:
        # it becomes an MQTT topic level and part of a client id
        return None if value is None else check_name(value)

    @field_validator("console_token")
    @classmethod
    def _check_console_token(cls, value: Secret | None) -> Secret | None:
        # an empty token would open the console to anyone who finds it
        if value is not None and value.resolved and len(value.reveal()) < 16:
            raise ValueError("must be at least 16 characters (e.g. `openssl rand -base64 32`)")
        return value

    @field_validator("lease_ttl")
    @classmethod
    def _check_lease_ttl(cls, value: timedelta) -> timedelta:
        if not timedelta(seconds=3) <= value <= timedelta(hours=1):
            raise ValueError("must be between 3s and 1h")
        return value

    @model_validator(mode="after")
    def _check_password_needs_postgres(self) -> ServiceConfig:
        if self.state_password is not None and not is_postgres(self.state):
            raise ValueError("state_password is only for a postgresql:// state")
        return self

    _http_ok = field_validator("http")(check_listen)

    @field_validator("templates")
    @classmethod
    def _check_templates(cls, value: str, info: ValidationInfo) -> str:
        # Only a key written in the file is checked (a default is never validated):
        # without one, a missing folder just means the shipped templates alone.
        base_dir = info.context.get("base_dir") if isinstance(info.context, dict) else None
        if base_dir is not None:
            folder = _resolve(Path(base_dir), value)
            if not folder.is_dir():
                raise ValueError(
                    f"no such folder: {folder} (leave the key out to use the shipped templates)"
                )
        return value

    @field_validator("state")
    @classmethod
    def _check_state(cls, value: str) -> str:
        if is_postgres(value):
            problem = postgres_url_problem(value)
            if problem is not None:
                raise ValueError(problem)
            return value
        if value.startswith(("postgresql:", "postgres:")):
            raise ValueError("a PostgreSQL state is postgresql://USER@HOST:PORT/DB")
        if value.startswith("sqlite:") and not value.startswith("sqlite:///"):
            raise ValueError("a sqlite URL is sqlite:///relative or sqlite:////absolute")
        if not value:
            raise ValueError("must not be empty")
        return value

    @property
    def postgres(self) -> bool:
        """Whether the state is a PostgreSQL database (several instances may share it)."""
        return is_postgres(self.state)

    @property
    def instance_name(self) -> str:
        """``instance``, or ``hostname-pid`` when it is not set."""
        return self.instance or default_instance()

    def overridden(self, *, instance: str | None = None, http: str | None = None) -> ServiceConfig:
        """This table with ``run --instance`` / ``--http`` applied, checked as the keys are.

        Raises:
            ConfigError: an option's value is not valid (named by its option).
        """
        issues: list[str] = []
        update: dict[str, str] = {}
        for option, key, value, check in (
            ("--instance", "instance", instance, check_name),
            ("--http", "http", http, check_listen),
        ):
            if value is None:
                continue
            try:
                update[key] = check(value) or ""
            except ValueError as exc:
                issues.append(f"{option}: {exc}")
        if issues:
            raise ConfigError(issues)
        return self.model_copy(update=update)

    def state_path(self, base_dir: Path) -> Path:
        """The SQLite file: a relative one resolves against ``$STATE_DIRECTORY`` when set
        (systemd's ``StateDirectory=``, the container image), else the config's folder,
        so that the state never lands beside a read-only config in ``/etc``."""
        raw = self.state[len("sqlite:///") :] if self.state.startswith("sqlite:///") else self.state
        path = Path(raw).expanduser()
        if path.is_absolute():
            return path
        state_dir = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        return (Path(state_dir) if state_dir else base_dir) / path

    def templates_path(self, base_dir: Path) -> Path:
        """The template folder, resolved against the config file's folder."""
        return _resolve(base_dir, self.templates)

    @property
    def console_open(self) -> bool:
        """Whether the console may be served: with a ``console_token``, or on loopback."""
        listen = self.listen()
        return listen is not None and (bool(self.console_token) or is_loopback(listen[0]))

    def listen(self) -> tuple[str, int] | None:
        """``(host, port)`` of the HTTP endpoint, or None when disabled."""
        if not self.http:
            return None
        host, _, port = self.http.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)
