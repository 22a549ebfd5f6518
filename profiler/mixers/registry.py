"""Which mixer family a module belongs to: every family the project owns, tried in order."""

from __future__ import annotations

from torch import nn

from ._base import MixerFamily
from .selective import SelectiveScan
from .ssd import SSD

FAMILIES: tuple[MixerFamily, ...] = (SelectiveScan(), SSD())


def family_of(module: nn.Module) -> MixerFamily | None:
    """The family whose forward computes ``module``, or None when it is no SSM mixer the project owns."""
    if not hasattr(module, "_parameters") or module._parameters.get("A_log") is None:
        return None
    return next((family for family in FAMILIES if family.matches(module)), None)


def family_named(name: str) -> MixerFamily:
    for family in FAMILIES:
        if family.name == name:
            return family
    raise KeyError(f"no mixer family '{name}' (known: {', '.join(f.name for f in FAMILIES)})")
