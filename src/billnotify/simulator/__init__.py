"""The built-in simulator of the billing platform and property billing APIs.

``billnotify simulate`` serves both APIs on loopback from one aiohttp app, with fault
injection, a ``/_sim/`` control API and a scenario that moves objects through their
lifecycles.
"""

from billnotify.simulator.clock import ManualClock, SimClock
from billnotify.simulator.faults import Faults
from billnotify.simulator.pdf import make_pdf
from billnotify.simulator.scenario import Scenario
from billnotify.simulator.server import Simulator, run_simulate
from billnotify.simulator.state import SimState

__all__ = [
    "Faults",
    "ManualClock",
    "Scenario",
    "SimClock",
    "SimState",
    "Simulator",
    "make_pdf",
    "run_simulate",
]
