"""Exporting the collapsed model whenever a checkpoint is saved.

:class:`ExportOnSave` is a callback for custom loops; :func:`install_checkpoint_saver_hook`
makes timm's ``CheckpointSaver`` call it. The hook never ends a training run: an export that
fails (a diverged epoch's NaN weights, a collapse that is not exact, ...) is skipped with a
warning naming why; the saved checkpoint can be exported later (``overparam-zoo export``, with
``--allow-collapse-error`` for a converter that knowingly approximates). Importing :mod:`overparam_zoo.export_on_save`
installs the hook (the opt-in for timm's ``train.py --device-modules``).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from overparam_zoo.errors import OverparamZooError
from overparam_zoo.sharing.export import ExportResult, export_collapsed
from overparam_zoo.sharing.metadata import ExportMetadata

if TYPE_CHECKING:
    from timm.utils import CheckpointSaver

__all__ = ["ExportOnSave", "install_checkpoint_saver_hook"]

logger = logging.getLogger("overparam_zoo")


class ExportOnSave:
    """Callback: ``ExportOnSave(out_dir)(model, tag="last")`` writes ``out_dir/collapsed-<tag>``.

    Args:
        out_dir: the folder that receives one export folder per tag.
        variant, model_args: for models not built by ``overparam_zoo`` (see ``export_collapsed``).
        allow_collapse_error: accept an inexact collapse up to this error (see ``export_collapsed``).
    """

    def __init__(
        self,
        out_dir: str | Path,
        *,
        variant: str | None = None,
        model_args: dict[str, Any] | None = None,
        allow_collapse_error: float | None = None,
    ):
        self.out_dir = Path(out_dir)
        self.variant = variant
        self.model_args = model_args
        self.allow_collapse_error = allow_collapse_error

    def __call__(self, model: nn.Module, tag: str = "last", metadata: ExportMetadata | None = None) -> ExportResult:
        """Export ``model``; ``metadata`` describes the training run (see ``export_collapsed``)."""
        target = self.out_dir / f"collapsed-{tag}"
        result = export_collapsed(
            model,
            target,
            variant=self.variant,
            model_args=self.model_args,
            force=True,
            metadata=metadata,
            allow_collapse_error=self.allow_collapse_error,
        )
        logger.info("overparam_zoo: exported collapsed %s to %s", result.config["architecture"], target)
        return result


def _export_saved(saver: CheckpointSaver, model: nn.Module, epoch: int) -> None:
    """Export the model a ``CheckpointSaver`` just saved; an export that fails (a diverged run's
    NaN weights, ...) is skipped with a warning, never ends the training run."""
    export = ExportOnSave(saver.checkpoint_dir)
    # train.py's args give the export its preprocessing; its summary.csv (written before the save) the results
    run = None
    if saver.args is not None:
        run = ExportMetadata.from_run(saver.args, output_dir=saver.checkpoint_dir, epoch=epoch)
    tags = ["last", "best"] if saver.best_epoch == epoch else ["last"]
    try:
        for tag in tags:
            export(model, tag, run)
    except OverparamZooError as err:
        kept = [f"collapsed-{t}" for t in tags if (export.out_dir / f"collapsed-{t}").is_dir()]
        logger.warning(
            "overparam_zoo: skipped the export of epoch %s (%s): %s%s; training goes on, and the checkpoint "
            "itself was saved",
            epoch,
            ", ".join(f"collapsed-{t}" for t in tags),
            err,
            f"; earlier exports stay in {', '.join(kept)}" if kept else "",
        )


def install_checkpoint_saver_hook() -> None:
    """Make ``timm.utils.CheckpointSaver.save_checkpoint`` also export (idempotent)."""
    from timm.utils import CheckpointSaver

    original = CheckpointSaver.save_checkpoint
    if getattr(original, "_overparam_zoo_export", False):
        return

    @functools.wraps(original)
    def save_checkpoint(self: CheckpointSaver, epoch: int, metric: float | None = None) -> Any:
        result = original(self, epoch, metric)
        model = self.unwrap_fn(self.model_ema if self.model_ema is not None else self.model)
        if getattr(model, "overparam_zoo", None) is not None:
            _export_saved(self, model, epoch)
        return result

    save_checkpoint._overparam_zoo_export = True  # type: ignore[attr-defined]
    CheckpointSaver.save_checkpoint = save_checkpoint  # type: ignore[method-assign]  # the hook: timm's method, wrapped
