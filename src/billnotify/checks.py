"""``billnotify check``: templates and references, and with ``--connect`` every peer."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable

from billnotify.actions.base import ActionExecutor
from billnotify.config.models import (
    BillingPlatformSource,
    Config,
)
from billnotify.errors import BillnotifyError
from billnotify.templating import TemplateRenderer

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def build_offline_executors(
    config: Config,
) -> tuple[TemplateRenderer, dict[str, ActionExecutor], Callable[[], Awaitable[None]]]:
    """Executors for rendering only (clients are built but only used if asked)."""
    from billnotify.actions import build_executors
    from billnotify.clients.billing_platform import BillingPlatformClient
    from billnotify.clients.property_billing import PropertyBillingClient

    billing: dict[str, BillingPlatformClient] = {}
    prop: dict[str, PropertyBillingClient] = {}
    for source in config.sources:
        if isinstance(source, BillingPlatformSource):
            billing[source.name] = BillingPlatformClient(source.base_url, source.api_key)
        else:
            prop[source.name] = PropertyBillingClient(
                source.base_url,
                source.auth_url,
                source.username,
                source.password,
                source.administrator_ids,
                document_path=source.document_path,
            )
    renderer = TemplateRenderer(config.template_folders)
    executors = build_executors(
        config, billing_clients=billing, property_clients=prop, mqtt=None, templates=renderer
    )

    async def close() -> None:
        for client in billing.values():
            await client.close()
        for pclient in prop.values():
            await pclient.close()
        for executor in executors.values():
            await executor.close()

    return renderer, executors, close


async def run_check(config: Config, *, connect: bool = False) -> int:
    """Print what was checked; exit 2 on config/template errors, 1 on connection failures."""
    from billnotify.actions import check_actions

    renderer = TemplateRenderer(config.template_folders)
    issues = check_actions(config, renderer)
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
        from billnotify.clients.property_billing import PropertyBillingClient

        source = config.source(name)
        label = f"source {name} ({source.base_url})"
        try:
            if isinstance(source, BillingPlatformSource):
                async with BillingPlatformClient(
                    source.base_url, source.api_key, timeout=10, max_attempts=1
                ) as client:
                    async for _ in client.iter_pages("billingTasks", max_records=1):
                        break
            else:
                async with PropertyBillingClient(
                    source.base_url,
                    source.auth_url,
                    source.username,
                    source.password,
                    source.administrator_ids,
                    timeout=10,
                    max_attempts=1,
                ) as pclient:
                    await pclient.billing_headers(source.properties[0])
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
