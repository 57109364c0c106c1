"""Library errors name Python parameters (``seeds=0: expected at least 1``); a command's user
typed flags. :func:`flag_errors` re-raises an error of the library naming the flags instead."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from overparam_zoo.errors import OverparamZooError

__all__ = ["flag_errors", "flag_message"]

_PARAMETER = re.compile(r"(?<![\w.\-])([a-z_]+(?:\.[a-z_]+)?)=(True\b)?")


def flag_message(message: str, flags: Mapping[str, str]) -> str:
    """``message`` with each ``parameter=`` in ``flags`` written as ``--flag `` (``seeds=0`` ->
    ``--seeds 0``; a switch, ``force=True``, as ``--force``)."""

    def flag(m: re.Match[str]) -> str:
        if m[1] not in flags:
            return m[0]
        return flags[m[1]] if m[2] else f"{flags[m[1]]} "

    return _PARAMETER.sub(flag, message)


@contextmanager
def flag_errors(flags: Mapping[str, str]) -> Iterator[None]:
    """Re-raise an :class:`~overparam_zoo.errors.OverparamZooError` raised inside, its message
    naming ``flags`` (``{"seeds": "--seeds", "settings.batch_size": "--batch-size"}``) for the
    Python parameters they set."""
    try:
        yield
    except OverparamZooError as err:
        message = flag_message(str(err), flags)
        if message == str(err):
            raise
        translated = type(err).__new__(type(err))  # the same kind of error, whatever its constructor takes
        translated.__dict__.update(err.__dict__)
        translated.args = (message,)
        raise translated from err
