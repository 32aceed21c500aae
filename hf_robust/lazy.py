"""Lazy package exports (PEP 562), so that `import hf_robust` and `hf-robust --help` do not import trl, peft,
diffusers and sentence-transformers: a name is imported from its module the first time it is used."""

import importlib
import importlib.util
import sys
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, list[str]]) -> tuple[Callable, Callable, list[str]]:
    """`(__getattr__, __dir__, __all__)` for the package `package`.

    Args:
        package: The package's `__name__`.
        exports: Module name (relative to the package, e.g. ".gaslite") -> the public names it defines.

    Returns:
        The module-level `__getattr__` (imports the name's module on first use and caches the value in the package;
        a submodule's name imports the submodule),
        `__dir__`, and `__all__` (every exported name, in the order given).
    """
    owner = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str):
        if name in owner:
            value = getattr(importlib.import_module(owner[name], package), name)
        elif not name.startswith("_") and importlib.util.find_spec(f"{package}.{name}") is not None:
            value = importlib.import_module(f"{package}.{name}")  # a submodule, as after an eager import
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(owner))

    return __getattr__, __dir__, list(owner)
