"""Pruning criteria behind one interface (see :mod:`ssm_profile.criteria.base`).

=============  ===================================================================================
name           scores
=============  ===================================================================================
magnitude      |w|; every parameter
wanda          |W_ij|·‖X_j‖₂ (row comparison); in_proj/x_proj/dt_proj/out_proj/conv1d weights, D
snip           |w·ḡ|; every parameter (no ΔL prediction: the first-order term is ~0 at trained weights)
fisher         w²·E[g²]; every parameter; ΔL = Σ -ḡw + ½ Σ E[g²]w²
obs            SparseGPT: mask by w²/[chol(H⁻¹)]_jj² per block, kept weights reconstructed; in_proj/x_proj/dt_proj/out_proj
flap           Var(x_j)·W_ij² (linear weights, D); units by out_proj input channel fluctuation
captum         units only: gradient×activation of out_proj input channels (captum, lazy import)
random         seeded uniform
ssm_gramian    A_log; state/channel/head units: sqrt(Wc·Wo) = sqrt(E[dt²]E[B²]E[C²])/(1-exp(2E[dt]A))
ssm_energy     A_log; state/channel/head units: E[dt²x²]E[B²]/(1-exp(2E[dt]A))·E[C²] (output energy)
horizon        A_log; state/channel/head units: 1/(softplus(dt_bias)·|A|) (data-free)
=============  ===================================================================================
"""

from __future__ import annotations

from typing import Iterable

from torch import nn

from . import activation, basic, gradient, ssm  # noqa: F401  (register the criteria)
from .base import (CalibrationStats, Criterion, NotApplicable, ScoringContext, available, get, register,
                   register_lazy, unit_aggregation_text, unit_aggregations)
from .masks import (Mask, MaskApplier, Pruning, Target, element_mask, merge, parse_structure, prunable_params,
                    pruned_count, select_units, shared_solves, targets_for, unit_mask, write_cut)

register_lazy("captum", "ssm_profile.criteria.captum_attr:CaptumChannelAttribution")

# the criteria and their registry; masks: scores to keep-masks, the frontend every pruning step shares
__all__ = ["CalibrationStats", "Criterion", "Mask", "MaskApplier", "NotApplicable", "Pruning", "ScoringContext",
           "Target", "applicability", "available", "element_mask", "get", "merge", "parse_structure",
           "prunable_params", "pruned_count", "register", "select_units", "shared_solves",
           "targets_for", "unit_aggregation_text", "unit_aggregations", "unit_mask", "write_cut"]


def applicability(model: nn.Module, criteria_names: Iterable[str]) -> list[dict]:
    """What each criterion can score in the model's first mixer, and why not where it cannot.

    Rows: ``{"criterion", "group", "unit", "applies", "reason"}`` — one per parameter group (``unit``
    None) and one per unit kind (``group`` None). A group applies when at least one of its
    tensors can be scored; ``reason`` then names the tensors that cannot (or is empty).
    """
    from ..model.arch import find_mixers
    from ..base.errors import SSMProfileError, UnsupportedModelError

    mixers = find_mixers(model)
    if not mixers:
        raise UnsupportedModelError("the model has no Mamba mixer")
    mixer = mixers[0]
    rows: list[dict] = []
    for name in criteria_names:
        if name not in available():
            get(name)  # raises the one-line error listing the options
        try:
            crit = get(name)
        except SSMProfileError as err:
            for group in mixer.groups():
                rows.append(dict(criterion=name, group=group, unit=None, applies=False, reason=str(err)))
            for kind in mixer.unit_families():
                rows.append(dict(criterion=name, group=None, unit=kind, applies=False, reason=str(err)))
            continue
        for group, params in mixer.groups().items():
            ok, failed = [], []
            for param in params:
                try:
                    crit.check(mixer, param)
                    ok.append(param)
                except NotApplicable as err:
                    failed.append((param, str(err)))
            if not ok:
                reasons = list(dict.fromkeys(r for _, r in failed))
                reason = "; ".join(reasons)
            else:
                reason = "; ".join(f"not {p}: {r}" for p, r in failed)
            rows.append(dict(criterion=name, group=group, unit=None, applies=bool(ok), reason=reason))
        for kind, family in mixer.unit_families().items():
            try:
                crit.check_units(mixer, family)
                rows.append(dict(criterion=name, group=None, unit=kind, applies=True, reason=""))
            except NotApplicable as err:
                rows.append(dict(criterion=name, group=None, unit=kind, applies=False, reason=str(err)))
    return rows
