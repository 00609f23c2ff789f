"""Rules and the delivery ledger: event log -> deliveries -> attempts (SPEC §4, §4.1).

- :mod:`~billnotify.rules.matching`: which actions an event triggers (pure);
- :mod:`~billnotify.rules.engine`: :class:`RuleHandler` records deliveries from the log;
- :mod:`~billnotify.rules.policy`: attempt result -> next status (pure);
- :mod:`~billnotify.rules.worker`: :class:`DeliveryWorker` attempts due deliveries;
- :mod:`~billnotify.rules.reconcile`: settles uncertain invoice emails from the platform;
- :mod:`~billnotify.rules.commands`: what the ``deliveries``/``render``/``replay`` commands do.
"""

from billnotify.rules.engine import RuleHandler
from billnotify.rules.matching import Match, match_event
from billnotify.rules.policy import DEFAULT_SCHEDULE, Decision, decide
from billnotify.rules.worker import DeliveryWorker

__all__ = [
    "DEFAULT_SCHEDULE",
    "Decision",
    "DeliveryWorker",
    "Match",
    "RuleHandler",
    "decide",
    "match_event",
]
