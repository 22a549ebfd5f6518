"""SSM-specific criteria: a controllability × observability (Gramian) proxy and the memory horizon.

Notation: A = -exp(A_log); dt the discretisation step (softplus); x the scan input; B, C the input
and output projections of the state. Mamba-1: channel c ∈ [0, E), state n ∈ [0, N). Mamba-2: head h
with its group g(h) = h // (nH / G), state n ∈ [0, N) of that group, channel p ∈ [0, P) of the head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..arch import MAMBA1
from ._common import need_param
from .base import Criterion, NotApplicable, register

_EPS = 1e-12


@register
class SSMGramian(Criterion):
    """Controllability × observability of each state (a balanced-truncation proxy).

    For a state driven by u_t = dt_t·x_t·B_t with decay a = exp(dt·A) < 1, its stationary energy is
    the geometric sum E[u²]/(1 - a²); what the output sees of it is weighted by E[C²]. With
    per-token averages (E over calibration tokens):

    Mamba-1, channel c, state n:
        G[c, n] = E[dt_c²·x_c²] · E[B_n²] / (1 - exp(2·E[dt_c]·A[c, n])) · E[C_n²]
    Mamba-2, head h, state n (of group g(h)), channel p of h:
        G[h, p, n] = E[dt_h²·x_hp²] · E[B_gn²] / (1 - exp(2·E[dt_h]·A_h)) · E[C_gn²]

    Element scores: ``A_log`` only (Mamba-1 G[c, n]; Mamba-2 Σ_{p,n} G[h, p, n]).
    Units: Mamba-1 state n = Σ_c G[c, n], channel c = Σ_n G[c, n]; Mamba-2 state (g, n) =
    Σ_{h in g, p} G, head h = Σ_{p,n} G, head_channel (h, p) = Σ_n G, group = Σ over its heads.
    dt_rank units and all other tensors: NotApplicable.
    """

    name = "ssm_gramian"
    description = "controllability × observability of each SSM state (E[dt²x²]E[B²]/(1-e^{2dtA})·E[C²])"
    needs = frozenset({"ssm"})

    def check(self, mixer, param):
        need_param(mixer, param)
        if param != "A_log":
            raise NotApplicable("the Gramian scores SSM states (A_log and state/channel/head units), not "
                                "other tensors")

    def check_units(self, mixer, family):
        if family.kind == "dt_rank":
            raise NotApplicable("dt_rank directions own no state; the Gramian says nothing about them")

    def gramian(self, ctx, mixer) -> torch.Tensor:
        """Mamba-1: (E, N); Mamba-2: (nH, P, N), float64."""
        st = ctx.stats.ssm.get(mixer.path)
        if st is None:
            raise KeyError(f"calibration statistics hold no SSM statistics for '{mixer.path}'; collect them "
                           "with needs={'ssm'}")
        n = float(st["n"])
        dt = st["dt_sum"].double() / n
        e_in = st["dt2x2_sum"].double() / n
        b2 = st["B2_sum"].double() / n
        c2 = st["C2_sum"].double() / n
        A = -torch.exp(mixer.param("A_log").detach().double().cpu())
        if mixer.kind == MAMBA1:
            denom = (-torch.expm1(2 * dt[:, None] * A)).clamp_min(_EPS)  # 1 - exp(2 dt A)
            return e_in[:, None] * b2[None, :] / denom * c2[None, :]
        H, P, N, G = mixer.num_heads, mixer.head_dim, mixer.state_size, mixer.n_groups
        group = torch.arange(H) // (H // G)
        b2, c2 = b2.view(G, N)[group], c2.view(G, N)[group]  # (H, N)
        denom = (-torch.expm1(2 * dt * A)).clamp_min(_EPS)  # (H,)
        return e_in.view(H, P)[:, :, None] * (b2 * c2 / denom[:, None])[:, None, :]

    def score(self, ctx, mixer, param):
        self.check(mixer, param)
        g = self.gramian(ctx, mixer)
        return (g if mixer.kind == MAMBA1 else g.sum(dim=(1, 2))).float()

    def unit_scores(self, ctx, mixer, family):
        self.check_units(mixer, family)
        g = self.gramian(ctx, mixer)
        kind = family.kind
        if mixer.kind == MAMBA1:
            if kind == "state":
                return g.sum(0)
            if kind == "channel":
                return g.sum(1)
        else:
            H, G = mixer.num_heads, mixer.n_groups
            if kind == "head":
                return g.sum(dim=(1, 2))
            if kind == "head_channel":
                return g.sum(2).reshape(-1)
            if kind == "state":
                return g.sum(1).view(G, H // G, -1).sum(1).reshape(-1)
            if kind == "group":
                return g.sum(dim=(1, 2)).view(G, H // G).sum(1)
        raise NotApplicable(f"ssm_gramian does not score {kind} units")


@register
class Horizon(Criterion):
    """Memory horizon (data-free): 1 / (softplus(dt_bias)·|A|) tokens, the decay time constant.

    dt_bias = ``dt_proj.bias`` (Mamba-1, per channel) or ``dt_bias`` (Mamba-2, per head).
    Element scores: ``A_log`` only. Units: the mean horizon of the unit's (channel, state) or head
    entries (Mamba-1 state n: mean over c; channel c: mean over n; Mamba-2 head h and its
    head_channels: the head's horizon; state (g, n) and group g: mean over the group's heads).
    NotApplicable: dt_rank units and all other tensors.
    """

    name = "horizon"
    description = "memory horizon 1/(softplus(dt_bias)·|A|) in tokens (data-free)"

    def check(self, mixer, param):
        need_param(mixer, param)
        if param != "A_log":
            raise NotApplicable("the memory horizon is a property of the decay A (A_log) only")

    def check_units(self, mixer, family):
        if family.kind == "dt_rank":
            raise NotApplicable("dt_rank directions have no decay, hence no horizon")

    def horizon(self, mixer) -> torch.Tensor:
        """Mamba-1: (E, N); Mamba-2: (nH,), float64."""
        A = torch.exp(mixer.param("A_log").detach().double().cpu())  # |A|
        if mixer.kind == MAMBA1:
            bias = mixer.module.dt_proj.bias
            b = bias.detach().double().cpu() if bias is not None else torch.zeros(A.shape[0], dtype=A.dtype)
            return 1.0 / (F.softplus(b)[:, None] * A).clamp_min(_EPS)
        return 1.0 / (F.softplus(mixer.param("dt_bias").detach().double().cpu()) * A).clamp_min(_EPS)

    def score(self, ctx, mixer, param):
        self.check(mixer, param)
        return self.horizon(mixer).float()

    def unit_scores(self, ctx, mixer, family):
        self.check_units(mixer, family)
        h = self.horizon(mixer)
        kind = family.kind
        if mixer.kind == MAMBA1:
            if kind == "state":
                return h.mean(0)
            if kind == "channel":
                return h.mean(1)
        else:
            H, P, N, G = mixer.num_heads, mixer.head_dim, mixer.state_size, mixer.n_groups
            if kind == "head":
                return h
            if kind == "head_channel":
                return h.repeat_interleave(P)
            per_group = h.view(G, H // G).mean(1)
            if kind == "state":
                return per_group.repeat_interleave(N)
            if kind == "group":
                return per_group
        raise NotApplicable(f"horizon does not score {kind} units")
