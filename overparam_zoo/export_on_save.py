"""Write the collapsed export whenever a checkpoint is saved.

Custom loops call an :class:`ExportOnSave` after saving. For timm's ``train.py``, importing
this module (opt-in) makes every ``timm.utils.CheckpointSaver`` also export the model it saves
(the EMA model when there is one, as timm's loaders prefer) to ``<output>/collapsed-last``,
and to ``<output>/collapsed-best`` when the epoch is the best so far::

    python train.py --device-modules overparam_zoo.export_on_save --model resnet18_op_d2 ...

Both go through :func:`overparam_zoo.export_collapsed`, hence through the
``overparam_zoo_export`` hook, so plugins can add outputs.
"""

from overparam_zoo.sharing.save_hooks import ExportOnSave, install_checkpoint_saver_hook

__all__ = ["ExportOnSave", "install_checkpoint_saver_hook"]

install_checkpoint_saver_hook()
