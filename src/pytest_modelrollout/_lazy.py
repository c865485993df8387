"""Names of a package loaded from its modules on first use (PEP 562).

The plugin's packages keep what every run imports small: a name whose module loads a heavy
library (pydantic, the HTTP stack, the simulator's server) is imported when first looked up.
This module imports nothing but :mod:`importlib`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(package: str, where: Mapping[str, str],
               namespace: dict[str, Any]) -> Callable[[str], Any]:
    """The package's ``__getattr__``: ``where`` maps each lazy name to the module (relative to
    ``package``) that defines it; a name found is kept in ``namespace`` (the package's
    globals), so that it is looked up once."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        namespace[name] = value
        return value

    return __getattr__
