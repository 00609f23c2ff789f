"""``python -m bench [NAME...]``: run benchmarks and print a table (all when no name)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from bench import BenchResult, available, format_table, runner
from billnotify.collector import tuned_collector


async def _run(names: list[str]) -> list[BenchResult]:
    results: list[BenchResult] = []
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        # the collector as `billnotify run` sets it once started, for both sides of a ratio
        with tuned_collector():
            results.extend(await runner(name)())
    return results


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run: {', '.join(available())}")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(available()))
        return 0
    unknown = sorted(set(args.names) - set(available()))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; have {', '.join(available())}")
    print(format_table(asyncio.run(_run(args.names or available()))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
