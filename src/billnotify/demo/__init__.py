"""``billnotify demo``: the whole product on one machine with no outside services.

Needs the ``demo`` extra (``pip install 'billnotify[demo]'``: aiosmtpd, amqtt, rich);
without it :func:`run_demo` raises an error that says so.

- :mod:`billnotify.demo.runner` - starts the simulator, the sinks and the real service,
  and shows what happens (:func:`run_demo`);
- :mod:`billnotify.demo.configfile` - the config the demo's service runs with;
- :mod:`billnotify.demo.sinks` - the SMTP sink and the signature-checking webhook
  receiver (also runnable alone: ``python -m billnotify.demo.sinks``);
- :mod:`billnotify.demo.view` - the live view, the plain lines and the summary.
"""

from __future__ import annotations

from pathlib import Path

from billnotify.extras import demo_extra


async def run_demo(
    duration: float | None,
    port: int,
    mqtt_port: int,
    workdir: Path | None,
    live: bool,
) -> int:
    """Run the demo; return the exit status. See :func:`billnotify.demo.runner.run_demo`."""
    # Imported here so that ``python -m billnotify.demo.sinks`` does not load the
    # service (and runpy does not find the sinks module already imported), and so that
    # a production install without the demo extra can import this package.
    with demo_extra("billnotify demo"):
        from billnotify.demo.runner import run_demo as _run_demo

    return await _run_demo(duration, port, mqtt_port, workdir, live)


__all__ = ["run_demo"]
