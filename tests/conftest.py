"""Session settings and fixtures that keep tests independent of each other and of the machine.

- One intra-op thread for the whole session (and its subprocesses), set even when the shell
  exports another count: torch's default of one thread per core oversubscribes as soon as
  anything else runs.
- Third-party ``overparam_zoo`` plugins installed on the machine are disabled; tests that
  exercise entry points enable them in their own subprocesses.
- Registrations (timm's and torchvision's registries, the variant table, plugins, timm's
  ``CheckpointSaver`` hook) made by a test are undone after it by the fixtures below, and
  ``_no_leaks`` fails any test that leaves those, timm's no-trace lists, the environment, the
  umask, the working folder or torch's threads and default dtype changed (CI also runs a sample
  of test files in random order, so an order dependence shows).
"""

import copy
import os
import sys

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"
os.environ["OVERPARAM_ZOO_DISABLE_PLUGINS"] = "1"  # before anything imports overparam_zoo

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


#: set by pytest itself, and by sklearn/joblib/threadpoolctl on import and torch's inductor on compile
#: (older torch also sets its cache folder when dynamo first runs, e.g. torch 2.9's strict export)
_OTHERS_ENV = frozenset(
    {
        "PYTEST_CURRENT_TEST",
        "KMP_DUPLICATE_LIB_OK",
        "KMP_INIT_AT_FORK",
        "_TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR",
        "TORCHINDUCTOR_CACHE_DIR",
    }
)


def _process_state() -> dict[str, object]:
    """What a test must leave as it found it, read cheaply (sizes and identities, not copies),
    and only from modules already imported: a test that imports one first may fill it."""
    umask = os.umask(0o022)
    os.umask(umask)
    state: dict[str, object] = {
        "os.environ": {k: v for k, v in os.environ.items() if k not in _OTHERS_ENV},
        "umask": oct(umask),
        "cwd": os.getcwd(),
        "torch threads": torch.get_num_threads(),
        "torch default dtype": torch.get_default_dtype(),
    }
    modules = sys.modules
    if "overparam_zoo" not in modules:  # its import registers thousands of variants, by design
        return state
    if "timm.models._registry" in modules:
        state["timm models"] = len(modules["timm.models._registry"]._model_entrypoints)
    if "timm.layers._fx" in modules:
        fx = modules["timm.layers._fx"]
        state["timm no-trace modules"] = len(fx._leaf_modules)
        state["timm no-trace functions"] = len(fx._autowrap_functions)
    if "timm.utils" in modules:
        state["CheckpointSaver.save_checkpoint"] = id(modules["timm.utils"].CheckpointSaver.__dict__["save_checkpoint"])
    if "torchvision.models._api" in modules:
        state["torchvision models"] = len(getattr(modules["torchvision.models._api"], "BUILTIN_MODELS", ()))
    if "overparam_zoo.registry.variants" in modules:
        registry = modules["overparam_zoo.registry.variants"]
        state["op variants"] = (len(registry._VARIANTS), len(registry._REGISTERED))
    if "overparam_zoo.registry.op_models" in modules:
        op_models = modules["overparam_zoo.registry.op_models"]
        state["op_models"] = (len(op_models.__all__), len(op_models.__all__._members), len(op_models.default_cfgs))
    if "overparam_zoo.registry.plugins" in modules:
        manager = modules["overparam_zoo.registry.plugins"]._manager
        if manager is not None:  # created on first use; after that it must stay the same, with the same plugins
            state["plugin manager"] = (id(manager), sorted(name for name, _ in manager.list_name_plugin()))
    return state


@pytest.fixture(autouse=True)
def _no_leaks(request):
    """Fail the test that leaves process-wide state changed (registries, plugins, no-trace lists,
    environment, umask, ...); the environment, umask, working folder and torch's threads and
    default dtype are put back so the next test is not hit (tests/test_isolation.py)."""
    before = _process_state()
    yield
    after = _process_state()
    changed = [key for key in before if key in after and after[key] != before[key]]
    if not changed:
        return
    details = []
    for key in changed:
        if key == "os.environ":
            old, new = before[key], after[key]
            details.append(f"os.environ: {sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))}")
            os.environ.clear()
            os.environ.update(old)
        else:
            details.append(f"{key}: {before[key]} -> {after[key]}")
    os.umask(int(str(before["umask"]), 8))
    os.chdir(str(before["cwd"]))
    torch.set_num_threads(int(before["torch threads"]))
    torch.set_default_dtype(before["torch default dtype"])
    pytest.fail(f"{request.node.nodeid} left process-wide state changed: " + "; ".join(details), pytrace=False)


def _snapshot(namespace: dict, names: list[str]) -> dict:
    return {name: copy.deepcopy(namespace[name]) for name in names}


def _restore(namespace: dict, saved: dict) -> None:
    for name, value in saved.items():
        current = namespace[name]
        current.clear()
        current.update(value)


@pytest.fixture
def isolated_registries():
    """Undo every model registration the test makes: timm's registry, torchvision's, and
    overparam_zoo's variant table, and ``op_models``' ``__all__`` and ``default_cfgs`` (timm's
    ``register_model`` appends every variant name to its module's ``__all__``)."""
    import timm.models._registry as timm_registry
    from torchvision.models import _api

    from overparam_zoo.registry import op_models
    from overparam_zoo.registry import variants as registry

    timm_names = [k for k, v in vars(timm_registry).items() if isinstance(v, (dict, set)) and k.startswith("_m")]
    timm_saved = _snapshot(vars(timm_registry), timm_names)
    zoo_saved = _snapshot(vars(registry), ["_VARIANTS", "_REGISTERED"])
    cfgs_saved = dict(op_models.default_cfgs)
    names_saved = list(op_models.__all__)
    tv_models = _api.BUILTIN_MODELS  # the dict itself: a test may delete the attribute
    tv_saved = dict(tv_models)
    yield
    _restore(vars(timm_registry), timm_saved)
    _restore(vars(registry), zoo_saved)
    op_models.default_cfgs.clear()
    op_models.default_cfgs.update(cfgs_saved)
    del op_models.__all__[len(names_saved) :]  # appended to only; the constant-time membership set too
    op_models.__all__._members.intersection_update(names_saved)
    tv_models.clear()
    tv_models.update(tv_saved)


@pytest.fixture
def register_plugin(isolated_registries):
    """``register_plugin(obj)`` adds a plugin for this test only (its registrations too)."""
    from overparam_zoo import get_plugin_manager

    pm = get_plugin_manager()
    added = []

    def register(plugin, name=None):
        pm.register(plugin, name=name)
        added.append(plugin)
        return plugin

    yield register
    for plugin in added:
        pm.unregister(plugin)


@pytest.fixture
def checkpoint_saver_hook():
    """timm's ``CheckpointSaver`` exporting on save (what ``export_on_save`` installs), for this test only."""
    from timm.utils import CheckpointSaver

    from overparam_zoo.sharing.save_hooks import install_checkpoint_saver_hook

    original = CheckpointSaver.__dict__["save_checkpoint"]
    install_checkpoint_saver_hook()
    yield
    CheckpointSaver.save_checkpoint = original
