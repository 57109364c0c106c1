"""The module the op variants' builders belong to, in both zoos: timm's registry lists them
under it (``timm.list_modules()`` shows ``op_models``; timm's ``register_model`` appends each
name to ``__all__``, :mod:`overparam_zoo.registry.zoos` fills ``default_cfgs``), and it is the
``__module__`` of torchvision's variant builders too."""

from typing import Any


class _Names(list):
    """``__all__`` with constant-time membership: timm's ``register_model`` checks it once per
    registered name, which is quadratic in the thousands of generic variants with a plain list."""

    def __init__(self) -> None:
        super().__init__()
        self._members: set[str] = set()

    def append(self, name: str) -> None:
        self._members.add(name)
        super().append(name)

    def __contains__(self, name: object) -> bool:
        return name in self._members


__all__: list[str] = _Names()
default_cfgs: dict[str, dict[str, Any]] = {}
