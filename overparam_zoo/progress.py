"""Progress of a long command: a tqdm bar on a terminal, one plain line per event otherwise.

A bar redraws itself with carriage returns, which a log file keeps as noise on one line; when
the stream is not a terminal (a log, CI, a pipe) each event is written as its own line
instead, e.g. ``export: 2/5 collapsing``. ``OVERPARAM_ZOO_PROGRESS`` overrides the choice:
``bar``, ``lines`` or ``off``.
"""

from __future__ import annotations

import os
import sys
import time
from types import TracebackType
from typing import IO

__all__ = ["Progress", "PROGRESS_ENV"]

PROGRESS_ENV = "OVERPARAM_ZOO_PROGRESS"
_MODES = ("bar", "lines", "off")


def _mode(stream: IO[str]) -> str:
    chosen = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if chosen in _MODES:
        return chosen
    isatty = getattr(stream, "isatty", None)
    return "bar" if callable(isatty) and isatty() else "lines"


class Progress:
    """Counts ``total`` steps of ``desc``; use as a context manager.

    Args:
        desc: what is being done, the prefix of every line (``"export"``, ``"train resnet18"``).
        total: how many steps there are.
        unit: what a step is, for the bar (``"step"``, ``"run"``).
        initial: steps already done (a resumed job).
        min_interval: in line mode, the least number of seconds between two lines written by
            :meth:`update` without a note (training loops update every batch); notes and the
            last step are always written.
        stream: where to write; standard error by default.
    """

    def __init__(
        self,
        desc: str,
        total: int,
        *,
        unit: str = "step",
        initial: int = 0,
        min_interval: float = 0.0,
        stream: IO[str] | None = None,
    ) -> None:
        self.desc, self.total, self.n = desc, total, initial
        self.stream = sys.stderr if stream is None else stream
        self.mode = _mode(self.stream)
        self.min_interval = min_interval
        self._last_line = float("-inf")
        self._bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.stream, leave=False)

    def update(self, n: int = 1, note: str = "") -> None:
        """``n`` more steps done; ``note`` says what is happening now (shown beside the count)."""
        self.n += n
        if self._bar is not None:
            if note:
                self._bar.set_postfix_str(note, refresh=False)
            self._bar.update(n)
        elif self.mode == "lines":
            now = time.monotonic()
            if note or self.n >= self.total or now - self._last_line >= self.min_interval:
                self._write(note)
                self._last_line = now

    def note(self, text: str) -> None:
        """Say what is happening now without counting a step."""
        if self._bar is not None:
            self._bar.set_postfix_str(text)
        elif self.mode == "lines":
            self._write(text)

    def _write(self, note: str) -> None:
        self.stream.write(f"{self.desc}: {self.n}/{self.total}" + (f" {note}" if note else "") + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
