"""SSM mixer families the project computes itself (see :mod:`ssm_profile.mixers._base`).

Public face:

* :func:`family_of` / :data:`FAMILIES`: which family a transformers mixer module is;
* :class:`MixerFamily`, :class:`Stage`: the interface (its forward as stages);
* :func:`owned_family`, :func:`owned_kernel`, :func:`run_owned`, :class:`MixerFallbackWarning`: the owned forwards
  installed on a model (by :func:`ssm_profile.mixers.choice.installed`; their proof is ``_install.check``);
* :func:`usage`, :func:`snapshot`, :func:`describe`: what ran, from a counter of real calls;
* :class:`Kernels`, :func:`installed`, :func:`active`, :func:`model_device`: which kernels a model runs, installed
  on one model inside a ``with`` block (:mod:`.choice`); :func:`self_test`: each family run once against
  transformers' forward.
"""

from __future__ import annotations

from ._base import MixerFamily, Stage
from ._install import MixerFallbackWarning, owned_family, owned_kernel, run_owned
from ._ledger import describe, snapshot, usage
from .registry import FAMILIES, family_of
from .choice import Kernels, active, installed, model_device
from ._selftest import self_test

__all__ = ["FAMILIES", "MixerFallbackWarning", "MixerFamily", "Stage", "describe", "family_of", "owned_family",
           "owned_kernel", "run_owned", "snapshot", "usage", "Kernels", "active", "installed", "model_device",
           "self_test"]
