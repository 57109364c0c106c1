"""The ``overparam-zoo`` command line: one subcommand per module of this package.

Each command module defines ``register(subparsers)``, which adds its parser and sets
``func=run`` where ``run(args) -> int`` returns the exit code. Commands raise
:class:`~overparam_zoo.errors.OverparamZooError` for bad input; it is printed here, once, as
``overparam-zoo <command>: error: <message>`` on stderr with exit status 1 (argparse's usage
errors keep status 2). Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["main", "COMMANDS"]

COMMANDS: tuple[str, ...] = (
    "demo",
    "compare",
    "list",
    "show",
    "run",
    "export",
    "quantize",
    "push",
    "verify",
    "spectrum",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="overparam-zoo",
        description="Over-parameterized timm/torchvision models: list, inspect, compare, export, push, verify, train.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"overparam_zoo.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    from overparam_zoo.errors import OverparamZooError

    try:
        return int(args.func(args) or 0)
    except OverparamZooError as err:
        print(f"{parser.prog} {args.command}: error: {err}", file=sys.stderr)
        return 1
