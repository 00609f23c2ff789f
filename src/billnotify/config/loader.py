"""Load ``config.toml``: parse, validate, check references, report every error at once."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from jinja2 import TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import ValidationError

from billnotify.config.models import Config
from billnotify.errors import ConfigError

_TAGS = frozenset(
    {"billing_platform", "property_billing", "invoice_action", "email", "webhook", "mqtt"}
)
DEFAULT_CONFIG = "config.toml"


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The config file to read: ``-c``, else ``$BILLNOTIFY_CONFIG``, else ``config.toml``."""
    return Path(explicit or os.environ.get("BILLNOTIFY_CONFIG") or DEFAULT_CONFIG)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate a config file.

    Raises:
        ConfigError: with every problem found, each prefixed by its TOML path.
    """
    file = config_path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read {file}: {exc.strerror}"], str(file)) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"not valid TOML: {exc}"], str(file)) from None
    try:
        return parse_config(data, base_dir=file.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(exc.issues, str(file)) from None


def parse_config(data: Mapping[str, Any], *, base_dir: Path | None = None) -> Config:
    """Validate already-parsed TOML data.

    Raises:
        ConfigError: with every problem found.
    """
    issues: list[str] = []
    raw = dict(data)
    if "base_dir" in raw:
        issues.append("base_dir: unknown key")
        raw.pop("base_dir")
    config: Config | None = None
    try:
        folder = base_dir or Path.cwd()
        config = Config.model_validate({**raw, "base_dir": folder}, context={"base_dir": folder})
    except ValidationError as exc:
        issues.extend(_format_validation_error(exc))
    issues.extend(_check_references(raw))
    if issues or config is None:
        raise ConfigError(issues)
    return config


def _format_loc(loc: Iterable[int | str]) -> str:
    out = ""
    previous_was_index = False
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            previous_was_index = True
            continue
        if previous_was_index and part in _TAGS:
            previous_was_index = False
            continue
        if part.startswith("function-") or part in ("function-after", "function-before"):
            continue
        out += f".{part}" if out else part
        previous_was_index = False
    return out or "(top level)"


def _format_validation_error(exc: ValidationError) -> list[str]:
    issues = []
    for error in exc.errors(include_url=False):
        where = _format_loc(error["loc"])
        message = error["msg"]
        kind = error["type"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        elif kind == "extra_forbidden":
            message = "unknown key"
        elif kind == "missing":
            message = "required key is missing"
        elif kind == "union_tag_not_found":
            message = f"missing '{error['ctx']['discriminator'].strip(chr(39))}'"
        elif kind == "union_tag_invalid":
            ctx = error["ctx"]
            message = f"unknown {ctx['discriminator'].strip(chr(39))} {ctx['tag']!r} (expected {ctx['expected_tags']})"
        if kind not in ("missing", "extra_forbidden", "union_tag_not_found") and "input" in error:
            shown = error["input"]
            if (
                isinstance(shown, str | int | float | bool)
                and not _looks_secret(where)
                and repr(shown) not in message
            ):
                message = f"{message} (got {shown!r})"
        issues.append(f"{where}: {message}")
    return issues


def _looks_secret(where: str) -> bool:
    leaf = where.rsplit(".", 1)[-1]
    return leaf in {"password", "api_key", "secret", "hook_secret", "username"}


def _names(items: Any) -> list[str]:
    if not isinstance(items, list):
        return []
    return [i["name"] for i in items if isinstance(i, dict) and isinstance(i.get("name"), str)]


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _duplicates(table: str, items: Any) -> list[str]:
    seen: dict[str, int] = {}
    issues = []
    for index, name in enumerate(_names(items)):
        if name in seen:
            issues.append(
                f"{table}[{index}].name: duplicate name {name!r} (also {table}[{seen[name]}])"
            )
        else:
            seen[name] = index
    return issues


def _check_references(raw: Mapping[str, Any]) -> list[str]:
    """Checks across tables; they work on the raw data so they run even when a model fails."""
    issues = []
    for table in ("sources", "webhooks", "rules"):
        issues.extend(_duplicates(table, raw.get(table)))
    webhooks = set(_names(raw.get("webhooks")))
    sources = _list(raw.get("sources"))
    source_names = set(_names(sources))
    billing_sources = {
        s.get("name")
        for s in sources
        if isinstance(s, dict) and s.get("kind") == "billing_platform"
    }
    rules = _list(raw.get("rules"))
    jinja = SandboxedEnvironment()
    for r, rule in enumerate(rules):
        if not isinstance(rule, dict):
            continue
        when = rule.get("when")
        if isinstance(when, str):
            try:
                jinja.compile_expression(when)
            except TemplateSyntaxError as exc:
                issues.append(f"rules[{r}].when: not a valid Jinja expression: {exc.message}")
        for name in _list(rule.get("sources")):
            if isinstance(name, str) and name not in source_names:
                issues.append(f"rules[{r}].sources: unknown source {name!r}")
        actions = _list(rule.get("actions"))
        for a, action in enumerate(actions):
            if not isinstance(action, dict):
                continue
            where = f"rules[{r}].actions[{a}]"
            kind = action.get("type")
            endpoint = action.get("endpoint")
            if kind == "webhook" and isinstance(endpoint, str) and endpoint not in webhooks:
                issues.append(f"{where}.endpoint: unknown webhook {endpoint!r}")
            if kind == "email" and not isinstance(raw.get("smtp"), dict):
                issues.append(f"{where}: an email action needs an [smtp] table")
            if kind == "invoice_action":
                target = action.get("source")
                if isinstance(target, str) and target not in billing_sources:
                    issues.append(f"{where}.source: unknown billing_platform source {target!r}")
                elif target is None and sources and not billing_sources:
                    issues.append(f"{where}: invoice actions need a billing_platform source")
    return issues
