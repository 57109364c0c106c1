"""Atomic file output: a result appears whole or not at all."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from overparam_zoo.errors import OutputError, OverparamZooError, first_line

__all__ = ["atomic_write", "usual_permissions"]


def usual_permissions(path: Path) -> None:
    """``mkstemp``/``mkdtemp`` make private (0600/0700) entries; outputs are meant to be shared."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def atomic_write(target: str | Path, write: Callable[[str], object]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``target``, then rename it into place.

    Raises:
        OutputError: when the folder or the file cannot be written; nothing is left behind.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", suffix=target.suffix, dir=target.parent)
    except OSError as err:
        raise OutputError(f"cannot write {target}: {err.strerror or err}") from None
    os.close(fd)
    try:
        usual_permissions(Path(tmp))
        write(tmp)
        os.replace(tmp, target)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, (OverparamZooError, KeyboardInterrupt)) or not isinstance(err, Exception):
            raise
        raise OutputError(f"cannot write {target}: {first_line(err)}") from None
