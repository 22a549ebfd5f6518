"""Data-free baselines: magnitude and random."""

from __future__ import annotations

from typing import ClassVar

import torch

from ._common import need_param, stable_seed, tensor
from .base import Criterion, register


@register
class Magnitude(Criterion):
    """score = |w|, every parameter."""

    name = "magnitude"
    description = "|w|: weight magnitude (data-free)"
    # Whether state units read |A_log| (see examples/magnitude_states.py for the measurement).
    states_read_a_log: ClassVar[bool] = True

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
