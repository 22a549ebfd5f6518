"""Which mixer family a module belongs to: every family the project computes, in one registry
(other packages add theirs through the ``ssm_profile.mixer_families`` entry points)."""

from __future__ import annotations

from torch import nn

from ..base.registry import Registry
from ._base import MixerFamily
from .gated_delta import GatedDelta
from .selective import SelectiveScan
from .ssd import SSD

FAMILIES: Registry[MixerFamily] = Registry("mixer family", "ssm_profile.mixer_families")
for _family in (SelectiveScan(), SSD(), GatedDelta()):
    FAMILIES.add(_family.name, _family)


def family_of(module: nn.Module) -> MixerFamily | None:
    """The family whose forward computes ``module``, or None when it is no SSM mixer the project owns."""
    if not hasattr(module, "_parameters") or module._parameters.get("A_log") is None:
        return None
    return next((family for family in map(_instance, FAMILIES.values()) if family.matches(module)), None)


def family_named(name: str) -> MixerFamily:
    """The family registered as ``name`` (an unknown name is a one-line error listing the known ones)."""
    return _instance(FAMILIES.get(name))


def _instance(entry) -> MixerFamily:
    return entry() if isinstance(entry, type) else entry  # an entry point may name the class
