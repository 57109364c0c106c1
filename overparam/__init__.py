"""Linear over-parameterization of Linear and Conv layers, with exact closed-form collapse.

Huh et al., "The Low-Rank Simplicity Bias in Deep Networks", TMLR 2023.
"""

from .compat import MIN_TORCH  # noqa: F401 - first: a too-old torch fails here, in one line

# isort: split
from ._version import __version__
from .analysis import LayerSpectrum, effective_rank, embedding_effective_rank, singular_values, spectrum
from .chain import OverparamChain
from .convert import (
    ConversionReport,
    collapse,
    collapsed_state_dict,
    convert_model,
    from_stock,
    overparameterize,
)
from .expand import expand_into_, expand_pretrained
from .init import init_chain_
from .layers import OverparamConv1d, OverparamConv2d, OverparamConv3d, OverparamLinear
from .options import ChainOptionError, ChainOptions

__all__ = [
    "__version__",
    "OverparamChain",
    "ChainOptions",
    "ChainOptionError",
    "OverparamLinear",
    "OverparamConv1d",
    "OverparamConv2d",
    "OverparamConv3d",
    "ConversionReport",
    "convert_model",
    "from_stock",
    "overparameterize",
    "collapse",
    "collapsed_state_dict",
    "init_chain_",
    "expand_into_",
    "expand_pretrained",
    "singular_values",
    "effective_rank",
    "spectrum",
    "embedding_effective_rank",
    "LayerSpectrum",
]
