"""The sliced form of a Mamba-2 gated RMSNorm, computed on the zeroed model.

The gated norm divides each group of n channels by sqrt(sum of squares / n + eps). A cut that
zeroes channels keeps n; slicing them out leaves n' < n, and apply rescales the kept weights by
sqrt(n / n') (:func:`ssm_profile.pruning.surgery.slice_units`). The sliced output is then

    w·sqrt(n/n')·x / sqrt(sum/n' + eps) == w·x / sqrt(sum/n + eps·n'/n),

the zeroed model's output with eps·n'/n in that norm. No stock config can hold that eps (one value
for every norm of the model), so apply's slice equals the zeroed model only up to the eps term
(a review measured up to 0.53 in logits on a tiny random NemotronH, 0.33 on Zamba2; 0.016 and
0.024 on the test suite's tiny ones, tests/test_sliced_norm.py). The zeroed model with eps·n'/n in the
norms of the sliced layers computes what apply writes: trials, the planner's measurement and its
verification use it wherever apply slices (Gated DeltaNet's value channels, whose norm has the same
problem, are not sliced at all: their family is ``normalised``).
"""

from __future__ import annotations

from typing import Any

import torch

from .arch import MAMBA2, MixerInfo
from .stock import stock_arch


def gated_norm(mixer: MixerInfo) -> torch.nn.Module | None:
    """The mixer's gated RMSNorm (one with a weight and a ``variance_epsilon``), else None."""
    norm = getattr(mixer.module, "norm", None)
    if mixer.kind != MAMBA2 or norm is None or norm._parameters.get("weight") is None:
        return None
    return norm if hasattr(norm, "variance_epsilon") else None


def kept_per_group(mixer: MixerInfo, norm_keep: torch.Tensor) -> int | None:
    """Channels each norm group keeps under ``norm_keep`` (the keep-mask of ``norm.weight``); None
    when the groups keep different numbers (such a cut is never sliced)."""
    groups = mixer.n_groups
    counts = norm_keep.reshape(groups, -1).sum(dim=1)
    return int(counts[0]) if bool((counts == counts[0]).all()) else None


def sliced_norm_eps(mixer: MixerInfo, norm_keep: torch.Tensor) -> float | None:
    """The eps with which the zeroed mixer's gated norm computes what the norm sliced to ``norm_keep``
    computes (eps·n'/n, see the module docstring); None where nothing is sliced from it."""
    norm = gated_norm(mixer)
    if norm is None or bool(norm_keep.all()):
        return None
    kept = kept_per_group(mixer, norm_keep)
    if not kept:
        return None
    full = norm_keep.numel() // mixer.n_groups
    return float(norm.variance_epsilon) * kept / full


def stock_width_problems(config: Any, mixer: MixerInfo, kept_width: int) -> list[str]:
    """Why the stock config could not describe the mixer at width ``kept_width`` (empty: it can),
    from the same per-architecture mapping apply's :func:`ssm_profile.pruning.surgery.sync_config` uses."""
    if config is None:
        return ["model has no config"]
    dims = {**mixer.dims(), "intermediate_size": int(kept_width)}
    return stock_arch(getattr(config, "model_type", None)).width_updates(config, dims)[1]
