"""SSM-specific criteria: the controllability × observability (Gramian) proxy, the stationary output
energy and the memory horizon.

Notation: A = -exp(A_log); dt the discretisation step (softplus); x the scan input; B, C the input
and output projections of the state. Mamba-1: channel c ∈ [0, E), state n ∈ [0, N). Mamba-2: head h
with its group g(h) = h // (nH / G), state n ∈ [0, N) of that group, channel p ∈ [0, P) of the head.
Zamba (v1)'s multi-head Mamba-1: channel c = h·P + p as in Mamba-1; its ``channel`` unit p sums or
averages over every head's channel p, its ``head`` unit over the head's channels (:func:`_mamba1_unit`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model.arch import GATED_DELTA, KDA, MAMBA1
from ._common import need_param
from .base import Criterion, NotApplicable, register

_EPS = 1e-12
_NOT_A_SCAN = ("{name} is defined on the selective scan's diagonal states (dt, B, C); a {what} mixer's state "
               "is a delta-rule key x value memory with no such states")
_DELTA = {GATED_DELTA: "Gated DeltaNet", KDA: "Kimi delta attention (KDA)"}


def _mamba1_unit(mixer, g: torch.Tensor, kind: str, mean: bool = False) -> torch.Tensor | None:
    """A Mamba-1 (E, N) value reduced to ``kind`` units (sum, or mean): state n over channels; channel c
    over states, or for Zamba's heads channel p over heads and states, head h over its channels and states."""
    reduce = torch.mean if mean else torch.sum
    if kind == "state":
        return reduce(g, dim=0)
    if not mixer.multi_head:
        return reduce(g, dim=1) if kind == "channel" else None
    per_head = g.view(mixer.num_heads, mixer.head_dim, -1)
    dims = {"channel": (0, 2), "head": (1, 2)}.get(kind)
    return None if dims is None else reduce(per_head, dim=dims)


class _StateEnergy(Criterion):
    """Shared by the SSM state criteria: a per-(channel, state) / (head, channel, state) value G summed
    into units. Element scores: ``A_log`` only (Mamba-1 G[c, n]; Mamba-2 Σ_{p,n} G[h, p, n]).
    Units: Mamba-1 state n = Σ_c G[c, n], channel c = Σ_n G[c, n]; Mamba-2 state (g, n) =
    Σ_{h in g, p} G, head h = Σ_{p,n} G, head_channel (h, p) = Σ_n G, group = Σ over its heads.
    dt_rank units and all other tensors: NotApplicable."""

    needs = frozenset({"ssm"})

    def check(self, mixer, param):
        need_param(mixer, param)
        if mixer.kind in _DELTA:
            raise NotApplicable(_NOT_A_SCAN.format(name=self.name, what=_DELTA[mixer.kind]))
        if param != "A_log":
            raise NotApplicable(f"{self.name} scores SSM states (A_log and state/channel/head units), not "
                                "other tensors")

    def check_units(self, mixer, family):
        if mixer.kind in _DELTA:
            raise NotApplicable(_NOT_A_SCAN.format(name=self.name, what=_DELTA[mixer.kind]))
        if family.kind == "dt_rank":
            raise NotApplicable(f"dt_rank directions own no state; {self.name} says nothing about them")

    def gramian(self, ctx, mixer) -> torch.Tensor:
        """Mamba-1: (E, N); Mamba-2: (nH, P, N), float64."""
        raise NotImplementedError

    def score(self, ctx, mixer, param):
        self.check(mixer, param)
        g = self.gramian(ctx, mixer)
        return (g.view(mixer.param(param).shape) if mixer.kind == MAMBA1 else g.sum(dim=(1, 2))).float()

    def unit_scores(self, ctx, mixer, family):
        self.check_units(mixer, family)
        g = self.gramian(ctx, mixer)
        kind = family.kind
        if mixer.kind == MAMBA1:
            scores = _mamba1_unit(mixer, g, kind)
            if scores is not None:
                return scores
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
        raise NotApplicable(f"{self.name} does not score {kind} units")


def _signals(ctx, mixer) -> dict[str, torch.Tensor]:
    """Per-token means of the SSM statistics (dt, dt², dt²x², B², C²) and A = -exp(A_log), float64."""
    st = ctx.stats.ssm.get(mixer.path)
    if st is None:
        raise KeyError(f"calibration statistics hold no SSM statistics for '{mixer.path}'; collect them "
                       "with needs={'ssm'}")
    n = float(st["n"])
    means = {k[:-4]: st[k].double() / n for k in ("dt_sum", "dt2_sum", "dt2x2_sum", "B2_sum", "C2_sum") if k in st}
    A_log = mixer.param("A_log").detach().double().cpu()
    means["A"] = -torch.exp(A_log.reshape(-1, A_log.shape[-1]) if mixer.kind == MAMBA1 else A_log)  # Zamba: (E, N)
    return means


def _one_minus_a2(dt: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """1 - a² with a = exp(E[dt]·A), the state's decay per step (clamped away from 0)."""
    return (-torch.expm1(2 * dt * A)).clamp_min(_EPS)


def _per_head(mixer, b2: torch.Tensor, c2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba-2: per-(group, state) B²/C² means as (nH, N), each head reading its group's."""
    H, N, G = mixer.num_heads, mixer.state_size, mixer.n_groups
    group = torch.arange(H) // (H // G)
    return b2.view(G, N)[group], c2.view(G, N)[group]


@register
class SSMGramian(_StateEnergy):
    """Controllability × observability of each state: the Hankel singular value proxy of balanced
    truncation for a diagonal SSM, sqrt(Wc_ii·Wo_ii).

    State i = (channel c, state n) (Mamba-1) or (head h, state n) (Mamba-2) with decay
    a = exp(E[dt]·A) and, averaged over calibration tokens,
        Wc = E[dt²]·E[B_n²] / (1 - a²)      (controllability: energy the input matrix dt·B puts in)
        Wo = E[C_n²] / (1 - a²)             (observability: energy C reads out)
        G = sqrt(Wc·Wo) = sqrt(E[dt²]·E[B_n²]·E[C_n²]) / (1 - a²)
    (E[dt²B²] taken as E[dt²]·E[B²]). Mamba-2: G[h, p, n] = G[h, n] for every channel p of the head.
    Unlike ``ssm_energy`` it does not weigh a state by the energy of the input x it is fed.
    """

    name = "ssm_gramian"
    description = "Hankel singular value proxy sqrt(Wc·Wo) of each SSM state (controllability × observability)"

    def gramian(self, ctx, mixer) -> torch.Tensor:
        s = _signals(ctx, mixer)
        if "dt2" not in s:
            raise KeyError(f"the SSM statistics of '{mixer.path}' predate dt2_sum; collect them again")
        if mixer.kind == MAMBA1:
            return (s["dt2"][:, None] * s["B2"][None, :] * s["C2"][None, :]).sqrt() / _one_minus_a2(
                s["dt"][:, None], s["A"])
        b2, c2 = _per_head(mixer, s["B2"], s["C2"])
        g = (s["dt2"][:, None] * b2 * c2).sqrt() / _one_minus_a2(s["dt"], s["A"])[:, None]  # (nH, N)
        return g[:, None, :].expand(mixer.num_heads, mixer.head_dim, mixer.state_size)


@register
class SSMEnergy(_StateEnergy):
    """Stationary output energy of each state: what C reads of the state's energy when it is fed its
    input u_t = dt_t·x_t·B_t with decay a = exp(dt·A) (the geometric sum E[u²]/(1 - a²), weighted by
    E[C²]). Formerly (mis)named ``ssm_gramian``; run directories from then hold its trials under that name.

    Mamba-1, channel c, state n:
        G[c, n] = E[dt_c²·x_c²] · E[B_n²] / (1 - exp(2·E[dt_c]·A[c, n])) · E[C_n²]
    Mamba-2, head h, state n (of group g(h)), channel p of h:
        G[h, p, n] = E[dt_h²·x_hp²] · E[B_gn²] / (1 - exp(2·E[dt_h]·A_h)) · E[C_gn²]
    """

    name = "ssm_energy"
    description = "stationary output energy of each SSM state (E[dt²x²]E[B²]/(1-e^{2dtA})·E[C²])"

    def gramian(self, ctx, mixer) -> torch.Tensor:
        s = _signals(ctx, mixer)
        if mixer.kind == MAMBA1:
            return s["dt2x2"][:, None] * s["B2"][None, :] / _one_minus_a2(s["dt"][:, None], s["A"]) * s["C2"][None, :]
        H, P = mixer.num_heads, mixer.head_dim
        b2, c2 = _per_head(mixer, s["B2"], s["C2"])
        return s["dt2x2"].view(H, P)[:, :, None] * (b2 * c2 / _one_minus_a2(s["dt"], s["A"])[:, None])[:, None, :]


@register
class Horizon(Criterion):
    """Memory horizon (data-free): 1 / (softplus(dt_bias)·|A|) tokens, the decay time constant.

    dt_bias = ``dt_proj.bias`` (Mamba-1, per channel) or ``dt_bias`` (Mamba-2, per head).
    Element scores: ``A_log`` only. Units: the mean horizon of the unit's (channel, state) or head
    entries (Mamba-1 state n: mean over c; channel c: mean over n; Mamba-2 head h and its
    head_channels: the head's horizon; state (g, n) and group g: mean over the group's heads).
    Gated DeltaNet: 1 / (1 - exp(g)) per value head at a = 0 (the analysis' operating point); value
    heads their own, key heads the mean of their value heads. KDA: 1 / (1 - exp(g)) per head and key
    channel at f = 0; ``A_log`` and heads the mean over the head's key channels, key channels the mean
    over heads.
    NotApplicable: dt_rank units, Gated DeltaNet channels and KDA value channels (every key channel's
    decay applies to each), KDA low-rank directions, and all other tensors.
    """

    name = "horizon"
    description = "memory horizon 1/(softplus(dt_bias)·|A|) in tokens (data-free)"

    def check(self, mixer, param):
        need_param(mixer, param)
        if param != ("forget_gate.A_log" if mixer.kind == KDA else "A_log"):
            raise NotApplicable("the memory horizon is a property of the decay A (A_log) only")

    def check_units(self, mixer, family):
        if family.kind == "dt_rank":
            raise NotApplicable("dt_rank directions have no decay, hence no horizon")
        if mixer.kind == KDA and family.kind in ("value_channel", "decay_rank", "gate_rank"):
            raise NotApplicable(f"a KDA {family.kind.replace('_', ' ')} has no decay of its own (the decay is per "
                                "head and key channel)")
        if mixer.kind == GATED_DELTA and family.kind in ("value_channel", "key_channel"):
            raise NotApplicable("a Gated DeltaNet channel runs in every head, under every head's decay: it has "
                                "no horizon of its own")

    def horizon(self, mixer) -> torch.Tensor:
        """Mamba-1: (E, N); Mamba-2, Gated DeltaNet: (nH,); KDA: (heads, d), float64."""
        if mixer.kind == KDA:
            A = torch.exp(mixer.param("forget_gate.A_log").detach().double().cpu().reshape(-1))
            bias = mixer.param("forget_gate.dt_bias").detach().double().cpu().view(A.shape[0], -1)
            return 1.0 / (-torch.expm1(-A[:, None] * F.softplus(bias))).clamp_min(_EPS)
        A = torch.exp(mixer.param("A_log").detach().double().cpu())  # |A|
        if mixer.kind == GATED_DELTA:
            g = -A * F.softplus(mixer.param("dt_bias").detach().double().cpu())
            return 1.0 / (-torch.expm1(g)).clamp_min(_EPS)
        if mixer.kind == MAMBA1:
            A = A.reshape(-1, A.shape[-1])  # Zamba: (heads, head_dim, N) -> (E, N)
            bias = mixer.module.dt_proj_bias if mixer.multi_head else mixer.module.dt_proj.bias
            b = bias.detach().double().cpu().reshape(-1) if bias is not None else torch.zeros(A.shape[0], dtype=A.dtype)
            return 1.0 / (F.softplus(b)[:, None] * A).clamp_min(_EPS)
        return 1.0 / (F.softplus(mixer.param("dt_bias").detach().double().cpu()) * A).clamp_min(_EPS)

    def score(self, ctx, mixer, param):
        self.check(mixer, param)
        if mixer.kind == KDA:  # A_log (1, 1, heads, 1): the mean over each head's key channels
            return self.horizon(mixer).mean(1).view(mixer.param(param).shape).float()
        return self.horizon(mixer).view(mixer.param(param).shape).float()

    def unit_scores(self, ctx, mixer, family):
        self.check_units(mixer, family)
        h = self.horizon(mixer)
        kind = family.kind
        if mixer.kind == KDA:
            return h.mean(1) if kind == "head" else h.mean(0)  # head; key channel
        if kind == "value_head":
            return h
        if kind == "key_head":
            return h.view(mixer.num_k_heads, -1).mean(1)
        if mixer.kind == MAMBA1:
            scores = _mamba1_unit(mixer, h, kind, mean=True)
            if scores is not None:
                return scores
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
