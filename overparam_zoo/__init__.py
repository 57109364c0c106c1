"""overparam_zoo: over-parameterized timm/torchvision models from YAML recipes.

``import overparam_zoo`` registers every variant (``resnet18_op_d2``, ...) into timm's and
torchvision's registries, so ``timm.create_model("resnet18_op_d2")`` and
``torchvision.models.get_model("alexnet_op_d2")`` work, and timm's
``train.py --device-modules overparam_zoo`` picks them up.

This module is the public API: everything in ``__all__`` is imported from here
(``from overparam_zoo import export_collapsed``), and stays here when the files behind it move.
The one other import path meant for users is :mod:`overparam_zoo.export_on_save`, the module
timm's ``train.py --device-modules`` imports to export on every checkpoint save.
"""

from overparam_zoo import compat  # noqa: F401 - first: a too-old torch or timm fails here, in one line

# isort: split
from overparam import __version__, collapse, collapsed_state_dict
from overparam_zoo.checkpoints.folder import ExportFolder
from overparam_zoo.checkpoints.loading import load_model
from overparam_zoo.checkpoints.reading import read_checkpoint
from overparam_zoo.errors import (
    AnalysisError,
    CheckpointError,
    CompareError,
    DataError,
    ExportError,
    ExportFolderError,
    MissingExtraError,
    OutputError,
    OverparamZooError,
    PublishError,
    QuantizeError,
    RecipeError,
    UnknownModelError,
)
from overparam_zoo.experiments.compare import CompareResult, LearningCurveResult, run_compare, run_learning_curve
from overparam_zoo.experiments.datasets import ImageData, load_bundled, load_image_folder
from overparam_zoo.experiments.training import TrainSettings
from overparam_zoo.layers.tracing import register_tracing
from overparam_zoo.registry.hookspecs import hookimpl
from overparam_zoo.registry.plugins import get_plugin_manager
from overparam_zoo.registry.recipe import Recipe, Variant, load_recipe
from overparam_zoo.registry.variants import (
    Resolved,
    apply_variant,
    build_base,
    check_variant,
    create_model,
    get_variant,
    list_variants,
    register_all,
    register_recipe,
    resolve,
)
from overparam_zoo.registry.zoos import ZOOS
from overparam_zoo.sharing.export import ExportResult, export_collapsed
from overparam_zoo.sharing.metadata import ExportMetadata, MetadataWarning, read_label_names
from overparam_zoo.sharing.publish import PushResult, push_export, validate_export
from overparam_zoo.sharing.quantize import (
    Int8Accuracy,
    Int8Result,
    QuantizedModel,
    image_batches,
    quantize_export,
    quantize_model,
)
from overparam_zoo.sharing.save_hooks import ExportOnSave, install_checkpoint_saver_hook
from overparam_zoo.sharing.verify import VerifyReport, verify_collapse

__all__ = [
    "__version__",
    # names: which models exist, what a name means
    "ZOOS",
    "Recipe",
    "Variant",
    "Resolved",
    "load_recipe",
    "register_recipe",
    "register_all",
    "list_variants",
    "get_variant",
    "resolve",
    # building
    "create_model",
    "build_base",
    "apply_variant",
    "check_variant",
    "collapse",  # overparam's: timm's fx settings are registered with it on import
    "collapsed_state_dict",
    # loading
    "read_checkpoint",
    "load_model",
    "ExportFolder",
    # export
    "export_collapsed",
    "ExportResult",
    "ExportMetadata",
    "MetadataWarning",
    "read_label_names",
    "verify_collapse",
    "VerifyReport",
    # the save hook
    "ExportOnSave",
    "install_checkpoint_saver_hook",
    # publishing
    "push_export",
    "validate_export",
    "PushResult",
    # quantization
    "quantize_model",
    "quantize_export",
    "image_batches",
    "Int8Accuracy",
    "QuantizedModel",
    "Int8Result",
    # compare
    "run_compare",
    "CompareResult",
    "run_learning_curve",
    "LearningCurveResult",
    "TrainSettings",
    "ImageData",
    "load_bundled",
    "load_image_folder",
    # plugins
    "hookimpl",
    "get_plugin_manager",
    # errors
    "OverparamZooError",
    "UnknownModelError",
    "RecipeError",
    "CheckpointError",
    "ExportError",
    "ExportFolderError",
    "PublishError",
    "QuantizeError",
    "CompareError",
    "DataError",
    "AnalysisError",
    "OutputError",
    "MissingExtraError",
]

register_tracing()
register_all()
