"""Gradient criteria: SNIP (first order) and Fisher-Taylor (second order, empirical Fisher).

Gradient statistics (``collect_stats(needs={'grads'})``): for gradient micro-batches b (by default
one calibration sequence each) g_b = ∇ of the mean token loss of b; ḡ = mean_b g_b and
E[g²] = mean_b g_b². Zeroing a weight is the step δ = -w.
"""

from __future__ import annotations


from ._common import expand_mask, fisher_diagonal, grads, need_param, tensor
from .base import Criterion, register


@register
class Snip(Criterion):
    """SNIP: |w·ḡ|, the size of the first-order Taylor term of zeroing one weight.

    It makes no loss prediction (``predicts_loss`` is off): at trained weights the first-order term
    Σ_S -ḡ·w is tiny and of either sign, while pruning's loss is second order. Measured on the
    default profiles of the embedded models, Spearman(Σ -ḡ·w, measured ΔL) was -0.56 (tiny-mamba)
    and -0.49 (tiny-mamba2) over 90 trials each; ``fisher`` (first + second order) predicts instead.
    """

    name = "snip"
    description = "|w·ḡ| (SNIP, first-order Taylor)"
    needs = frozenset({"grads"})

    def check(self, mixer, param):
        need_param(mixer, param)

    def score(self, ctx, mixer, param):
        self.check(mixer, param)
        g, _ = grads(ctx.stats, mixer, param)
        return (tensor(mixer, param) * g).abs()


@register
class Fisher(Criterion):
    """Fisher-Taylor: w²·E[g²] (second-order Taylor with the empirical Fisher as diagonal Hessian).

    ``predict_delta_loss`` of zeroing a set S:
        ΔL ≈ Σ_S -ḡ·w  +  ½ Σ_S F·w²,  F = per-token empirical Fisher (see ``fisher_diagonal``)
    The first-order term is kept (``first_order=True``, default): a calibration loss is not at a
    minimum of the pruned model's parameters, ḡ ≠ 0, and for small cuts the linear term is the
    larger one. ``first_order=False`` gives the pure second-order estimate ½ Σ_S E[g²]·w².
    """

    name = "fisher"
    description = "w²·E[g²] (Fisher-Taylor, empirical Fisher)"
    needs = frozenset({"grads"})
    predicts_loss = True

    def __init__(self, first_order: bool = True):
        self.first_order = first_order

    def check(self, mixer, param):
        need_param(mixer, param)

    def score(self, ctx, mixer, param):
        self.check(mixer, param)
        return tensor(mixer, param).square() * fisher_diagonal(ctx.stats, mixer, param)

    def predict_delta_loss(self, ctx, mixer, param, mask):
        self.check(mixer, param)
        w = tensor(mixer, param).double()
        pruned = ~expand_mask(mask, w.shape)
        g, _ = grads(ctx.stats, mixer, param)
        g, fisher = g.double(), fisher_diagonal(ctx.stats, mixer, param).double()
        delta = 0.5 * (fisher * w.square())[pruned].sum()
        if self.first_order:
            delta = delta + (-g * w)[pruned].sum()
        return float(delta)
