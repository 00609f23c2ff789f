"""``python -m bench [NAME...]``: run benchmarks and print a table (all when no name).

Each benchmark runs in a process of its own, so that what one leaves behind (a heap
grown by 100,000 tracked records, threads winding down) does not weigh on the next.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import subprocess
import sys

from bench import BenchResult, available, format_table, runner
from billnotify.collector import tuned_collector


async def _run_here(name: str) -> list[BenchResult]:
    # the collector as `billnotify run` sets it once started, for both sides of a ratio
    with tuned_collector():
        return await runner(name)()


def _run_apart(name: str) -> list[BenchResult]:
    """Run benchmark ``name`` in a fresh interpreter; its progress goes to stderr."""
    print(f"running {name} ...", file=sys.stderr, flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--json", name],
        stdout=subprocess.PIPE,
        check=True,
        text=True,
    )
    return [BenchResult(**fields) for fields in json.loads(done.stdout)]


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run: {', '.join(available())}")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument(
        "--json", action="store_true", help="run one benchmark here and print its results as JSON"
    )
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(available()))
        return 0
    unknown = sorted(set(args.names) - set(available()))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; have {', '.join(available())}")
    if args.json:
        if len(args.names) != 1:
            parser.error("--json runs exactly one benchmark")
        results = asyncio.run(_run_here(args.names[0]))
        print(json.dumps([dataclasses.asdict(result) for result in results]))
        return 0
    results = [result for name in args.names or available() for result in _run_apart(name)]
    print(format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
