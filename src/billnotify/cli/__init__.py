"""The ``billnotify`` command line (SPEC §6).

- :mod:`~billnotify.cli.main`: argument parsing and dispatch (``billnotify`` / ``python -m billnotify``);
- :mod:`~billnotify.cli.checks`: ``billnotify check`` (config, templates, references, ``--connect``);
- :mod:`~billnotify.cli.commands`: what ``deliveries``, ``render``, ``replay`` and ``status`` do.
"""

from billnotify.cli.main import main

__all__ = ["main"]
