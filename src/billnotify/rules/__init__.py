"""Rules: which actions an event calls for, recorded as deliveries (SPEC §4).

- :mod:`~billnotify.rules.matching`: which actions an event triggers (pure);
- :mod:`~billnotify.rules.engine`: :class:`~billnotify.rules.engine.RuleHandler` reads
  the event log and records the deliveries the rules call for.

Attempting them is the business of :mod:`billnotify.deliveries`. Nothing is imported
here, so that other stages can import :mod:`~billnotify.rules.matching` alone.
"""
