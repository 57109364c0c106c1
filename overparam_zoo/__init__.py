"""overparam_zoo: over-parameterized timm/torchvision models from YAML recipes.

``import overparam_zoo`` registers every variant (``resnet18_op_d2``, ...) into timm's and
torchvision's registries, so ``timm.create_model("resnet18_op_d2")`` works, and timm's
``train.py --device-modules overparam_zoo`` picks them up.
"""

from .collapse import collapse, collapsed_state_dict
from .hookspecs import hookimpl
from .plugins import get_plugin_manager
from .recipe import Recipe, RecipeError, Variant, load_recipe
from .registry import (
    apply_variant,
    check_variant,
    create_model,
    get_variant,
    list_variants,
    register_all,
    register_recipe,
)
from .tracing import register_with_timm_fx

__version__ = "0.1.0"

__all__ = [
    "hookimpl",
    "get_plugin_manager",
    "Recipe",
    "RecipeError",
    "Variant",
    "load_recipe",
    "register_recipe",
    "register_all",
    "list_variants",
    "get_variant",
    "create_model",
    "apply_variant",
    "check_variant",
    "collapse",
    "collapsed_state_dict",
]

register_with_timm_fx()
register_all()
