"""``[service]``: the process itself, and where its templates are found."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from billnotify.config.base import StrictModel, check_name
from billnotify.config.types import Duration

DEFAULT_TEMPLATES = Path(__file__).resolve().parents[1] / "default_templates"
"""The templates shipped with the package; a config's own folder is layered over them."""


def template_folders(folder: Path) -> list[Path]:
    """Where templates are looked up: ``folder`` when it exists (a template there wins),
    then the shipped defaults, so a folder holding only overrides still finds the rest."""
    return [folder, DEFAULT_TEMPLATES] if folder.is_dir() else [DEFAULT_TEMPLATES]


def _resolve(base_dir: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base_dir / path


class ServiceConfig(StrictModel):
    """``[service]``: the process itself."""

    name: str = "billnotify"
    """Instance name, used in logs."""
    state: str = "state.db"
    """SQLite file (relative to the config file's folder) or ``sqlite:///path`` URL."""
    templates: str = "templates"
    """Folder of your own templates (relative to the config file's folder); they override the shipped ones of the same name."""
    http: str | None = "127.0.0.1:9464"
    """``host:port`` for /healthz, /readyz and /metrics; empty to disable."""
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

    @field_validator("http")
    @classmethod
    def _check_listen(cls, value: str | None) -> str | None:
        if not value:
            return None
        _host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"must be host:port, got {value!r}")
        return value

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
        if value.startswith("sqlite:") and not value.startswith("sqlite:///"):
            raise ValueError("a sqlite URL is sqlite:///relative or sqlite:////absolute")
        if not value:
            raise ValueError("must not be empty")
        return value

    def state_path(self, base_dir: Path) -> Path:
        """The SQLite file, resolved against the config file's folder."""
        raw = self.state[len("sqlite:///") :] if self.state.startswith("sqlite:///") else self.state
        path = Path(raw).expanduser()
        return path if path.is_absolute() else base_dir / path

    def templates_path(self, base_dir: Path) -> Path:
        """The template folder, resolved against the config file's folder."""
        return _resolve(base_dir, self.templates)

    def listen(self) -> tuple[str, int] | None:
        """``(host, port)`` of the HTTP endpoint, or None when disabled."""
        if not self.http:
            return None
        host, _, port = self.http.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)
