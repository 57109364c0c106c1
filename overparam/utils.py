"""Compatibility path of the paper's code: ``from overparam.utils import overparameterize``."""

from .convert import collapse, overparameterize

__all__ = ["overparameterize", "collapse"]
