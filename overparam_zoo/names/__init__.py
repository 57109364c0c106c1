"""Names: what a model name means. Recipes, the variant registry, one adapter per zoo, the
pluggy host and the chains that stand for timm's own layer types. Imports only the base
modules (``errors``, ``files``) and ``overparam``."""
