"""Every option of every command says what it does in ``--help``."""

from __future__ import annotations

import argparse

from billnotify.cli.main import _parser


def commands(
    parser: argparse.ArgumentParser, path: str = "billnotify"
) -> dict[str, argparse.ArgumentParser]:
    found = {path: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found |= commands(sub, f"{path} {name}")
    return found


def test_every_option_has_help_text() -> None:
    silent = [
        f"{path} {action.option_strings[-1]}"
        for path, parser in commands(_parser()).items()
        for action in parser._actions
        if action.option_strings and not action.help and action.dest not in {"help", "config"}
    ]
    assert silent == []
