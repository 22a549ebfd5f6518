"""Criteria that weigh weights by the activations they multiply: WANDA, FLAP (WIFV), OBS.

Input statistics are those of :func:`ssm_profile.stats.collect_stats` (``inputs``, ``hessians``).
"""

from __future__ import annotations

import torch

from ..arch import MAMBA1
from ._common import LINEAR_WEIGHTS, input_norm, input_var, inputs, need_param, out_proj_slot, tensor
from .base import Criterion, NotApplicable, register


def _no_input_reason(param: str) -> str:
    if param.endswith("bias"):
        return "a bias: no input activation multiplies it"
    return "no input activation multiplies it"


@register
class Wanda(Criterion):
    """WANDA: |W_ij|·‖X_j‖₂, compared within each output row.

    * ``in_proj``/``x_proj``/``dt_proj``/``out_proj`` weights: X = the layer's input.
    * ``conv1d.weight[c, 0, k]``: |w|·‖x_c‖, x_c = conv input channel c (the norm over all tokens;
      tap k sees the same sequence shifted by K-1-k steps).
    * ``D``: |D_c|·‖x_c‖ with x the scan input; Mamba-2 per head, ‖x_h‖ over the head's P channels.
    * NotApplicable: A_log, dt_bias, norm weights and biases (no input activation multiplies them).
    """

    name = "wanda"
    description = "|W_ij|·‖X_j‖₂ (WANDA), per-output-row comparison"
    needs = frozenset({"inputs"})
    comparison = "row"

    def check(self, mixer, param):
        need_param(mixer, param)
        if param in LINEAR_WEIGHTS or param in ("conv1d.weight", "D"):
            return
        raise NotApplicable(_no_input_reason(param))

    def score(self, ctx, mixer, param):
        self.check(mixer, param)
        w = tensor(mixer, param).abs()
        if param in LINEAR_WEIGHTS:
            return w * input_norm(ctx.stats, mixer, LINEAR_WEIGHTS[param])[None, :]
        if param == "conv1d.weight":
            return w * input_norm(ctx.stats, mixer, "conv1d")[:, None, None]
        return w * input_norm(ctx.stats, mixer, "D")  # D


@register
class Flap(Criterion):
    """FLAP fluctuation (WIFV): Var(x_j)·W_ij², the variance a weight adds to its output.

    * linear weights (in_proj, x_proj, dt_proj, out_proj): x_j = input channel j.
    * ``D``: Var(x_c)·D_c² (Mamba-1); Mamba-2 D_h²·Σ_{p in h} Var(x_hp).
    * units channel (Mamba-1), head / head_channel / group (Mamba-2): FLAP's own metric, the
      out_proj input fluctuation Var(x_c)·‖W_out[:, c]‖² summed over the unit's channels.
    * NotApplicable: conv1d, A_log, dt_bias, norm, biases; state and dt_rank units (they own no
      out_proj input channel).
    """

    name = "flap"
    description = "fluctuation Var(x_j)·W_ij² (FLAP/WIFV); units by out_proj input channel fluctuation"
    needs = frozenset({"inputs"})

    def check(self, mixer, param):
        need_param(mixer, param)
        if param in LINEAR_WEIGHTS or param == "D":
            return
        if param == "conv1d.weight":
            raise NotApplicable("FLAP's fluctuation is defined for linear maps across channels; the depthwise "
                                "conv mixes time steps")
        raise NotApplicable(_no_input_reason(param))

    def score(self, ctx, mixer, param):
        self.check(mixer, param)
        w = tensor(mixer, param)
        if param in LINEAR_WEIGHTS:
            return w.square() * input_var(ctx.stats, mixer, LINEAR_WEIGHTS[param])[None, :]
        if mixer.kind == MAMBA1:
            return w.square() * input_var(ctx.stats, mixer, "D")
        var = input_var(ctx.stats, mixer, "x").view(mixer.num_heads, mixer.head_dim).sum(1)
        return w.square() * var

    def check_units(self, mixer, family):
        if out_proj_slot(family) is None:
            raise NotApplicable(f"FLAP scores out_proj input channels; a {family.kind} unit owns none")

    def channel_fluctuation(self, ctx, mixer) -> torch.Tensor:
        """Var(x_c)·‖W_out[:, c]‖² per out_proj input channel c, shape (E,)."""
        w = tensor(mixer, "out_proj.weight")
        return input_var(ctx.stats, mixer, "out_proj").double() * w.double().square().sum(0)

    def unit_scores(self, ctx, mixer, family):
        self.check_units(mixer, family)
        slot = out_proj_slot(family)
        fluct = self.channel_fluctuation(ctx, mixer)
        idx = slot.indices(torch.arange(family.count)).view(family.count, slot.width)
        return fluct[idx].sum(1)


@register
class OBS(Criterion):
    """Second-order OBS / SparseGPT saliency: w_ij² / [H⁻¹]_jj, H = XᵀX/n + λ·mean(diag(XᵀX/n))·I.

    The increase of the layer's squared output error when w_ij alone is removed and the rest of
    its row is optimally updated. Linear weights (in_proj, x_proj, dt_proj, out_proj) only; λ = 0.01
    (SparseGPT's dampening). Compared within rows, as SparseGPT keeps a uniform sparsity per row.
    """

    name = "obs"
    description = "w²/[H⁻¹]_jj (OBS/SparseGPT second order, layer input Hessian)"
    needs = frozenset({"inputs", "hessians"})
    comparison = "row"

    def __init__(self, damp: float = 0.01):
        self.damp = damp
        self._cache: dict[str, torch.Tensor] = {}
        self._owner = None  # the CalibrationStats the cache belongs to

    def check(self, mixer, param):
        need_param(mixer, param)
        if param not in LINEAR_WEIGHTS:
            raise NotApplicable("OBS needs the input Hessian of a linear layer (in_proj, x_proj, dt_proj, "
                                "out_proj weights only)")

    def inverse_diag(self, ctx, mixer, key: str) -> torch.Tensor:
        full = f"{mixer.path}.{key}"
        if self._owner is not ctx.stats:
            self._cache, self._owner = {}, ctx.stats
        cached = self._cache.get(full)
        if cached is not None:
            return cached
        if full not in ctx.stats.hessians:
            raise KeyError(f"calibration statistics hold no Hessian for '{full}'; collect them with "
                           "needs={'hessians'}")
        n = float(inputs(ctx.stats, mixer, key)["n"])
        h = ctx.stats.hessians[full].double() / max(n, 1.0)
        mean_diag = float(h.diagonal().mean())
        damp = self.damp * mean_diag if mean_diag > 0 else 1e-8
        h = h + damp * torch.eye(h.shape[0], dtype=h.dtype)
        try:
            inv = torch.cholesky_inverse(torch.linalg.cholesky(h))
        except RuntimeError:  # not positive definite in float rounding: fall back to a pseudo-inverse
            inv = torch.linalg.pinv(h, hermitian=True)
        diag = inv.diagonal().clamp_min(1e-30).float()
        self._cache[full] = diag
        return diag

    def score(self, ctx, mixer, param):
        self.check(mixer, param)
        w = tensor(mixer, param)
        return w.square() / self.inverse_diag(ctx, mixer, LINEAR_WEIGHTS[param])[None, :]
