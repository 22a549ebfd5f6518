"""Data-free baselines: magnitude and random."""

from __future__ import annotations

from typing import ClassVar

import torch

from ._common import need_param, stable_seed, tensor
from .base import Criterion, register


@register
class Magnitude(Criterion):
    """score = |w|, every parameter.

    State units (Mamba-1: A_log[:, n] and the B/C rows of x_proj; Mamba-2: B/C rows of in_proj and
    their conv channels) do not read |A_log|: its init is log(1..N), so |A_log| ranks states by index
    whatever the data. Measured (examples/state_criteria.py, state cuts of every layer at 30/50/70%,
    summed ΔL): tiny-mamba 0.439 without A_log vs 0.591 with it; tiny-mamba2 the same (its A_log
    is per head and in no state unit).
    """

    name = "magnitude"
    description = "|w|: weight magnitude (data-free)"
    # Whether state units read |A_log| (off: see the class docstring for the measurement).
    states_read_a_log: ClassVar[bool] = False

    def check(self, mixer, param):
        need_param(mixer, param)

    def tensor_unit_scores(self, ctx, mixer, family):
        per_tensor = super().tensor_unit_scores(ctx, mixer, family)
        if family.kind == "state" and not self.states_read_a_log and len(per_tensor) > 1:
            per_tensor.pop("A_log", None)
        return per_tensor

    def score(self, ctx, mixer, param):
        self.check(mixer, param)
        return tensor(mixer, param).abs()


@register
class Random(Criterion):
    """Uniform [0, 1) scores, seeded by ``ctx.seed`` and a stable hash of mixer path + parameter.

    Units are scored by their own uniform draw (seeded by path + unit kind), not by a sum of element
    draws (which would concentrate around the mean, still random but needlessly so).
    """

    name = "random"
    description = "uniform random scores (baseline), reproducible for a given seed"

    def check(self, mixer, param):
        need_param(mixer, param)

    def score(self, ctx, mixer, param):
        self.check(mixer, param)
        shape = mixer.param(param).shape
        gen = torch.Generator().manual_seed(stable_seed(ctx.seed, mixer.path, param))
        return torch.rand(shape, generator=gen, dtype=torch.float32)

    def check_units(self, mixer, family):
        pass

    def unit_scores(self, ctx, mixer, family):
        gen = torch.Generator().manual_seed(stable_seed(ctx.seed, mixer.path, "unit", family.kind))
        return torch.rand(family.count, generator=gen, dtype=torch.float64)
