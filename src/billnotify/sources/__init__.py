"""Sources: pollers that turn what the billing APIs return into committed events."""

from billnotify.sources.base import Poller, PollStats, ResourceSync
from billnotify.sources.billing_platform import BillingPlatformSync, build_billing_syncs
from billnotify.sources.property_billing import PropertyBillingSync

__all__ = [
    "BillingPlatformSync",
    "PollStats",
    "Poller",
    "PropertyBillingSync",
    "ResourceSync",
    "build_billing_syncs",
]
