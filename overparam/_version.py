"""The version of the ``overparam-zoo`` distribution (both packages): written here only.

``pyproject.toml`` reads it (``[tool.setuptools.dynamic]``), so the package metadata, the wheel,
``overparam.__version__`` and ``overparam_zoo.__version__`` all say the same.
"""

__version__ = "0.1.0"
