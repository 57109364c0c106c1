"""``overparam-zoo run SCRIPT [ARGS...]``: run any script with the op variants registered."""

from __future__ import annotations

import argparse
import runpy
import sys

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run a Python script (e.g. timm's validate.py) with the op variants registered",
        description="Runs SCRIPT as __main__ with sys.argv = [SCRIPT, ARGS...] after `import overparam_zoo`; "
        "its exit code is passed through.",
    )
    parser.add_argument("script")
    parser.add_argument("script_args", nargs=argparse.REMAINDER)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import overparam_zoo  # noqa: F401 - registers the variants

    saved = sys.argv[:]
    sys.argv = [args.script, *args.script_args]
    try:
        runpy.run_path(args.script, run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)
        return 1
    finally:
        sys.argv = saved
    return 0
