"""Where a process spent a time window, from a py-spy chrome trace (``--format chrometrace``).

py-spy writes each thread's stacks as begin/end spans, ``ts`` in microseconds from the
start of the recording. :func:`summary` replays them, keeps the part of each span inside
the window and adds it up per function: *self* (the innermost frame) and *inclusive* (any
frame of the stack), both as a share of all sampled time in the window.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

IDLE = ("select", "poll", "epoll", "wait", "_worker", "recv", "acquire", "sleep")


def _frame(event: dict[str, object]) -> str:
    args = event.get("args") or {}
    assert isinstance(args, dict)
    filename = str(args.get("filename", "?"))
    for marker in ("site-packages/", "src/", "lib/python3"):
        if marker in filename:
            filename = filename.split(marker, 1)[1]
            break
    return f"{event['name']} ({filename})"


def summary(trace: Path, start_us: float, end_us: float, top: int = 25) -> str:
    """Self and inclusive time per function within ``[start_us, end_us]`` of ``trace``."""
    events = sorted(json.loads(trace.read_text()), key=lambda e: (e["ts"], e["ph"] == "B"))
    stacks: dict[tuple[int, int], list[str]] = {}
    since: dict[tuple[int, int], float] = {}
    own: defaultdict[str, float] = defaultdict(float)
    inclusive: defaultdict[str, float] = defaultdict(float)
    total = 0.0
    for event in events:
        thread = (int(event["pid"]), int(event["tid"]))
        stack = stacks.setdefault(thread, [])
        ts = float(event["ts"])
        if stack:
            span = min(ts, end_us) - max(since.get(thread, ts), start_us)
            if span > 0:
                total += span
                own[stack[-1]] += span
                for name in set(stack):
                    inclusive[name] += span
        since[thread] = ts
        if event["ph"] == "B":
            stack.append(_frame(event))
        elif stack:
            stack.pop()
    if not total:
        return "no samples in the window"
    busy = total - sum(span for name, span in own.items() if name.split(" ")[0] in IDLE)
    lines = [f"sampled {total / 1e6:.2f} thread-s, of which not waiting {busy / 1e6:.2f} s"]
    for title, counts in (("self", own), ("inclusive", inclusive)):
        lines.append(f"-- {title} (share of sampled time)")
        ranked = sorted(counts.items(), key=lambda item: -item[1])[:top]
        lines += [f"{span / total:6.1%}  {name}" for name, span in ranked]
    return "\n".join(lines)
