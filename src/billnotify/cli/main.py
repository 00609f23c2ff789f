"""The ``billnotify`` command line (SPEC §6)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from billnotify import __version__
from billnotify.config import Config, load_config
from billnotify.config.loader import with_state_password
from billnotify.durations import parse_duration
from billnotify.errors import BillnotifyError, ConfigError

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def parse_since(text: str) -> datetime:
    """``--since``: a duration ago (``"2h"``) or an ISO date/time (UTC when no zone)."""
    try:
        return datetime.now(UTC) - parse_duration(text)
    except ValueError:
        pass
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a duration or ISO time: {text!r} (e.g. '2h' or '2026-11-21T10:00:00Z')"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="billnotify",
        description="Watch billing platforms; publish every change to MQTT; run rules.",
    )
    parser.add_argument("--version", action="version", version=f"billnotify {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c", "--config", help="config file (default: $BILLNOTIFY_CONFIG or ./config.toml)"
    )
    # an ACTION's own -c: one given before the action (`deliveries -c F retry ID`) stays
    nested = argparse.ArgumentParser(add_help=False)
    nested.add_argument(
        "-c",
        "--config",
        default=argparse.SUPPRESS,
        help="config file (default: $BILLNOTIFY_CONFIG or ./config.toml)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", parents=[common], help="run the service")
    run.add_argument("--instance", help="this process's name among several ([service] instance)")
    run.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="listen address of /readyz and /metrics ([service] http)",
    )
    check = sub.add_parser("check", parents=[common], help="validate config and templates")
    check.add_argument("--connect", action="store_true", help="also try sources, broker, SMTP")

    render = sub.add_parser(
        "render",
        parents=[common],
        help="show what a rule would send",
        description="Print what each action of RULE would send for the event. Exit status: "
        "0 the rule fires and every action renders; 1 a template fails; 3 everything "
        "renders but the rule would not fire for this event (type or 'when'). A grouped "
        "rule renders a digest: of its newest N matching events in the log (--sample N), "
        "or of the --event FILE (N copies with --sample N).",
    )
    render.add_argument("rule")
    render.add_argument("--event", type=Path, help="a CloudEvent JSON file")
    render.add_argument(
        "--sample",
        type=int,
        metavar="N",
        help="grouped rules: a digest of N events (the newest matching ones of the log)",
    )

    events = sub.add_parser("events", parents=[common], help="list the event log")
    events.add_argument(
        "--since",
        type=parse_since,
        help="only events after this: a duration ago ('2h') or an ISO time",
    )
    events.add_argument("--type", dest="type_glob", help="type glob, e.g. 'invoice.*'")
    events.add_argument(
        "--limit",
        type=int,
        default=1000,
        help="at most this many, newest last (default 1000; 0: all)",
    )
    events.add_argument("--json", action="store_true", help="one CloudEvent JSON per line")

    replay = sub.add_parser(
        "replay",
        parents=[common],
        help="re-publish or re-run events",
        usage="%(prog)s (ID... | --since T) [--to mqtt|rules] [--force] [-c CONFIG]",
    )
    replay.add_argument("ids", nargs="*", metavar="ID")
    replay.set_defaults(usage_error=replay.error)
    replay.add_argument(
        "--since",
        type=parse_since,
        help="every event after this: a duration ago ('2h') or an ISO time",
    )
    replay.add_argument(
        "--to",
        choices=["mqtt", "rules"],
        default="mqtt",
        help="mqtt: publish again (default); rules: run the rules on them again",
    )
    replay.add_argument(
        "--force",
        action="store_true",
        help="with --to rules: also send again deliveries that already succeeded",
    )
    replay.add_argument("--reason", default="", help="why, kept on record with the replay")

    sub.add_parser(
        "status", parents=[common], help="the event log's backlog, the ledger, live instances"
    )
    state = sub.add_parser("state", help="the state store itself")
    ssub = state.add_subparsers(dest="state_command", required=True, metavar="ACTION")
    copy = ssub.add_parser(
        "copy",
        parents=[common],
        help="copy a SQLite state into PostgreSQL",
        description="Copy the SQLite state (events, snapshots, cursors, positions, "
        "deliveries and attempts, disabled endpoints) into a PostgreSQL database, so "
        "that the service started on it takes no new baseline and sends nothing again. "
        "Stop the service first.",
    )
    copy.add_argument("--to", required=True, metavar="URL", help="postgresql://USER@HOST:PORT/DB")
    source = copy.add_mutually_exclusive_group()
    source.add_argument(
        "--from-config",
        action="store_true",
        help="copy the config's [service] state (the default)",
    )
    source.add_argument("--from", dest="source", metavar="FILE", help="another SQLite state file")
    copy.add_argument("--force", action="store_true", help="replace what the target holds")
    deliveries = sub.add_parser("deliveries", parents=[common], help="the delivery ledger")
    deliveries.add_argument(
        "--status",
        type=_status_arg,
        help="failed | dead | uncertain | pending | succeeded | retry_scheduled | dry_run "
        "| waiting | skipped | muted",
    )
    deliveries.add_argument(
        "--limit", type=int, default=100, help="at most this many, newest first (default 100)"
    )
    deliveries.add_argument("--json", action="store_true", help="one delivery JSON per line")
    dsub = deliveries.add_subparsers(dest="deliveries_command", metavar="ACTION")
    retry = dsub.add_parser("retry", parents=[nested], help="send deliveries again")
    retry.add_argument("ids", nargs="+", metavar="ID")
    retry.add_argument("--reason", default="", help="why, kept on record with the retry")
    resolve = dsub.add_parser("resolve", parents=[nested], help="settle an uncertain delivery")
    resolve.add_argument("id", metavar="ID")
    how = resolve.add_mutually_exclusive_group(required=True)
    how.add_argument("--sent", action="store_true", help="it did reach the customer")
    how.add_argument("--not-sent", action="store_true", help="it did not: send it now")
    resolve.add_argument("--reason", default="", help="why, kept on record with the resolution")
    show = dsub.add_parser("show", parents=[nested], help="one delivery with its attempts")
    show.add_argument("id", metavar="ID")
    endpoints = sub.add_parser(
        "endpoints", parents=[common], help="webhook endpoints, enabled or disabled by a 410"
    )
    endpoints.add_argument("--json", action="store_true", help="one endpoint JSON per line")
    esub = endpoints.add_subparsers(dest="endpoints_command", metavar="ACTION")
    enable = esub.add_parser(
        "enable", parents=[nested], help="re-enable an endpoint that a 410 Gone disabled"
    )
    enable.add_argument("name", metavar="NAME", help="the endpoint's name")
    enable.add_argument(
        "--reason", required=True, help="why, kept on record with who re-enabled it and when"
    )

    simulate = sub.add_parser("simulate", help="run the billing platform simulator")
    simulate.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    simulate.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    simulate.add_argument("--tick", type=float, default=2.0, help="seconds per scenario step")
    simulate.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed of the scenario: the same seed, the same story",
    )
    simulate.add_argument(
        "--api-key", default="sim-key", help="the API key the simulator accepts (default sim-key)"
    )

    demo = sub.add_parser("demo", help="the whole product on this machine, nothing outside")
    demo.add_argument("--duration", type=parse_duration_arg, help="stop after e.g. '60s'")
    demo.add_argument("--port", type=int, default=0, help="simulator port (default: free)")
    demo.add_argument("--mqtt-port", type=int, default=1883, help="embedded broker port")
    demo.add_argument("--dir", type=Path, help="working folder (default: a temp folder)")
    demo.add_argument("--no-live", action="store_true", help="plain log lines, no live view")
    return parser


def _status_arg(text: str) -> str:
    from billnotify.cli.commands import statuses_for

    try:
        statuses_for(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def parse_duration_arg(text: str) -> float:
    """A duration argument in seconds (``20`` means 20 seconds)."""
    try:
        return parse_duration(
            float(text) if text.replace(".", "", 1).isdigit() else text
        ).total_seconds()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``billnotify`` script; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "replay" and bool(args.ids) == (args.since is not None):
        # a usage error (exit 2, with the usage line) before any config is read
        args.usage_error(
            "takes event ids or --since, not both"
            if args.ids
            else "needs event ids or --since T (e.g. 'replay --since 2h --to rules')"
        )
    try:
        return asyncio.run(_dispatch(args)) if args.command != "run" else _run(args)
    except ConfigError as exc:
        print(f"billnotify: invalid configuration\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    except BillnotifyError as exc:
        print(f"billnotify: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK


READ_ONLY = frozenset({"events", "deliveries", "endpoints", "status", "state"})
"""Commands that read (or settle) the ledger only: their config's secrets stay unread
(but for the state's own password)."""


def _load(args: argparse.Namespace) -> Config:
    if args.command in READ_ONLY:
        return with_state_password(load_config(args.config, resolve_secrets=False))
    warnings: list[str] = []
    config = load_config(args.config, warnings=warnings)
    for warning in warnings:
        print(f"billnotify: warning: {warning}", file=sys.stderr)
    return config


def _setup_logging(config: Config) -> None:
    from billnotify.components import secret_values
    from billnotify.logs import setup_logging

    setup_logging(config.service.log_level, config.service.log_format, secret_values(config))


def _run(args: argparse.Namespace) -> int:
    # Until the event loop installs its handlers, SIGTERM stops start-up cleanly (as
    # KeyboardInterrupt, exit 0) instead of killing the process with status -15.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    config = _load(args)
    if args.instance is not None or args.http is not None:
        service = config.service.overridden(instance=args.instance, http=args.http)
        config = config.model_copy(update={"service": service})
    _setup_logging(config)
    return asyncio.run(run_service(config))


async def run_service(config: Config) -> int:
    """Run until SIGTERM/SIGINT; exit 0 after a graceful stop."""
    from billnotify.app import Service

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await Service(config).run(stop)
    return EXIT_OK


async def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "simulate":
        from billnotify.simulator import run_simulate

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        await run_simulate(args.host, args.port, args.tick, args.seed, args.api_key)
        return EXIT_OK
    if args.command == "demo":
        from billnotify.demo import run_demo

        return await run_demo(
            duration=args.duration,
            port=args.port,
            mqtt_port=args.mqtt_port,
            workdir=args.dir,
            live=not args.no_live,
        )
    if args.command == "check":
        from billnotify.cli.checks import run_check_file

        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        return await run_check_file(args.config, connect=args.connect)
    config = _load(args)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "render":
        return await _render(config, args.rule, args.event, args.sample)
    if args.command == "state":
        from billnotify.cli.state import copy_command

        return await copy_command(config, args.to, source=args.source, force=args.force)
    from billnotify.components import build_store

    store = build_store(config)
    await store.open()
    try:
        if args.command == "events":
            return await _events(store, args)
        if args.command == "replay":
            return await _replay(config, store, args)
        if args.command == "deliveries":
            return await _deliveries(store, args, config)
        if args.command == "endpoints":
            return await _endpoints(store, args, config)
        if args.command == "status":
            from billnotify.cli.state import status_report

            print("\n".join(await status_report(config, store)))
            return EXIT_OK
    finally:
        await store.close()
    raise AssertionError(args.command)


async def _render(
    config: Config, rule_name: str, event_file: Path | None, sample: int | None = None
) -> int:
    from billnotify.cli.commands import render_report
    from billnotify.components import build_actions
    from billnotify.events import CloudEvent

    grouped = next((r for r in config.rules if r.name == rule_name and r.grouped), None)
    if grouped is not None:  # a digest of sample events
        from billnotify.cli.digest_preview import render_digest

        return await render_digest(config, grouped, event_file, sample)
    if event_file is None:
        print(
            "billnotify: render needs --event FILE (--sample is for grouped rules)", file=sys.stderr
        )
        return EXIT_FAILURE

    try:
        event = CloudEvent.from_json(event_file.read_bytes())
    except (OSError, ValueError) as exc:
        print(f"billnotify: cannot read event {event_file}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if rule_name not in {r.name for r in config.rules}:
        known = ", ".join(r.name for r in config.rules) or "none"
        print(f"billnotify: unknown rule {rule_name!r} (rules: {known})", file=sys.stderr)
        return EXIT_FAILURE
    actions = build_actions(config)
    try:
        report = await render_report(config, actions.renderer, actions.executors, rule_name, event)
    finally:
        await actions.close()
    print(json.dumps([_jsonable(r) for r in report.rendered], indent=2, default=str))
    for error in report.errors:
        print(f"billnotify: template error: {error}", file=sys.stderr)
    if report.not_firing:
        print(
            f"billnotify: rule {rule_name!r} would not fire for this event: {report.not_firing}",
            file=sys.stderr,
        )
    return report.exit_code


def _jsonable(value: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


async def _events(store: Any, args: argparse.Namespace) -> int:
    events = await store.list_events(since=args.since, type_glob=args.type_glob, limit=args.limit)
    for stored in events:
        e = stored.event
        if args.json:
            print(e.to_json())
        else:
            print(f"{stored.seq:>8}  {e.time}  {e.type:<28} {e.source_name}/{e.subject}  {e.id}")
    return EXIT_OK


async def _replay(config: Config, store: Any, args: argparse.Namespace) -> int:
    events = (
        await store.get_events(args.ids)
        if args.ids
        else await store.list_events(since=args.since, limit=0)
    )
    missing = set(args.ids) - {s.event.id for s in events}
    if missing:
        print(f"billnotify: unknown event id(s): {', '.join(sorted(missing))}", file=sys.stderr)
        return EXIT_FAILURE
    if args.to == "mqtt":
        from billnotify.cli.commands import record_replay
        from billnotify.publish.mqtt import MqttPublisher

        count = await MqttPublisher(config.mqtt, store).republish(events)
        done = f"to MQTT: {count} re-published"
        await record_replay(store, events, done, datetime.now(UTC), reason=args.reason)
        print(f"re-published {count} event(s) to MQTT")
    else:
        from billnotify.cli.commands import record_replay, replay_to_rules
        from billnotify.components import build_actions, build_rule_handler

        actions = build_actions(config)
        try:
            handler = build_rule_handler(config, store, actions)
            result = await replay_to_rules(handler, events, force=args.force)
        finally:
            await actions.close()
        await record_replay(store, events, str(result), datetime.now(UTC), reason=args.reason)
        print(
            f"{len(events)} event(s): {result.created} new delivery(ies), "
            f"{result.reset} reset, {result.unchanged} already recorded"
        )
    return EXIT_OK


async def _deliveries(store: Any, args: argparse.Namespace, config: Config) -> int:
    from billnotify.cli import commands
    from billnotify.deliveries.chain import ChainFollower, Settled

    now = datetime.now(UTC)
    action = args.deliveries_command
    if action in ("retry", "resolve"):
        if action == "retry":
            results = await commands.retry_deliveries(store, args.ids, now, reason=args.reason)
        else:
            sent = bool(args.sent)
            results = [
                await commands.resolve_delivery(store, args.id, sent, now, reason=args.reason)
            ]
        for result in results:
            print(f"{result.id}: {result.message}", file=sys.stdout if result.ok else sys.stderr)
        chains = ChainFollower(config.rules, store, lambda: datetime.now(UTC))
        if chains:  # a chained action waiting on what was resolved or retried moves on
            changed = await store.get_deliveries([r.id for r in results if r.ok])
            settled = [Settled(d.rule, d.action_index, d.event_id, d.status) for d in changed]
            for moved in await chains.follow(settled):
                print(f"{moved.id}: {moved.note} -> {moved.status.value}")
        return EXIT_OK if all(r.ok for r in results) else EXIT_FAILURE
    if action == "show":
        delivery = await store.get_delivery(args.id)
        if delivery is None:
            print(f"billnotify: unknown delivery {args.id}", file=sys.stderr)
            return EXIT_FAILURE
        shown = _jsonable(delivery)
        # the answer kept for it (invoice actions, actions with an id; SPEC §7.5)
        kept = (await store.get_results([delivery.id])).get(delivery.id)
        shown["result"] = json.loads(kept) if kept is not None else None
        # a grouped rule's delivery: the digest it carries (its event is not in the log)
        digest = await commands.digest_shown(store, delivery)
        if digest is not None:
            shown["digest"] = digest
        # what operators did to it (SPEC §7.4), newest first, as the console shows it
        shown["operator_actions"] = [
            _jsonable(a) for a in await store.operator_actions(delivery.id)
        ]
        print(json.dumps(shown, indent=2, default=str))
        return EXIT_OK
    rows = await commands.list_deliveries(store, args.status, limit=args.limit)
    if args.json:
        kept = await store.get_results([row.id for row in rows])  # answers (SPEC §7.5)
        for row in rows:
            shown = _jsonable(row)
            shown["result"] = json.loads(kept[row.id]) if row.id in kept else None
            print(json.dumps(shown, default=str))
    else:
        print(commands.format_deliveries(rows))
    return EXIT_OK


async def _endpoints(store: Any, args: argparse.Namespace, config: Config) -> int:
    from billnotify.cli import commands
    from billnotify.cli.endpoints import endpoint_rows, format_endpoints

    if args.endpoints_command == "enable":
        result = await commands.enable_endpoint(
            store, args.name, datetime.now(UTC), reason=args.reason
        )
        print(f"{result.id}: {result.message}", file=sys.stdout if result.ok else sys.stderr)
        return EXIT_OK if result.ok else EXIT_FAILURE
    rows = await endpoint_rows(config, store)
    if args.json:
        for row in rows:
            print(json.dumps(row.to_json()))
    else:
        print(format_endpoints(rows))
    return EXIT_OK
