"""What a burst of events cost, per function, from two py-spy recordings (``--format raw``).

py-spy samples only busy threads and cannot be pointed at a window of a run, so the
benchmark records two runs that differ only by the burst (start, first poll, a warm-up
change, then the burst or an equally long wait, then stop) and :func:`burst_profile`
subtracts the second from the first, function by function. At ``RATE`` samples per
second each sample stands for ``1e6 / RATE`` µs of CPU, so the difference divided by the
burst's events is CPU µs per event: *self* (the innermost frame) and *inclusive* (any
frame of the stack, the product's and its libraries' only), per process (the service,
the store's child) and per function. Samples inside imports are left out of both runs.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

RATE = 250
"""Samples per second asked of py-spy."""
_LINE = re.compile(r":\d+\)$")


def _frame(raw: str) -> str:
    name = _LINE.sub(")", raw)  # one entry per function, not per line
    for marker in ("site-packages/", "/src/", "/lib/python3."):
        if marker in name:
            head, _, tail = name.partition("(")
            name = f"{head}({tail.split(marker, 1)[1]}"
            break
    return name


_LIBRARIES = ("billnotify/", "aiomqtt/", "paho/", "aiohttp/", "pydantic")
_ENTRY = ("<module> (", "main (", "_run (")


def _process(frames: list[str]) -> str:
    command = [f for f in frames if f.startswith("process ")][-1]
    return "store child" if "store.child" in command else "service"


def _reported(name: str) -> bool:
    """Whether ``name`` is shown as inclusive: the product's and its libraries' functions."""
    return any(lib in name for lib in _LIBRARIES) and not name.startswith(_ENTRY)


def _count(trace: Path) -> tuple[Counter[str], Counter[str], Counter[str]]:
    """Samples per process, per innermost function, per function anywhere in the stack."""
    processes: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for line in trace.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if any(f.startswith("_find_and_load ") for f in frames):
            continue  # imports: start-up, which both runs share but not always in step
        samples = int(count)
        processes[_process(frames)] += samples
        named = [_frame(f) for f in frames if "(" in f and not f.startswith("process ")]
        if named:
            own[named[-1]] += samples
        for name in set(filter(_reported, named)):
            inclusive[name] += samples
    return processes, own, inclusive


def burst_profile(burst: Path, control: Path, events: int, top: int = 25) -> str:
    """CPU µs per event of the ``events`` of ``burst``, net of ``control``, as text."""
    per_event = 1e6 / RATE / events

    def rows(title: str, with_burst: Counter[str], without: Counter[str]) -> list[str]:
        net = with_burst.copy()
        net.subtract(without)
        ranked = [(name, n) for name, n in net.most_common(top) if n > 0]
        return [f"-- {title}", *(f"{n * per_event:8.1f}  {name}" for name, n in ranked)]

    measured, control_counts = _count(burst), _count(control)
    lines = [f"CPU µs per event, {events:,} events, net of a run without the burst"]
    for index, title in enumerate(("per process", "self", "inclusive")):
        lines += rows(title, measured[index], control_counts[index])
    return "\n".join(lines)
