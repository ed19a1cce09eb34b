"""`bilayer` entry point: dispatches to the subcommand modules listed in COMMANDS.

Each subcommand module defines `register(subparsers)`, which adds its parser and sets
`func=run` (a callable taking the parsed namespace and returning an exit code). Heavy imports
live inside `run`, so `bilayer --help` stays instant.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from bilayer.errors import InputError

#: Subcommand modules under bilayer.cli, in the order shown by --help.
COMMANDS = ["demo", "bench", "preprocess", "train", "evaluate", "animate", "track", "export", "convert", "serve"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bilayer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"bilayer.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as e:
        print(f"bilayer {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
