"""Session settings and fixtures that keep tests independent of each other and of the machine.

- One intra-op thread for the whole session (and its subprocesses), set even when the shell
  exports another count: torch's default of one thread per core oversubscribes as soon as
  anything else runs.
- Third-party ``overparam_zoo`` plugins installed on the machine are disabled; tests that
  exercise entry points enable them in their own subprocesses.
- Registrations (timm's and torchvision's registries, the variant table, plugins, timm's
  ``CheckpointSaver`` hook) made by a test are undone after it.
"""

import copy
import os

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"
os.environ["OVERPARAM_ZOO_DISABLE_PLUGINS"] = "1"  # before anything imports overparam_zoo

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


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

    from overparam_zoo.names import op_models, registry

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
