"""The registry: what a model name means. Recipes (:mod:`.recipe`), the variant table and the
one door to build any model (:mod:`.variants`), one adapter per zoo (:mod:`.zoos`) and the
pluggy host (:mod:`.hookspecs`, :mod:`.plugins`, :mod:`.default_plugin`). Imports only the base
modules (``errors``, ``layers``) and ``overparam``."""
