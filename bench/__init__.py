"""Benchmarks: ``python -m bench`` runs every ``bench_*.py`` module here.

Each module exposes ``async def run() -> list[BenchResult]``. A result holds an absolute
figure and, where the module measured one in the same run, the figure of a raw baseline
(e.g. a bare aiohttp loop doing the same work) and the ratio between the two, so numbers
from different machines stay comparable.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import cast

PREFIX = "bench_"

Runner = Callable[[], Awaitable[list["BenchResult"]]]


@dataclass(frozen=True, slots=True)
class BenchResult:
    """One measured figure.

    Attributes:
        name: dotted name, ``<module>.<case>``.
        value: the measured figure.
        unit: its unit, e.g. ``records/s``.
        baseline_value: the same figure for the raw baseline, when measured.
        ratio: ``value / baseline_value`` (how the product compares with the baseline).
        notes: how it was measured.
    """

    name: str
    value: float
    unit: str
    baseline_value: float | None = None
    ratio: float | None = None
    notes: str = ""

    @classmethod
    def versus(
        cls, name: str, value: float, unit: str, baseline: float, notes: str = ""
    ) -> BenchResult:
        """A result compared with ``baseline`` (ratio computed)."""
        ratio = value / baseline if baseline else None
        return cls(name, value, unit, baseline, ratio, notes)


def available() -> list[str]:
    """Short names (without ``bench_``) of every benchmark module, sorted."""
    return sorted(
        info.name.removeprefix(PREFIX)
        for info in pkgutil.iter_modules(__path__)
        if info.name.startswith(PREFIX)
    )


def runner(name: str) -> Runner:
    """The ``run`` coroutine function of benchmark ``name``.

    Raises:
        KeyError: no such benchmark.
    """
    if name not in available():
        raise KeyError(name)
    module = importlib.import_module(f"{__name__}.{PREFIX}{name}")
    return cast(Runner, module.run)


def _figure(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def format_table(results: Iterable[BenchResult]) -> str:
    """Render results as a plain-text table."""
    header = ("benchmark", "value", "unit", "baseline", "ratio", "notes")
    rows = [
        (
            r.name,
            _figure(r.value),
            r.unit,
            _figure(r.baseline_value),
            "-" if r.ratio is None else f"{r.ratio:.2f}x",
            r.notes,
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)
