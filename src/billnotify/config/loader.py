"""Load ``config.toml``: parse, validate, check references, report every error at once."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from jinja2 import TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import ValidationError

from billnotify.addresses import url_problem
from billnotify.config.base import email_address_problem, is_templated
from billnotify.config.models import Config
from billnotify.errors import ConfigError, SecretError
from billnotify.secrets import Secret

_TAGS = frozenset(
    {"billing_platform", "property_billing", "invoice_action", "email", "webhook", "mqtt"}
)
DEFAULT_CONFIG = "config.toml"
SECRET_KEYS = frozenset(
    {"password", "api_key", "secret", "hook_secret", "console_token", "state_password"}
)
"""Keys whose values should be ``env:NAME`` / ``file:/path`` references, not the secret."""


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The config file to read: ``-c``, else ``$BILLNOTIFY_CONFIG``, else ``config.toml``."""
    return Path(explicit or os.environ.get("BILLNOTIFY_CONFIG") or DEFAULT_CONFIG)


def read_toml(path: str | os.PathLike[str] | None = None) -> tuple[Path, dict[str, Any]]:
    """The config file's path and its parsed TOML, unvalidated.

    Raises:
        ConfigError: the file cannot be read or is not TOML.
    """
    file = config_path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read {file}: {exc.strerror}"], str(file)) from None
    try:
        return file, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"not valid TOML: {exc}"], str(file)) from None


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    resolve_secrets: bool = True,
    warnings: list[str] | None = None,
) -> Config:
    """Read and validate a config file.

    Args:
        path: the file (``-c``, ``$BILLNOTIFY_CONFIG``, ``config.toml``).
        resolve_secrets: False leaves ``env:``/``file:`` references unread, for
            commands that use no secret (their variables need not be set).
        warnings: if given, receives a line for each secret written in the file.

    Raises:
        ConfigError: with every problem found, each prefixed by its TOML path.
    """
    file, data = read_toml(path)
    try:
        return parse_config(
            data,
            base_dir=file.resolve().parent,
            resolve_secrets=resolve_secrets,
            warnings=warnings,
        )
    except ConfigError as exc:
        raise ConfigError(exc.issues, str(file)) from None


def with_state_password(config: Config) -> Config:
    """``config`` with ``[service] state_password`` read, when a command that reads no
    other secret still connects to a PostgreSQL state (``status``, ``events``, ...).

    Raises:
        ConfigError: the variable is unset or the file unreadable.
    """
    secret = config.service.state_password
    if secret is None or secret.resolved or secret.reference is None:
        return config
    try:
        password = Secret.resolve(secret.reference, base_dir=config.base_dir)
    except SecretError as exc:
        raise ConfigError([f"service.state_password: {exc}"]) from None
    service = config.service.model_copy(update={"state_password": password})
    return config.model_copy(update={"service": service})


def parse_config(
    data: Mapping[str, Any],
    *,
    base_dir: Path | None = None,
    resolve_secrets: bool = True,
    warnings: list[str] | None = None,
) -> Config:
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
        context = {"base_dir": folder, "resolve_secrets": resolve_secrets}
        config = Config.model_validate({**raw, "base_dir": folder}, context=context)
    except ValidationError as exc:
        issues.extend(_format_validation_error(exc))
    issues.extend(_check_references(raw))
    issues.extend(check_destinations(raw))
    if warnings is not None:
        warnings.extend(literal_secrets(raw))
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
            shown = _without_password(error["input"])
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
    return leaf in SECRET_KEYS or leaf == "username"


def _without_password(value: Any) -> Any:
    """``value`` with the password of a URL in it (``scheme://user:pw@host``) masked."""
    if not isinstance(value, str) or "://" not in value:
        return value
    try:
        parts = urlsplit(value)
        password = parts.password
    except ValueError:  # not a URL that splits: the model says what is wrong with it
        return value
    if password is None:
        return value
    netloc = parts.netloc.replace(f":{password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


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
    for table in ("sources", "webhooks", "rules", "mute_windows"):
        issues.extend(_duplicates(table, raw.get(table)))
    webhooks = set(_names(raw.get("webhooks")))
    mute_windows = set(_names(raw.get("mute_windows")))
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
        for m, name in enumerate(_list(rule.get("mute"))):
            if isinstance(name, str) and name not in mute_windows:
                issues.append(f"rules[{r}].mute[{m}]: unknown mute window {name!r}")
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


def check_destinations(raw: Mapping[str, Any]) -> list[str]:
    """What is certain to fail at send time (SPEC §5): a webhook URL the SSRF guard
    refuses (judged from the URL; ``check`` also resolves names) and a literal email
    address that is not one. Templated addresses are checked when rendered."""
    issues = []
    for w, hook in enumerate(_list(raw.get("webhooks"))):
        url = hook.get("url") if isinstance(hook, dict) else None
        if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
            continue  # the model reports what is not an http(s) URL at all
        problem = url_problem(url, allow_private=hook.get("allow_private") is True)
        if problem is not None and not problem.startswith("not an http"):
            issues.append(f"webhooks[{w}].url: {problem}")
    smtp = raw.get("smtp")
    sender = smtp.get("from") if isinstance(smtp, dict) else None
    if isinstance(sender, str) and not is_templated(sender):
        problem = email_address_problem(sender, single=True)
        if problem is not None:
            issues.append(f"smtp.from: {problem}")
    for r, rule in enumerate(_list(raw.get("rules"))):
        if not isinstance(rule, dict):
            continue
        for a, action in enumerate(_list(rule.get("actions"))):
            if not isinstance(action, dict) or action.get("type") != "email":
                continue
            where = f"rules[{r}].actions[{a}]"
            for key in ("to", "cc", "bcc"):
                for i, value in enumerate(_list(action.get(key))):
                    if isinstance(value, str) and not is_templated(value):
                        problem = email_address_problem(value)
                        if problem is not None:
                            issues.append(f"{where}.{key}[{i}]: {problem}")
            reply_to = action.get("reply_to")
            if isinstance(reply_to, str) and reply_to and not is_templated(reply_to):
                problem = email_address_problem(reply_to)
                if problem is not None:
                    issues.append(f"{where}.reply_to: {problem}")
    return issues


def literal_secrets(raw: Any, where: str = "") -> list[str]:
    """A warning for each secret written in the file (its TOML path, never its value)."""
    found: list[str] = []
    if isinstance(raw, dict):
        for key, value in raw.items():
            path = f"{where}.{key}" if where else str(key)
            if key in SECRET_KEYS and isinstance(value, str):
                if value and not value.startswith(("env:", "file:")):
                    found.append(
                        f"{path}: a secret written in the config file; "
                        'prefer "env:NAME" or "file:/path"'
                    )
            else:
                found.extend(literal_secrets(value, path))
    elif isinstance(raw, list):
        for index, item in enumerate(raw):
            found.extend(literal_secrets(item, f"{where}[{index}]"))
    return found
