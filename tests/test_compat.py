"""Op models work where users train: timm EMA, inference mode, AMP, channels_last,
torch.compile, export paths of the collapsed model, timm's model API and fx feature extraction.

Every test uses the real libraries on small inputs (2-8 images of 32x32).
"""

import copy
import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from timm.layers import is_notrace_module, register_notrace_module
from timm.utils import ModelEmaV3
from torch import nn

import overparam_zoo  # noqa: F401  (registers resnet18_op_d2 etc. and chains as timm fx leaves)
from overparam import OverparamChain, collapse, collapsed_state_dict, overparameterize

from .helpers import relative_error, tiny_op_net


def op_resnet18(batch_norm: bool = False) -> nn.Module:
    return overparameterize(timm.create_model("resnet18", num_classes=10), depth=2, batch_norm=batch_norm)


def images(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32)


def train_step(model: nn.Module, x: torch.Tensor, target: torch.Tensor, opt=None) -> torch.Tensor:
    model.train()
    loss = F.cross_entropy(model(x), target)
    if opt is not None:
        opt.zero_grad()
    loss.backward()
    if opt is not None:
        opt.step()
    return loss.detach()


def flat_grad(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def norm_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def expanded_reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's output in its current mode with every chain run factor by factor.

    Independent of the eval cache: forward hooks replace each chain's output by
    ``expanded_forward`` of its input.
    """
    hooks = [
        m.register_forward_hook(lambda mod, args, out: mod.expanded_forward(args[0]))
        for m in model.modules()
        if isinstance(m, OverparamChain)
    ]
    try:
        with torch.no_grad():
            return model(x)
    finally:
        for h in hooks:
            h.remove()


# --------------------------------------------------------------------------- EMA
@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "bn"])
def test_model_ema_v3_outputs_follow_in_place_updates(batch_norm):
    model = op_resnet18(batch_norm)
    x, target = images(4), torch.tensor([0, 1, 2, 3])
    model.eval()
    with torch.no_grad():
        model(x)  # the EMA deep-copies a model whose chains hold a built cache
    ema = ModelEmaV3(model, decay=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    stock = timm.create_model("resnet18", num_classes=10).eval()
    previous = None
    for step in range(3):
        train_step(model, x, target, opt)
        ema.update(model, step=step)
        assert not ema.module.training
        with torch.no_grad():
            out = ema.module(x)  # cached effective weights, updated in place by lerp_
        assert relative_error(out, expanded_reference(ema.module, x)) < 1e-5
        stock.load_state_dict(collapsed_state_dict(ema.module), strict=True)
        with torch.no_grad():
            assert relative_error(out, stock(x)) < 1e-5
        if previous is not None:
            assert relative_error(out, previous) > 1e-4  # the EMA moved, and so did its outputs
        previous = out


# --------------------------------------------------------------------------- inference mode
@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "bn"])
def test_inference_mode_eval_then_training(batch_norm):
    model = op_resnet18(batch_norm)
    x, target = images(), torch.tensor([1, 2])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.eval()
    with torch.inference_mode():
        first = model(x)
    assert first.is_inference()

    # eval with grad enabled (fine-tuning with frozen BN): gradients reach the factors
    model(x).square().mean().backward()
    assert model.conv1.factors[0].weight.grad.abs().sum() > 0
    opt.zero_grad()

    # back to training: no inference tensor may reach autograd
    for _ in range(2):
        train_step(model, x, target, opt)

    model.eval()
    with torch.no_grad():
        after = model(x)
    assert not after.is_inference()
    assert relative_error(after, expanded_reference(model, x)) < 1e-5
    assert relative_error(after, first) > 1e-4
    with torch.inference_mode():
        again = model(x)
    assert relative_error(again, after) < 1e-6
    w = model.conv1.weight  # grad enabled: a fresh, differentiable collapse
    assert w.requires_grad and not w.is_inference()


# --------------------------------------------------------------------------- AMP, channels_last
def bf16_step_errors(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """(loss, gradient) relative error of one autocast-bf16 train step against float32; checks
    that autocast really ran (bf16 logits, float32 gradients)."""
    reference = copy.deepcopy(model)
    ref_loss = train_step(reference, x, target)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        loss = F.cross_entropy(out, target)
    loss.backward()
    assert out.dtype == torch.bfloat16
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())
    loss_error = abs(float(loss.detach()) - float(ref_loss)) / float(ref_loss)
    return loss_error, norm_error(flat_grad(model), flat_grad(reference))


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "bn"])
def test_autocast_bfloat16_train_step_and_eval(batch_norm):
    # bf16 keeps 8 significant bits (unit roundoff u = 2^-8): the bounds are what the stock resnet18
    # itself loses under bf16 on the same batch, times 2 for a chain's twice as many matmuls in
    # sequence (measured: op ~1.2x the stock's ~0.12 gradient error); a factor whose gradient is
    # wrong or missing is off by ~1, and autocast silently off fails the dtype checks
    x, target = images(8), torch.arange(8)
    _, stock_grad_error = bf16_step_errors(timm.create_model("resnet18", num_classes=10), x, target)
    model = op_resnet18(batch_norm)
    loss_error, grad_error = bf16_step_errors(model, x, target)
    assert loss_error < 2 * 2**-8  # two bf16 roundings of the loss (measured <= 3e-3)
    assert grad_error < 2 * stock_grad_error

    # (BN running stats now differ slightly: the training forward above ran in bf16)
    model.eval()
    stock = collapse(copy.deepcopy(model)).eval()
    with torch.no_grad():
        expected = expanded_reference(model, x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
            stock_out = stock(x)
            assert model.conv1.weight.dtype == torch.float32  # collapsed outside autocast
        assert out.dtype == torch.bfloat16
        stock_error = relative_error(stock_out.float(), stock(x))  # the collapsed model's own bf16 error
        assert relative_error(out.float(), expected) < 2 * stock_error
        if not batch_norm:  # eval runs the collapsed weights, so bf16 rounds exactly as the stock model
            assert torch.equal(out, stock_out)
        # the cache built under autocast is float32 and exact outside it (float32 u = 6e-8, ~20 layers)
        assert relative_error(model(x), expected) < 1e-5


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "bn"])
def test_channels_last_train_step_and_eval(batch_norm):
    model = op_resnet18(batch_norm)
    cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x, target = images(4), torch.arange(4)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    loss = train_step(model, x, target)
    cl_loss = train_step(cl_model, x_cl, target)
    assert abs(float(cl_loss - loss)) < 1e-5 * float(loss)
    assert norm_error(flat_grad(cl_model), flat_grad(model)) < 1e-4

    model.eval()
    cl_model.eval()
    with torch.no_grad():
        expected, out = model(x), cl_model(x_cl)
    assert relative_error(out, expected) < 1e-4
    assert cl_model.conv1.weight.shape == model.conv1.weight.shape


# --------------------------------------------------------------------------- torch.compile
def check_compiled_train_and_eval(backend: str, batch_norm: bool, steps: int) -> int:
    """Train and evaluate a compiled op model next to an eager copy; return compiled graphs."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    model = tiny_op_net(batch_norm)
    eager = copy.deepcopy(model)
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(model, backend=counter, fullgraph=True)  # fullgraph: no graph breaks
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    eager_opt = torch.optim.SGD(eager.parameters(), lr=0.1)
    x, target = torch.randn(4, 3, 16, 16), torch.arange(4)
    with warnings.catch_warnings():
        # dynamo notes that it traces through overparam.cost's lru_cache (pure, hashable args)
        warnings.filterwarnings("ignore", message=".*lru_cache.*")
        for _ in range(steps):
            loss = train_step(compiled, x, target, opt)
            eager_loss = train_step(eager, x, target, eager_opt)
            assert abs(float(loss - eager_loss)) < 1e-4 * float(eager_loss)
            compiled.eval()
            eager.eval()
            with torch.no_grad():
                assert relative_error(compiled(x), eager(x)) < 1e-4
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    eager_params = torch.cat([p.detach().flatten() for p in eager.parameters()])
    assert norm_error(params, eager_params) < 1e-5
    return counter.frame_count


@pytest.mark.slow
@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "bn"])
def test_torch_compile_aot_eager_train_and_eval(batch_norm):
    # one graph for training, one for eval; flipping back and forth recompiles nothing
    assert check_compiled_train_and_eval("aot_eager", batch_norm, steps=3) == 2


@pytest.mark.slow
def test_torch_compile_inductor_train_and_eval():
    # ~80-100 s on 2 CPU cores with a cold inductor cache (C++ compilation), ~15 s warm
    assert check_compiled_train_and_eval("inductor", False, steps=2) == 2


# --------------------------------------------------------------------------- collapsed model export
@pytest.fixture(scope="module")
def collapsed_pair():
    torch.manual_seed(0)
    model = op_resnet18(batch_norm=True)
    train_step(model, images(4), torch.arange(4))  # non-trivial BN statistics inside the chains
    model.eval()
    x = images()
    with torch.no_grad():
        expected = model(x)
    stock = collapse(copy.deepcopy(model)).eval()
    assert not any(isinstance(m, OverparamChain) for m in stock.modules())
    return stock, x, expected


def test_collapsed_model_jit_trace(collapsed_pair):
    stock, x, expected = collapsed_pair
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still works
        traced = torch.jit.trace(stock, x)
    with torch.no_grad():
        assert relative_error(traced(x), expected) < 1e-5


def test_collapsed_model_torch_export(collapsed_pair):
    stock, x, expected = collapsed_pair
    program = torch.export.export(stock, (x,))
    with torch.no_grad():
        assert relative_error(program.module()(x), expected) < 1e-5


def test_op_model_torch_export_in_eval():
    # exporting the op model itself also works: the collapse is traced into the graph
    model = op_resnet18(batch_norm=True).eval()
    x = images()
    with torch.no_grad():
        expected = model(x)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        assert relative_error(program.module()(x), expected) < 1e-5


def test_collapsed_model_fx_symbolic_trace(collapsed_pair):
    stock, x, expected = collapsed_pair
    graph_module = torch.fx.symbolic_trace(stock)
    with torch.no_grad():
        assert relative_error(graph_module(x), expected) < 1e-5


def test_collapsed_model_onnx_runs_in_onnxruntime(collapsed_pair, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    stock, x, expected = collapsed_pair
    path = tmp_path / "resnet18.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated
        # dynamo=True needs onnxscript, which is not a dependency
        torch.onnx.export(stock, (x,), str(path), dynamo=False, input_names=["x"], output_names=["logits"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"x": x.numpy()})
    assert relative_error(torch.from_numpy(out), expected) < 1e-4


# --------------------------------------------------------------------------- timm model API
def test_zoo_names_are_registered():
    assert {"resnet18_op_d2", "resnet18_op_d2_bn"} <= set(timm.list_models("resnet18_op_*"))


@pytest.mark.parametrize("name", ["resnet18_op_d2", "resnet18_op_d2_bn"])
def test_timm_features_only(name):
    model = timm.create_model(name, features_only=True, out_indices=(1, 2, 3, 4))
    assert isinstance(model.conv1, OverparamChain)
    assert model.feature_info.channels() == [64, 128, 256, 512]
    x = images()
    model.train()
    features = model(x)
    sum(f.mean() for f in features).backward()
    assert model.conv1.factors[0].weight.grad is not None
    model.eval()
    stock = collapse(copy.deepcopy(model)).eval()
    with torch.no_grad():
        for got, want in zip(model(x), stock(x)):
            assert relative_error(got, want) < 1e-5


def test_timm_features_only_fx():
    # feature_cls="fx" traces the model: chains must be timm notrace (leaf) modules,
    # which `import overparam_zoo` registers
    assert is_notrace_module(OverparamChain)
    model = timm.create_model("resnet18_op_d2", features_only=True, feature_cls="fx", out_indices=(2, 4))
    x = images()
    model.train()
    features = model(x)
    assert [f.shape[1] for f in features] == [128, 512]
    sum(f.mean() for f in features).backward()
    model.eval()
    # .eval() again: a deepcopy of timm's FeatureGraphNet comes back with its graph in train
    # mode (stock timm/torchvision behaviour, not specific to op models)
    stock = collapse(copy.deepcopy(model)).eval()
    with torch.no_grad():
        for got, want in zip(model(x), stock(x)):
            assert relative_error(got, want) < 1e-5


def test_timm_forward_intermediates():
    model = timm.create_model("resnet18_op_d2_bn", num_classes=10)
    stock = collapse(copy.deepcopy(model)).eval()
    x = images()
    model.eval()
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        stock_final, stock_intermediates = stock.forward_intermediates(x)
    assert len(intermediates) == 5
    assert relative_error(final, stock_final) < 1e-5
    for got, want in zip(intermediates, stock_intermediates):
        assert relative_error(got, want) < 1e-5
    model.train()
    final, intermediates = model.forward_intermediates(x, indices=2)
    assert [t.shape[1] for t in intermediates] == [256, 512]
    (final.mean() + intermediates[0].mean()).backward()


def test_timm_reset_classifier():
    model = timm.create_model("resnet18_op_d2", num_classes=10)
    assert isinstance(model.fc, OverparamChain)
    model.reset_classifier(5)
    # timm builds a new *stock* head; over-parameterize it again if wanted
    assert type(model.fc) is nn.Linear
    x = images()
    assert model(x).shape == (2, 5)
    model = overparameterize(model, depth=2, include=["fc"])
    assert isinstance(model.fc, OverparamChain)
    train_step(model, x, torch.tensor([0, 4]))
    model.eval()
    stock = timm.create_model("resnet18", num_classes=5)
    stock.load_state_dict(collapsed_state_dict(model), strict=True)
    with torch.no_grad():
        assert relative_error(stock.eval()(x), model(x)) < 1e-5
    model.reset_classifier(0)
    assert model(x).shape == (2, 512)


@pytest.mark.parametrize("name", ["resnet18_op_d2", "resnet18_op_d2_bn"])
def test_timm_grad_checkpointing(name):
    model = timm.create_model(name, num_classes=10)
    checkpointed = copy.deepcopy(model)
    checkpointed.set_grad_checkpointing(True)
    x, target = images(4), torch.arange(4)
    loss = train_step(model, x, target)
    ck_loss = train_step(checkpointed, x, target)
    assert abs(float(ck_loss - loss)) < 1e-6 * float(loss)
    assert norm_error(flat_grad(checkpointed), flat_grad(model)) < 1e-5


def test_timm_fx_feature_extractor_with_notrace_registration(monkeypatch):
    from timm.layers import _fx
    from timm.models import create_feature_extractor

    model = op_resnet18(batch_norm=True)
    chains = {type(m) for m in model.modules() if isinstance(m, OverparamChain)}
    monkeypatch.setattr(_fx, "_leaf_modules", set(_fx._leaf_modules) - chains)  # timm's list is back afterwards
    for cls in chains:
        register_notrace_module(cls)  # what `import overparam_zoo` does for chain classes
    extractor = create_feature_extractor(model, {"layer1": "low", "layer4": "high"})
    x = images()
    extractor.train()
    out = extractor(x)
    (out["low"].mean() + out["high"].mean()).backward()
    assert model.conv1.factors[0].weight.grad is not None
    extractor.eval()
    with torch.no_grad():
        out = extractor(x)
        stock = collapse(copy.deepcopy(model)).eval()
        assert relative_error(out["high"], stock.forward_features(x)) < 1e-5


# --------------------------------------------------------------------------- torchvision fx
@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "bn"])
def test_torchvision_fx_feature_extraction_train_and_eval(batch_norm):
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    model = overparameterize(torchvision.models.resnet18(num_classes=10), depth=2, batch_norm=batch_norm)
    tracer_kwargs = {"leaf_modules": [OverparamChain]}  # chains branch on mode and cache: trace them as leaves
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    assert "layer1.0.conv1" in train_nodes and "layer1.0.conv1" in eval_nodes
    extractor = create_feature_extractor(model, {"layer2": "mid", "fc": "logits"}, tracer_kwargs=tracer_kwargs)
    x = images()

    extractor.train()
    out = extractor(x)
    assert out["mid"].shape == (2, 128, 4, 4) and out["logits"].shape == (2, 10)
    (out["mid"].mean() + out["logits"].mean()).backward()
    assert all(p.grad is not None for p in model.parameters())

    extractor.eval()
    model.eval()
    with torch.no_grad():
        out = extractor(x)
        assert relative_error(out["logits"], model(x)) < 1e-6
        stock = collapse(copy.deepcopy(model)).eval()
        assert relative_error(out["logits"], stock(x)) < 1e-5
