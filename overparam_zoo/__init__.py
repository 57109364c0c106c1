"""overparam_zoo: over-parameterized timm/torchvision models from YAML recipes.

``import overparam_zoo`` registers every variant (``resnet18_op_d2``, ...) into timm's and
torchvision's registries, so ``timm.create_model("resnet18_op_d2")`` works, and timm's
``train.py --device-modules overparam_zoo`` picks them up.
"""

from overparam_zoo import versions  # noqa: F401 - first: a too-old torch or timm fails here, in one line

# isort: split
from overparam import collapse, collapsed_state_dict
from overparam_zoo.errors import (
    CheckpointError,
    DataError,
    ExportError,
    OverparamZooError,
    PublishError,
    RecipeError,
    UnknownModelError,
)
from overparam_zoo.names.hookspecs import hookimpl
from overparam_zoo.names.plugins import get_plugin_manager
from overparam_zoo.names.recipe import Recipe, Variant, load_recipe
from overparam_zoo.names.registry import (
    apply_variant,
    check_variant,
    create_model,
    get_variant,
    list_variants,
    register_all,
    register_recipe,
    resolve,
)
from overparam_zoo.names.tracing import register_tracing

__version__ = "0.1.0"

__all__ = [
    "hookimpl",
    "get_plugin_manager",
    "OverparamZooError",
    "UnknownModelError",
    "RecipeError",
    "CheckpointError",
    "ExportError",
    "PublishError",
    "DataError",
    "Recipe",
    "Variant",
    "load_recipe",
    "register_recipe",
    "register_all",
    "list_variants",
    "get_variant",
    "resolve",
    "create_model",
    "apply_variant",
    "check_variant",
    "collapse",  # overparam's: timm's fx settings are registered with it on import
    "collapsed_state_dict",
]

register_tracing()
register_all()
