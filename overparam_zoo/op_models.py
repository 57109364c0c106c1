"""The module timm's registry lists op variants under (``timm.list_modules()`` shows
``op_models``); :mod:`overparam_zoo.registry` fills ``default_cfgs`` and ``__all__``."""

from typing import Any

__all__: list[str] = []
default_cfgs: dict[str, dict[str, Any]] = {}
