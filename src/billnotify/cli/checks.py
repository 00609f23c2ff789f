"""``billnotify check``: every config error at once (the model, references, templates,
what webhook host names resolve to), and with ``--connect`` every peer."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from billnotify.addresses import is_public, url_problem
from billnotify.cli.digest_checks import digest_template_warnings
from billnotify.config.chains import results_warnings
from billnotify.config.loader import parse_config, read_toml
from billnotify.config.models import DEFAULT_TEMPLATES, Config, PropertyBillingSource
from billnotify.errors import BillnotifyError, ConfigError
from billnotify.templating import TemplateRenderer

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


async def run_check_file(path: str | os.PathLike[str] | None, *, connect: bool = False) -> int:
    """``billnotify check``: every problem of a config file at once, then the peers.

    The model, the references, what is certain to fail at send time, every template
    (compiled even when the rest is invalid, from wherever the templates are) and what
    webhook host names resolve to. Warnings (a secret written in the file, a name that
    does not resolve) go to stderr and do not fail the check.

    Returns:
        0 when all is well, 2 on any configuration error, 1 when a peer fails
        (``connect``).
    """
    file, raw = read_toml(path)
    warnings: list[str] = []
    issues: list[str] = []
    config: Config | None = None
    try:
        config = parse_config(raw, base_dir=file.resolve().parent, warnings=warnings)
    except ConfigError as exc:
        issues.extend(exc.issues)
    if config is not None:
        issues.extend(_config_issues(config))
        warnings.extend(results_warnings(config.rules, config.template_folders))
        warnings.extend(digest_template_warnings(config.rules, config.template_folders))
    else:
        issues.extend(raw_template_issues(raw, file.resolve().parent))
    unsafe, unresolved = await resolve_webhook_hosts(raw)
    issues.extend(unsafe)
    warnings.extend(unresolved)
    for warning in warnings:
        print(f"billnotify: warning: {warning}", file=sys.stderr)
    if issues or config is None:
        error = ConfigError(issues, str(file))
        print(f"billnotify: invalid configuration\n{error}", file=sys.stderr)
        return EXIT_CONFIG
    return await run_check(config, connect=connect, checked=True)


async def run_check(config: Config, *, connect: bool = False, checked: bool = False) -> int:
    """Print what was checked; exit 2 on config/template errors, 1 on connection failures.

    Args:
        checked: the templates were already checked (by :func:`run_check_file`).
    """
    issues = [] if checked else _config_issues(config)
    if issues:
        print(f"billnotify: {len(issues)} configuration error(s):", file=sys.stderr)
        for issue in issues:
            print(f"  {issue}", file=sys.stderr)
        return EXIT_CONFIG
    actions = sum(len(r.actions) for r in config.rules)
    print(
        f"config OK: {len(config.sources)} source(s), {len(config.webhooks)} webhook(s), "
        f"{len(config.rules)} rule(s) with {actions} action(s); templates in "
        f"{config.templates_path}"
    )
    if not connect:
        return EXIT_OK
    results = await asyncio.gather(*(probe() for probe in _probes(config)))
    failed = 0
    for name, error in results:
        print(f"  {'FAIL' if error else 'ok  '} {name}{': ' + error if error else ''}")
        failed += bool(error)
    return EXIT_FAILURE if failed else EXIT_OK


def _config_issues(config: Config) -> list[str]:
    """What ``check`` finds in a config that validated: templates, actions, SMTP."""
    from billnotify.actions import check_actions
    from billnotify.actions.smtp import check_smtp

    renderer = TemplateRenderer(config.template_folders)
    return check_actions(config, renderer) + check_smtp(config.smtp) + _console_issues(config)


def _console_issues(config: Config) -> list[str]:
    """The console without a token on an address other machines reach (SPEC §7.4)."""
    service = config.service
    listen = service.listen()
    if listen is None or service.console_open:
        return []
    return [
        f"service.console_token: required when service.http ({service.http}) is not a "
        "loopback address (the console would be open to the network): set console_token = "
        '"env:NAME", or listen on 127.0.0.1'
    ]


def raw_template_issues(raw: Mapping[str, Any], base_dir: Path) -> list[str]:
    """Template problems of a config that did not validate, found from the raw TOML.

    Every template file in the folder ``[service].templates`` names (or the default)
    and the shipped one, and each action's templates and inline strings, wherever the
    action's table is readable. ``when`` expressions are checked by the loader already.
    """
    service = raw.get("service")
    folder = service.get("templates") if isinstance(service, dict) else None
    templates = Path(folder if isinstance(folder, str) else "templates").expanduser()
    renderer = TemplateRenderer([base_dir / templates, DEFAULT_TEMPLATES])
    problems = [f"templates: {p}" for p in renderer.check()]
    rules = raw.get("rules")
    for r, rule in enumerate(rules if isinstance(rules, list) else []):
        actions = rule.get("actions") if isinstance(rule, dict) else None
        for a, action in enumerate(actions if isinstance(actions, list) else []):
            if not isinstance(action, dict):
                continue
            where = f"rules[{r}].actions[{a}]"
            for suffix, what in _raw_template_parts(action).items():
                problems.extend(
                    f"{where}{suffix}: {p}" for p in renderer.check(folder=False, **what)
                )
    return problems


def _raw_template_parts(action: Mapping[str, Any]) -> dict[str, dict[str, list[str]]]:
    """What of one raw action is a template, as ``TemplateRenderer.check`` arguments,
    keyed by the TOML path suffix it is reported under (as ``check_actions`` does)."""

    def strings(*keys: str) -> list[str]:
        found: list[str] = []
        for key in keys:
            value = action.get(key)
            items = value if isinstance(value, list) else [value]
            found.extend(v for v in items if isinstance(v, str))
        return found

    kind = action.get("type")
    if kind == "email":
        return {
            ".template": {"email_templates": strings("template")},
            ".to": {"strings": strings("to", "cc", "bcc", "reply_to")},
        }
    if kind == "webhook":
        return {".body": {"body_templates": strings("body")}}
    if kind == "mqtt":
        return {"": {"strings": strings("topic", "payload")}}
    if kind == "invoice_action":
        params = action.get("params")
        return {".params": {"strings": _nested_strings(params)}}
    return {}


def _nested_strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for item in value for s in _nested_strings(item)]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _nested_strings(item)]
    return []


async def resolve_webhook_hosts(
    raw: Mapping[str, Any], *, timeout: float = 5.0
) -> tuple[list[str], list[str]]:
    """Resolve each webhook's host name as the SSRF guard will when it sends.

    Endpoints with ``allow_private`` and URLs already refused from the URL alone are
    skipped. A name resolving to any non-public address is an error; one that does not
    resolve (here, now) is only a warning.

    Returns:
        (errors, warnings), each line prefixed by the URL's TOML path.
    """
    names: dict[str, list[str]] = {}
    ports: dict[str, int] = {}
    hooks = raw.get("webhooks")
    for w, hook in enumerate(hooks if isinstance(hooks, list) else []):
        url = hook.get("url") if isinstance(hook, dict) else None
        if not isinstance(url, str) or hook.get("allow_private") is True:
            continue
        if url_problem(url, allow_private=False) is not None:
            continue
        parts = urlsplit(url)
        host = parts.hostname or ""
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
            continue  # an IP literal: url_problem has judged it
        except ValueError:
            names.setdefault(host, []).append(f"webhooks[{w}].url")
            ports[host] = parts.port or 443
    loop = asyncio.get_running_loop()

    async def lookup(host: str) -> list[str] | str:
        try:
            async with asyncio.timeout(timeout):
                found = await loop.getaddrinfo(host, ports[host], type=socket.SOCK_STREAM)
        except TimeoutError:
            return f"no answer within {timeout:g}s"
        except OSError as exc:
            return str(exc) or type(exc).__name__
        return sorted({str(info[4][0]) for info in found})

    hosts = list(names)
    answers = await asyncio.gather(*(lookup(host) for host in hosts))
    errors: list[str] = []
    warnings: list[str] = []
    for host, answer in zip(hosts, answers, strict=True):
        for where in names[host]:
            if isinstance(answer, str):
                warnings.append(f"{where}: cannot resolve {host} ({answer}); not checked")
                continue
            blocked = [a for a in answer if not is_public(a)]
            if blocked:
                errors.append(
                    f"{where}: refusing {host}: resolves to non-public address(es) "
                    f"{', '.join(blocked)} (set allow_private = true for an internal receiver)"
                )
    return errors, warnings


Probe = Callable[[], Awaitable[tuple[str, str | None]]]


def _probes(config: Config) -> list[Probe]:
    probes: list[Probe] = []
    for source in config.sources:
        probes.append(_source_probe(config, source.name))
    if config.mqtt.enabled and not config.mqtt.embedded:
        probes.append(_mqtt_probe(config))
    if config.smtp is not None:
        probes.append(_smtp_probe(config))
    return probes


def _source_probe(config: Config, name: str) -> Probe:
    async def probe() -> tuple[str, str | None]:
        from billnotify.clients.billing_platform import BillingPlatformClient
        from billnotify.components import source_client

        source = config.source(name)
        label = f"source {name} ({source.base_url})"
        try:
            # one quick try: the service's own retries would hide a failure for minutes
            async with source_client(source, timeout=10, max_attempts=1) as client:
                if isinstance(client, BillingPlatformClient):
                    async for _ in client.iter_pages("billingTasks", max_records=1):
                        break
                elif isinstance(source, PropertyBillingSource):
                    await client.billing_headers(source.properties[0])
        except BillnotifyError as exc:
            return label, str(exc)
        return label, None

    return probe


def _mqtt_probe(config: Config) -> Probe:
    async def probe() -> tuple[str, str | None]:
        import aiomqtt

        from billnotify.publish.connection import make_client

        label = f"mqtt broker {config.mqtt.host}:{config.mqtt.port}"
        try:
            async with (
                asyncio.timeout(10),
                make_client(config.mqtt, f"{config.mqtt.client_id}-check", session=False),
            ):
                pass
        except (aiomqtt.MqttError, TimeoutError, OSError) as exc:
            return label, str(exc) or type(exc).__name__
        return label, None

    return probe


def _smtp_probe(config: Config) -> Probe:
    async def probe() -> tuple[str, str | None]:
        import aiosmtplib

        smtp = config.smtp
        assert smtp is not None
        label = f"smtp {smtp.host}:{smtp.port}"
        client = aiosmtplib.SMTP(
            hostname=smtp.host,
            port=smtp.port,
            use_tls=smtp.tls,
            start_tls=smtp.starttls,
            timeout=10,
            validate_certs=smtp.validate_certs,
        )
        try:
            await client.connect()
            if smtp.username and smtp.password:
                await client.login(smtp.username, smtp.password.reveal())
            await client.quit()
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            return label, str(exc) or type(exc).__name__
        return label, None

    return probe
