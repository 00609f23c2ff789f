"""Typed async clients for the two billing APIs, on one shared HTTP transport.

- :mod:`.http` — :class:`JsonTransport`: base URL, timeouts, retries, size cap, error mapping.
- :mod:`.billing_platform` — :class:`BillingPlatformClient` (seeds 000-002).
- :mod:`.property_billing` — :class:`PropertyBillingClient` (seed 003).
"""

from billnotify.clients.billing_models import (
    ActionResult,
    BillingRun,
    BillingTask,
    DownloadLink,
    Invoice,
    Record,
)
from billnotify.clients.billing_platform import BillingPlatformClient
from billnotify.clients.http import ConnectError, HttpResponse, JsonTransport
from billnotify.clients.property_billing import BillingHeader, PropertyBillingClient

__all__ = [
    "ActionResult",
    "BillingHeader",
    "BillingPlatformClient",
    "BillingRun",
    "BillingTask",
    "ConnectError",
    "DownloadLink",
    "HttpResponse",
    "Invoice",
    "JsonTransport",
    "PropertyBillingClient",
    "Record",
]
