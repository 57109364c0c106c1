"""Property tests: random valid configurations collapse exactly (float64)."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from overparam import OverparamConv1d, OverparamConv2d

from .helpers import randomize_, relative_error


@st.composite
def conv_configs(draw):
    ndim = draw(st.sampled_from([1, 2]))
    groups = draw(st.sampled_from([1, 2]))
    channels = groups * draw(st.integers(1, 3))
    kernels = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
    width = draw(st.sampled_from([1, 2]))
    residual = draw(st.booleans()) and all(k % 2 == 1 for k in kernels)
    effective = sum(kernels) - len(kernels) + 1
    dilation = draw(st.integers(1, 2))
    return dict(
        ndim=ndim,
        in_channels=channels,
        out_channels=channels,
        kernel_sizes=kernels,
        stride=draw(st.integers(1, 3)),
        padding=draw(st.integers(0, dilation * (effective - 1))),
        dilation=dilation,
        groups=groups,
        padding_mode=draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"])),
        width=width if not residual else 1,
        bias=draw(st.booleans()),
        batch_norm=draw(st.booleans()),
        residual=residual,
        residual_intervals=draw(st.sampled_from([1, 2, -1, [1, 2]])),
        size=draw(st.integers(dilation * (effective - 1) + 1, dilation * (effective - 1) + 8)),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_configs())
def test_random_valid_configs_collapse_exactly(cfg):
    ndim, size = cfg.pop("ndim"), cfg.pop("size")
    if cfg["padding_mode"] in ("reflect", "circular") and cfg["padding"] >= size:
        cfg["padding_mode"] = "zeros"
    cls = OverparamConv1d if ndim == 1 else OverparamConv2d
    layer = randomize_(cls(**cfg).double()).eval()
    x = torch.randn(2, cfg["in_channels"], *([size] * ndim), dtype=torch.float64)
    with torch.no_grad():
        expected = layer.expanded_forward(x)
        assert relative_error(layer(x), expected) < 1e-10
        assert relative_error(layer.fuse()(x), expected) < 1e-10
