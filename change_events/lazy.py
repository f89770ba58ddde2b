"""Package exports imported on first use (PEP 562), so that the command line loads only what a
command needs: `import lake` must not load Delta, Arrow and polars until a name needs them."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str], namespace: dict) -> Callable[[str], object]:
    """A module `__getattr__` that imports `exports[name]`'s module when `name` is first used,
    and keeps the value in the package's `namespace` so later uses cost nothing."""

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__
