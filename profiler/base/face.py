"""A wing's public face, imported on first use: what other wings and users import from the wing.

A wing's ``__init__`` names its public names and the module each lives in::

    __all__, __getattr__ = lazy_face(__name__, {".resolve": ("load_model", "LoadedModel")})

``from ssm_profile.model import load_model`` then imports ``model.resolve`` only when asked, so that a
front end importing one torch-free name of a wing does not load the wing's torch-heavy modules.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def lazy_face(package: str, face: Mapping[str, Iterable[str]]) -> tuple[list[str], Callable[[str], Any]]:
    """``{".module": names}`` -> (``__all__``, the package's module-level ``__getattr__``)."""
    home: dict[str, str] = {}
    for module, names in face.items():
        for name in names:
            if name in home:
                raise ValueError(f"{package}: '{name}' is public in both {home[name]} and {module}")
            home[name] = module

    def __getattr__(name: str) -> Any:  # the module attribute hook (PEP 562)
        if name not in home:
            raise AttributeError(f"module '{package}' has no attribute '{name}'")
        value = getattr(importlib.import_module(home[name], package), name)
        setattr(sys.modules[package], name, value)  # found once; later reads skip this hook
        return value

    return list(home), __getattr__
