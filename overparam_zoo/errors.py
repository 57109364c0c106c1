"""The errors ``overparam_zoo`` raises for bad input: one base, one subclass per kind of input.

Every message is one line that names what was wrong and what was expected, so the CLI prints
it as ``overparam-zoo <command>: error: <message>`` and exits 1 (see :mod:`overparam_zoo.cli`).
Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "first_line",
    "OverparamZooError",
    "UnknownModelError",
    "RecipeError",
    "CheckpointError",
    "ExportError",
    "ExportFolderError",
    "PublishError",
    "DataError",
    "AnalysisError",
    "OutputError",
    "CompareError",
    "QuantizeError",
    "MissingExtraError",
]


def first_line(err: BaseException) -> str:
    """``"<Type>: <first line of the message>"``: how a wrapped library error is quoted in ours."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


class OverparamZooError(Exception):
    """Base of every user-facing error of ``overparam_zoo``; the message is one line."""


class UnknownModelError(OverparamZooError, KeyError):
    """A name that is neither a registered op variant nor a timm or torchvision model.

    A ``KeyError`` too, as a registry lookup should be, but printed without ``KeyError``'s quotes.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class RecipeError(OverparamZooError, ValueError):
    """A recipe that cannot be used; the message names the file, the key and what was expected."""

    def __init__(self, path: Path | str, key: str, problem: str) -> None:
        super().__init__(f"{path}: {key}: {problem}")
        self.path, self.key = str(path), key


class CheckpointError(OverparamZooError):
    """A checkpoint that cannot be read, or whose weights do not fit the model it names."""


class ExportError(OverparamZooError):
    """An export that cannot be done (occupied folder, weights that do not fit the base)."""


class ExportFolderError(OverparamZooError):
    """An export folder that cannot be used: not a folder, a missing file, a ``config.json`` that
    is not the one ``overparam-zoo export`` writes, weights that do not load into the architecture
    it names, a model card without front matter. The same error, with the same message, whichever
    command (push, quantize, compare, verify, ...) meets the folder."""


class PublishError(OverparamZooError):
    """An export that cannot be published (no hub client, no token, diverged weights, a hub that
    refuses or cannot be reached)."""


class DataError(OverparamZooError):
    """A dataset that cannot be used (missing folder, missing optional dependency)."""


class AnalysisError(OverparamZooError):
    """A model that cannot be measured (no Linear/Conv layers, a layer with no spectrum)."""


class OutputError(OverparamZooError):
    """An output file that cannot be written (missing folder permissions, a full disk)."""


class CompareError(OverparamZooError):
    """A comparison that cannot run as asked (settings that differ from the runs already in its
    output folder, a missing optional dependency, a batch larger than the data)."""


class QuantizeError(OverparamZooError):
    """An INT8 quantization that cannot be done (no calibration images, images whose channels or
    classes do not fit the model, a model torch.export cannot capture)."""


class MissingExtraError(OverparamZooError, ImportError):
    """A feature whose optional dependency is not installed; the message names the extra that
    brings it (raised by :func:`overparam_zoo.extras.require`)."""
