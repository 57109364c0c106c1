"""Command line entry point ``overparam-zoo``."""


def main(argv: list[str] | None = None) -> int:
    raise SystemExit("overparam-zoo: no commands yet")
