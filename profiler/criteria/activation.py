"""Criteria that weigh weights by the activations they multiply: WANDA, FLAP (WIFV), OBS.

Input statistics are those of :func:`ssm_profile.calibration.stats.collect_stats` (``inputs``, ``hessians``).
"""

from __future__ import annotations

import torch

from ..model.arch import MAMBA1
from ._common import LINEAR_WEIGHTS, input_norm, input_var, inputs, need_param, out_proj_slot, tensor
from . import sparsegpt
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
        return w * input_norm(ctx.stats, mixer, "D").view(w.shape)  # D (Zamba: heads x head_dim)


@register
class Flap(Criterion):
    """FLAP fluctuation (WIFV): Var(x_j)·W_ij², the variance a weight adds to its output.

    * linear weights (in_proj, x_proj, dt_proj, out_proj): x_j = input channel j.
    * ``D``: Var(x_c)·D_c² (Mamba-1); Mamba-2 D_h²·Σ_{p in h} Var(x_hp).
    * units channel (Mamba-1), head / head_channel / group (Mamba-2): FLAP's own metric, the
      out_proj input fluctuation Var(x_c)·‖W_out[:, c]‖² summed over the unit's channels.
    * NotApplicable: conv1d, A_log, dt_bias, norm, biases; state and dt_rank units (they own no
      out_proj input channel).
    * Bias compensation (:meth:`reconstruct`, trials and ``apply`` alike): a cut of a linear's weights
      adds the removed weights' mean contribution Σ_j W_ij·E[x_j] (E over the calibration inputs) to
      that linear's bias — for whole input channels (units) FLAP's own compensation, for single
      weights its element-wise form. Only where the linear HAS a bias: Mamba-1's ``dt_proj``, and
      in_proj/out_proj of models saved with ``use_bias=True``. Stock Mamba/Mamba-2 checkpoints have
      ``use_bias=False``: their out_proj cuts are FLAP without bias compensation (adding a bias would
      need a config that turns on every in_proj and out_proj bias).
    """

    name = "flap"
    description = ("fluctuation Var(x_j)·W_ij² (FLAP/WIFV); units by out_proj input channel fluctuation; "
                   "bias compensation where the linear has a bias")
    needs = frozenset({"inputs"})
    reconstructs = True

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
            return w.square() * input_var(ctx.stats, mixer, "D").view(w.shape)
        var = input_var(ctx.stats, mixer, "x").view(mixer.num_heads, mixer.head_dim).sum(1)
        return w.square() * var

    def check_units(self, mixer, family):
        if out_proj_slot(family) is None:
            raise NotApplicable(f"FLAP scores out_proj input channels; a {family.kind} unit owns none")

    def channel_fluctuation(self, ctx, mixer) -> torch.Tensor:
        """Var(x_c)·‖W_out[:, c]‖² per out_proj input channel c, shape (E,)."""
        w = tensor(mixer, f"{mixer.out_name}.weight")
        return input_var(ctx.stats, mixer, "out_proj").double() * w.double().square().sum(0)

    def reconstruct(self, ctx, mixer, keeps):
        values = {}
        for param, keep in keeps.items():
            bias = param[: -len("weight")] + "bias"
            if param not in LINEAR_WEIGHTS or not mixer.has(bias) or bool(keep.all()):
                continue
            st = inputs(ctx.stats, mixer, LINEAR_WEIGHTS[param])
            mean = st["sum"].double() / max(float(st["n"]), 1.0)
            removed = tensor(mixer, param).double() * (~keep).double()
            values[bias] = tensor(mixer, bias).double() + removed @ mean
        return values

    def unit_scores(self, ctx, mixer, family):
        self.check_units(mixer, family)
        slot = out_proj_slot(family)
        fluct = self.channel_fluctuation(ctx, mixer)
        idx = slot.indices(torch.arange(family.count)).view(family.count, slot.span)
        return fluct[idx].sum(1)


@register
class OBS(Criterion):
    """Second-order OBS / SparseGPT: saliency w_ij² / [H⁻¹]_jj, and SparseGPT's reconstruction.

    H = XᵀX of the layer's calibration input + λ·mean(diag)·I, λ = ``damp`` (SparseGPT's 1%).
    Linear weights only (in_proj, x_proj, dt_proj, out_proj).

    * :meth:`score`: the increase of the layer's squared output error when w_ij alone is removed
      and its row optimally updated (saliency distributions, unit scores).
    * Group cuts (:meth:`prune`): SparseGPT, :func:`ssm_profile.criteria.sparsegpt.sparsegpt` — the
      mask is chosen per block of ``block`` input columns from w²/U_jj² on the already-updated
      weights (unstructured: across the block's rows; N:M per row) and the kept weights of each
      row absorb the error. Every pruned layer uses the Hessian of the DENSE model's inputs (all
      layers pruned in parallel, not SparseGPT's layer-by-layer pass on the pruned model).
    * Unit cuts (:meth:`reconstruct`): a linear whose whole input columns a unit removes (out_proj
      for channel/head/head_channel units, x_proj for Mamba-1 channels, dt_proj for dt_rank) gets
      the exact structured OBS update of its other columns; removed rows (outputs) have nothing to
      compensate them and are only zeroed. Any other mask (an element cut and a unit cut of one
      tensor, solved together) gets SparseGPT's updates for that fixed mask.
    """

    name = "obs"
    description = "SparseGPT: w²/[H⁻¹]_jj saliency, cuts update the kept weights (layer input Hessian)"
    needs = frozenset({"inputs", "hessians"})
    comparison = "row"
    reconstructs = True

    def __init__(self, damp: float = sparsegpt.DEFAULT_DAMP, block: int = sparsegpt.DEFAULT_BLOCK):
        self.damp = damp
        self.block = block
        self._cache: dict[str, torch.Tensor] = {}
        self._owner = None  # the CalibrationStats the cache belongs to

    def check(self, mixer, param):
        need_param(mixer, param)
        if param not in LINEAR_WEIGHTS:
            raise NotApplicable("OBS needs the input Hessian of a linear layer (in_proj, x_proj, dt_proj, "
                                "out_proj weights only)")

    def hessian(self, ctx, mixer, param: str) -> torch.Tensor:
        """XᵀX/n of ``param``'s layer input (float64, undamped)."""
        key = LINEAR_WEIGHTS[param]
        full = f"{mixer.path}.{key}"
        if full not in ctx.stats.hessians:
            raise KeyError(f"calibration statistics hold no Hessian for '{full}'; collect them with "
                           "needs={'hessians'}")
        n = float(inputs(ctx.stats, mixer, key)["n"])
        return ctx.stats.hessians[full].double() / max(n, 1.0)

    def inverse_diag(self, ctx, mixer, key: str) -> torch.Tensor:
        full = f"{mixer.path}.{key}"
        if self._owner is not ctx.stats:
            self._cache, self._owner = {}, ctx.stats
        if full not in self._cache:
            param = next(p for p, k in LINEAR_WEIGHTS.items() if k == key)
            inv = sparsegpt.inverse(sparsegpt.damped(self.hessian(ctx, mixer, param), self.damp))
            self._cache[full] = inv.diagonal().clamp_min(1e-30).float()
        return self._cache[full]

    def score(self, ctx, mixer, param):
        self.check(mixer, param)
        w = tensor(mixer, param)
        return w.square() / self.inverse_diag(ctx, mixer, LINEAR_WEIGHTS[param])[None, :]

    def prune(self, ctx, mixer, param, sparsity, nm):
        self.check(mixer, param)
        weight, keep = sparsegpt.sparsegpt(tensor(mixer, param), self.hessian(ctx, mixer, param), sparsity, nm,
                                           block=self.block, damp=self.damp)
        return keep, weight

    def reconstruct(self, ctx, mixer, keeps):
        values = {}
        for param, keep in keeps.items():
            if param not in LINEAR_WEIGHTS or bool(keep.all()):
                continue
            columns = ~keep.any(dim=0)
            rows = ~keep.any(dim=1)
            whole = torch.equal(keep, ~columns[None, :] & ~rows[:, None])  # whole rows and columns only
            if whole and not bool(columns.any()):
                continue  # rows only: other outputs cannot make up for a removed output
            w, h = tensor(mixer, param), self.hessian(ctx, mixer, param)
            if whole:
                new = sparsegpt.remove_columns(w, h, columns.nonzero().flatten(), self.damp)
                new[rows] = 0.0
            else:
                new, _ = sparsegpt.sparsegpt(w, h, keep=keep, block=self.block, damp=self.damp)
            values[param] = new.float()
        return values
