"""What the delivery stage reads of the configuration, as one small value.

The composition root (:mod:`billnotify.components`) builds it from the config; the
worker, the due queue, the retry policy and the reconciler read only this.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from billnotify.config.models import MuteWindow, Rule
from billnotify.config.rates import Rate

DEFAULT_SETTLE_AFTER = timedelta(seconds=35)
"""A billing platform's default request timeout (30 s) plus a margin."""


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    """The delivery stage's settings.

    Attributes:
        rules: the configured rules by name, in config order.
        dry_run: the global ``[service] dry_run`` switch.
        concurrency: attempts at once (``[service] delivery_concurrency``).
        webhook_schedules: webhook endpoint name -> its retry schedule.
        email_schedule: ``[smtp] retry_schedule`` (None without ``[smtp]``).
        settle_after: how old an interrupted invoice email must be before the
            platform's view of it is trusted (longer than any request can take).
        mute_windows: ``[[mute_windows]]`` by name.
        webhook_rates: webhook endpoint name -> its ``rate_limit``.
        email_rate: ``[smtp] rate_limit``.
    """

    rules: Mapping[str, Rule] = field(default_factory=dict)
    dry_run: bool = False
    concurrency: int = 16
    webhook_schedules: Mapping[str, Sequence[timedelta]] = field(default_factory=dict)
    email_schedule: Sequence[timedelta] | None = None
    settle_after: timedelta = DEFAULT_SETTLE_AFTER
    mute_windows: Mapping[str, MuteWindow] = field(default_factory=dict)
    webhook_rates: Mapping[str, Rate] = field(default_factory=dict)
    email_rate: Rate | None = None
