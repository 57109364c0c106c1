"""Sphinx configuration of the overparam-zoo manual.

The pages are Markdown (myst-parser); the API reference (``api.md``) renders the docstrings of
``overparam`` and ``overparam_zoo``'s public API (autodoc + napoleon, Google-style Args/Raises).

Invariants: the build reads nothing from the network (no intersphinx: no inventory is fetched)
and passes with warnings as errors, as ``.ci/run`` builds it:
``python -m sphinx -W --keep-going -b html docs <out>``. Code blocks are not run here; the
tests run them (``tests/test_docs.py``).
"""

import overparam

project = "overparam-zoo"
author = "overparam-zoo developers"
copyright = "2026, overparam-zoo developers"
release = version = overparam.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Markdown: "#section" links to headings up to level 3; ```{eval-rst} for the API directives
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

# API reference: what each package's __all__ lists, in its order, with type hints in the text
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = f"overparam-zoo {release}"
