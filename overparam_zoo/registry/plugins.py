"""The plugin manager: built-in behaviour registered exactly like a third-party plugin.

Third-party plugins come from the ``overparam_zoo`` entry-point group. A broken one gives a
warning that names it and is left out; ``OVERPARAM_ZOO_DISABLE_PLUGINS=1`` skips them all.
"""

from __future__ import annotations

import importlib.metadata
import os
import warnings

import pluggy

from overparam_zoo.registry import hookspecs

__all__ = ["get_plugin_manager", "reset_plugin_manager", "DISABLE_ENV", "ENTRY_POINT_GROUP"]

DISABLE_ENV = "OVERPARAM_ZOO_DISABLE_PLUGINS"
ENTRY_POINT_GROUP = "overparam_zoo"

_manager: pluggy.PluginManager | None = None


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as err:  # a broken plugin must never break `import overparam_zoo`
            warnings.warn(
                f"overparam_zoo: plugin {ep.name!r} ({ep.value}) failed to load and is ignored: "
                f"{type(err).__name__}: {err}",
                stacklevel=2,
            )


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, created on first use."""
    global _manager
    if _manager is None:
        from overparam_zoo.registry import default_plugin

        pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        pm.add_hookspecs(hookspecs)
        pm.register(default_plugin, name="overparam_zoo.default")
        if os.environ.get(DISABLE_ENV, "").strip().lower() not in ("1", "true", "yes"):
            _load_entry_points(pm)
        _manager = pm
    return _manager


def reset_plugin_manager() -> None:
    """Forget the manager (tests, or after installing a plugin in a running process)."""
    global _manager
    _manager = None
