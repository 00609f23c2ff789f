"""Configuration: pydantic models of ``config.toml`` and the loader that validates it.

The models and the loader are imported on first use of a name from here, not with the
package: a module that needs only :mod:`billnotify.config.types` (the event vocabulary,
which the store's child process needs) does not load every model and Jinja with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from billnotify.config.loader import load_config, parse_config
    from billnotify.config.models import (
        Action,
        BillingPlatformSource,
        Config,
        EmailAction,
        InvoiceActionAction,
        MqttAction,
        MqttConfig,
        PropertyBillingSource,
        Rule,
        ServiceConfig,
        SmtpConfig,
        SourceConfig,
        WebhookAction,
        WebhookEndpoint,
    )


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    loader = name in ("load_config", "parse_config")
    module = importlib.import_module(f"billnotify.config.{'loader' if loader else 'models'}")
    return getattr(module, name)


__all__ = [
    "Action",
    "BillingPlatformSource",
    "Config",
    "EmailAction",
    "InvoiceActionAction",
    "MqttAction",
    "MqttConfig",
    "PropertyBillingSource",
    "Rule",
    "ServiceConfig",
    "SmtpConfig",
    "SourceConfig",
    "WebhookAction",
    "WebhookEndpoint",
    "load_config",
    "parse_config",
]
