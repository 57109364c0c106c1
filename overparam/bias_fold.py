"""The collapse-time bias fold: a chain's gained bias folded into the BatchNorm that follows it.

A chain with batch norm inside has an effective bias even when the stock layer has none
(e.g. ResNet convs). The stock architecture has no place for it, but the BatchNorm reading
the layer's output does: in eval, ``BN(z + b)`` with running mean ``m`` equals ``BN(z)``
with running mean ``m - b``. Finding that BatchNorm needs the data flow, so the model is
traced with torch.fx (chains and batch norms as leaves); the fold is refused unless the
layer's output goes to exactly one BatchNorm. Libraries whose models need some modules or
functions left untraced (timm's no-trace lists) say so once, with :func:`register_trace_options`.

Not to be confused with the training-time batch-norm merge (:mod:`overparam.bn_merge`), which
runs a batch norm *inside* an expanded chain as a scaling of the next factor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch.fx
from torch import nn

from .chain import OverparamChain

__all__ = ["needs_bias_fold", "find_following_batch_norms", "register_trace_options"]

TraceOptions = Mapping[str, Iterable]
_PROVIDERS: list[Callable[[], TraceOptions]] = []


def register_trace_options(provider: Callable[[], TraceOptions]) -> None:
    """Add a source of ``leaf_modules``/``autowrap_functions`` for every fold's fx trace.

    A callable, not a list, because libraries keep adding to theirs (timm registers no-trace
    modules as its model files are imported). Registering the same provider twice is a no-op.
    """
    if provider not in _PROVIDERS:
        _PROVIDERS.append(provider)


def needs_bias_fold(chain: OverparamChain) -> bool:
    """Whether the collapsed chain has a bias its stock layer lacks."""
    return chain.plan.batch_norm and not chain.plan.bias


class _Tracer(torch.fx.Tracer):
    def __init__(self, leaf_modules: tuple[type[nn.Module], ...], autowrap_functions: tuple[Callable, ...]):
        super().__init__(autowrap_functions=autowrap_functions)
        self._leaves = leaf_modules

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (OverparamChain, nn.modules.batchnorm._BatchNorm) + self._leaves):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _reader(node: torch.fx.Node) -> str:
    """What reads a layer's output, as a message names it: a module's path, ``name()`` for a
    function (``group_norm()``), ``.name()`` for a tensor method."""
    if node.op == "call_function":
        return f"{getattr(node.target, '__name__', node.target)}()"
    if node.op == "call_method":
        return f".{node.target}()"
    return str(node.target)


def _is_call_of(arg: object, path: str) -> bool:
    return isinstance(arg, torch.fx.Node) and arg.op == "call_module" and arg.target == path


def find_following_batch_norms(
    model: nn.Module,
    paths: Iterable[str],
    *,
    leaf_modules: Iterable[type[nn.Module]] = (),
    autowrap_functions: Iterable[Callable] = (),
) -> dict[str, tuple[str, ...]]:
    """Map each chain path to the BatchNorms that read its output, one per call site.

    A chain shared by several paths (one module, called at several places) is traced under its
    first path in ``model.named_modules()``; each of its calls must feed exactly one BatchNorm,
    and every call of such a BatchNorm must read this chain, otherwise its running mean could
    not absorb the bias for all of its inputs.

    Args:
        model: the over-parameterized model.
        paths: chain paths whose bias must be folded (each chain's first path).
        leaf_modules: module types the tracer must not enter, besides the registered ones.
        autowrap_functions: functions the tracer must not enter, besides the registered ones.

    Raises:
        ValueError: naming the layer, when the model cannot be traced or an output of the layer
            does not go to exactly one BatchNorm with running statistics that reads only it.
    """
    paths = list(paths)
    if not paths:
        return {}
    leaves, functions = list(leaf_modules), list(autowrap_functions)
    for provider in _PROVIDERS:
        options = provider()
        leaves += options.get("leaf_modules", ())
        functions += options.get("autowrap_functions", ())
    try:
        graph = _Tracer(tuple(leaves), tuple(dict.fromkeys(functions))).trace(model)
    except Exception as err:
        raise ValueError(
            f"cannot fold the bias gained by {paths[0]} (batch norm inside a bias-free layer): tracing the "
            f"model with torch.fx to find the BatchNorm after it failed: {type(err).__name__}: {err}"
        ) from err
    calls: dict[str, list[torch.fx.Node]] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls.setdefault(str(node.target), []).append(node)
    found: dict[str, tuple[str, ...]] = {}
    for path in paths:
        bns: list[str] = []
        nodes: list[torch.fx.Node | None] = [*calls.get(path, [])] or [None]
        for node in nodes:
            users = list(node.users) if node is not None else []
            target = str(users[0].target) if len(users) == 1 and users[0].op == "call_module" else None
            bn = model.get_submodule(target) if target is not None else None
            reads_only_this = target is not None and all(
                bool(call.args) and _is_call_of(call.args[0], path) for call in calls[target]
            )
            if (
                target is None
                or not isinstance(bn, nn.modules.batchnorm._BatchNorm)
                or bn.running_mean is None
                or not reads_only_this
            ):
                readers = ", ".join(_reader(u) for u in users) or "nothing"
                raise ValueError(
                    f"layer {path!r} gains a bias from the batch norm inside its chain, but the stock layer has "
                    f"none and its output goes to {readers}, not to exactly one BatchNorm that reads only this "
                    f"layer and could absorb it; use batch_norm=False for this layer"
                )
            if target not in bns:
                bns.append(target)
        found[path] = tuple(bns)
    return found
