"""Architecture adapters: where the SSM mixers of a model are, and how their tensors couple.

Mixers are found by what they hold (a direct ``A_log`` parameter beside ``in_proj`` and
``out_proj``), not by attribute name, so Mamba, Mamba-2, FalconMamba and the Mamba layers of
hybrids (Jamba, Zamba, Zamba2, Bamba, NemotronH, ...) are all seen. ``A_log`` of rank 2 marks a
Mamba-1 mixer, rank 1 a Mamba-2 mixer, rank 3 (heads, head channels, states) beside ``x_proj_weight`` and
``dt_proj_weight`` parameters Zamba (v1)'s multi-head Mamba-1 mixer (kind ``mamba1`` too: independent
heads, x and z rows interleaved in ``in_proj``; see :func:`_zamba_units`). Gated DeltaNet mixers
(Qwen3-Next, Qwen3.5) have no ``in_proj``: ``A_log`` and ``dt_bias`` per value head beside ``conv1d``,
a gated ``norm``, ``out_proj`` and either the packed ``in_proj_qkvz``/``in_proj_ba`` or the split ``in_proj_qkv``/``_z``/``_b``/``_a``.
Kimi Linear's delta attention (kind ``kda``, :mod:`ssm_profile.model.kda`) keeps its decay in a
``forget_gate`` beside ``q_proj``/``k_proj``/``v_proj``, ``conv1d``, ``b_proj``, ``g_a_proj``/``g_b_proj``,
``o_norm`` and ``o_proj``.

A *unit family* (Torch-Pruning's dependency group, made first-class) is a kind of structural
unit (channel, state, head, ...) and the list of tensor slices that one unit touches. Every
structured operation (scoring, zeroing, slicing) goes through :meth:`UnitFamily.indices`, so
coupled tensors always share one index set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from . import kda as _kda
from .kda import KDA
from .units import Slot, UnitFamily, and_biases as _and_biases

MAMBA1 = "mamba1"
MAMBA2 = "mamba2"
GATED_DELTA = "gated_delta"
PACKED = ("in_proj_qkvz", "in_proj_ba")  # Qwen3-Next: rows grouped per key head
SPLIT = ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a")  # Qwen3.5

# Parameter groups in display order; a mixer has the ones that exist in it.
GROUP_ORDER = ("in_proj", *PACKED, *SPLIT, "q_proj", "k_proj", "v_proj", "conv1d", "x_proj", "dt_proj", "f_a_proj",
               "f_b_proj", "dt_bias", "A_log", "D", "b_proj", "g_a_proj", "g_b_proj", "norm", "o_norm", "out_proj",
               "o_proj")


@dataclass
class MixerInfo:
    """A view of one Mamba mixer: its dimensions, parameter groups and unit families."""

    index: int  # ordinal among the model's SSM mixers
    layer: int  # index of the decoder layer that holds it
    path: str  # module path, e.g. "backbone.layers.3.mixer"
    module: nn.Module = field(repr=False)
    kind: str

    # --- dimensions, read from tensor shapes so converted or sliced models are read correctly
    @property
    def out_name(self) -> str:
        """The output projection's name: ``o_proj`` in KDA mixers, ``out_proj`` in the others."""
        return "o_proj" if self.kind == KDA else "out_proj"

    @property
    def out_linear(self) -> nn.Linear:
        return getattr(self.module, self.out_name)

    @property
    def hidden_size(self) -> int:
        return self.out_linear.weight.shape[0]

    @property
    def intermediate_size(self) -> int:
        """The output projection's input width (KDA: heads x head_dim)."""
        return self.out_linear.weight.shape[1]

    @property
    def conv_kernel(self) -> int:
        return self.module.conv1d.weight.shape[-1]

    @property
    def multi_head(self) -> bool:
        """Zamba (v1)'s Mamba-1 mixer: per-head ``x_proj_weight``/``dt_proj_weight`` and an A_log of rank 3."""
        return self.kind == MAMBA1 and "x_proj_weight" in self.module._parameters

    @property
    def state_size(self) -> int:
        """Mamba: SSM states per channel; Gated DeltaNet: the state's key rows (head_k_dim); KDA: head_dim."""
        if self.kind == MAMBA1:
            return self.module.A_log.shape[-1]
        if self.kind == GATED_DELTA:
            return self.head_k_dim
        if self.kind == KDA:
            return self.head_dim
        return int(self.module.ssm_state_size)

    @property
    def dt_rank(self) -> int:
        if self.multi_head:
            return self.module.dt_proj_weight.shape[-1]
        return self.module.dt_proj.weight.shape[1] if self.kind == MAMBA1 else 0

    @property
    def num_heads(self) -> int:
        if self.kind == KDA:
            return _kda.sizes(self.module)[0]
        return self.module.A_log.shape[0] if self.kind == MAMBA2 or self.multi_head else 0

    @property
    def head_dim(self) -> int:
        if self.kind == KDA:
            return _kda.sizes(self.module)[1]
        return self.intermediate_size // self.num_heads if self.kind == MAMBA2 or self.multi_head else 0

    @property
    def n_groups(self) -> int:
        return int(getattr(self.module, "n_groups", 1)) if self.kind == MAMBA2 else 1

    @property
    def conv_channels(self) -> int:
        return self.module.conv1d.weight.shape[0]

    # --- Gated DeltaNet sizes: from the tensors, except the key-head count (a field of the module)
    @property
    def packed(self) -> bool:
        """Qwen3-Next's in_proj_qkvz / in_proj_ba (rows grouped per key head) rather than Qwen3.5's split ones."""
        return self.kind == GATED_DELTA and hasattr(self.module, "in_proj_qkvz")

    @property
    def num_v_heads(self) -> int:
        return self.module.A_log.shape[0] if self.kind == GATED_DELTA else 0

    @property
    def head_v_dim(self) -> int:
        return self.module.norm.weight.shape[0] if self.kind == GATED_DELTA else 0

    @property
    def num_k_heads(self) -> int:
        return int(self.module.num_k_heads) if self.kind == GATED_DELTA else 0

    @property
    def key_dim(self) -> int:
        """num_k_heads x head_k_dim: the width of q and of k."""
        return (self.conv_channels - self.intermediate_size) // 2 if self.kind == GATED_DELTA else 0

    @property
    def head_k_dim(self) -> int:
        return self.key_dim // self.num_k_heads if self.kind == GATED_DELTA else 0

    def conv_input_rows(self) -> torch.Tensor:
        """Gated DeltaNet: the row of the first input projection (in_proj_qkvz / in_proj_qkv) that
        feeds each conv channel; the conv runs over [q, k, v], each head after head."""
        if not self.packed:
            return torch.arange(self.conv_channels)
        Kh, dk, dv, r = self.num_k_heads, self.head_k_dim, self.head_v_dim, self.num_v_heads // self.num_k_heads
        block = torch.arange(Kh)[:, None] * (2 * dk + 2 * r * dv)
        q = (block + torch.arange(dk)).reshape(-1)
        v = (block + 2 * dk + torch.arange(r * dv)).reshape(-1)
        return torch.cat([q, q + dk, v])

    def dims(self) -> dict[str, int]:
        if self.kind == KDA:
            return _kda.dims(self)
        if self.kind == GATED_DELTA:
            return {"hidden_size": self.hidden_size, "num_k_heads": self.num_k_heads, "num_v_heads": self.num_v_heads,
                    "head_k_dim": self.head_k_dim, "head_v_dim": self.head_v_dim, "conv_kernel": self.conv_kernel}
        d = {"hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size,
             "state_size": self.state_size, "conv_kernel": self.conv_kernel}
        if self.multi_head:
            d.update(dt_rank=self.dt_rank, num_heads=self.num_heads, head_dim=self.head_dim)
        elif self.kind == MAMBA1:
            d["dt_rank"] = self.dt_rank
        else:
            d.update(num_heads=self.num_heads, head_dim=self.head_dim, n_groups=self.n_groups)
        return d

    # --- parameters
    @property
    def params(self) -> dict[str, nn.Parameter]:
        return dict(self.module.named_parameters())

    def param(self, name: str) -> nn.Parameter:
        """One parameter by its name in the mixer (``KeyError`` if absent); no dict of all of them."""
        try:
            return self.module.get_parameter(name)
        except AttributeError as err:
            raise KeyError(name) from err

    def has(self, name: str) -> bool:
        try:
            self.module.get_parameter(name)
        except AttributeError:
            return False
        return True

    def full_name(self, param: str) -> str:
        return f"{self.path}.{param}"

    def groups(self) -> dict[str, list[str]]:
        """Parameter group name -> parameter names (relative). Every mixer parameter is in one group."""
        out: dict[str, list[str]] = {}
        for name in self.params:
            out.setdefault(self._group_of(name), []).append(name)
        order = {g: i for i, g in enumerate(GROUP_ORDER)}
        return dict(sorted(out.items(), key=lambda kv: order.get(kv[0], len(order))))

    def _group_of(self, name: str) -> str:
        if self.kind == KDA:
            return _kda.group_of(name)
        first = name.split(".")[0]
        return _HEAD_PARAM_GROUPS.get(first, first) if self.multi_head else first

    def sub_blocks(self) -> dict[str, list[tuple[str, int, int]]]:
        """Row blocks inside fused tensors: group -> [(block name, start, stop)] along dim 0."""
        if self.kind == GATED_DELTA:
            return _gated_delta_blocks(self)
        if self.kind == KDA:
            return _kda.blocks(self)
        E, N = self.intermediate_size, self.state_size
        if self.multi_head:  # x/z rows interleaved, dt/B/C blocks along x_proj_weight's dim 1: no row blocks
            return {}
        if self.kind == MAMBA1:
            R = self.dt_rank
            return {"in_proj": [("x", 0, E), ("z", E, 2 * E)],
                    "x_proj": [("dt", 0, R), ("B", R, R + N), ("C", R + N, R + 2 * N)]}
        G, H = self.n_groups, self.num_heads
        return {
            "in_proj": [("z", 0, E), ("x", E, 2 * E), ("B", 2 * E, 2 * E + G * N),
                        ("C", 2 * E + G * N, 2 * E + 2 * G * N), ("dt", 2 * E + 2 * G * N, 2 * E + 2 * G * N + H)],
            "conv1d": [("x", 0, E), ("B", E, E + G * N), ("C", E + G * N, E + 2 * G * N)],
        }

    # --- coupled units
    def unit_families(self) -> dict[str, UnitFamily]:
        if self.kind == GATED_DELTA:
            return _gated_delta_units(self)
        if self.kind == KDA:
            return _kda.units(self)
        if self.multi_head:
            return _zamba_units(self)
        return _mamba1_units(self) if self.kind == MAMBA1 else _mamba2_units(self)

    def unit_family(self, kind: str) -> UnitFamily:
        families = self.unit_families()
        if kind not in families:
            raise KeyError(f"{self.kind} mixers have no '{kind}' units (they have {', '.join(families)})")
        return families[kind]


def _optional(m: MixerInfo, slots: list[Slot]) -> tuple[Slot, ...]:
    """The slots whose parameter the mixer has (biases and norms that only some checkpoints carry)."""
    return tuple(s for s in slots if m.has(s.param))


def _mamba1_units(m: MixerInfo) -> dict[str, UnitFamily]:
    E, N, R = m.intermediate_size, m.state_size, m.dt_rank
    channel = _optional(m, [
        Slot("in_proj.weight", 0, 0), Slot("in_proj.weight", 0, E), Slot("in_proj.bias", 0, 0),
        Slot("in_proj.bias", 0, E), Slot("conv1d.weight", 0, 0), Slot("conv1d.bias", 0, 0),
        Slot("x_proj.weight", 1, 0), Slot("dt_proj.weight", 0, 0), Slot("dt_proj.bias", 0, 0),
        Slot("A_log", 0, 0), Slot("D", 0, 0), Slot("out_proj.weight", 1, 0),
    ])
    state = _optional(m, [
        Slot("x_proj.weight", 0, R), Slot("x_proj.weight", 0, R + N), Slot("A_log", 1, 0),
        Slot("b_layernorm.weight", 0, 0), Slot("c_layernorm.weight", 0, 0),  # Jamba
    ])
    dt_rank = _optional(m, [Slot("x_proj.weight", 0, 0), Slot("dt_proj.weight", 1, 0),
                            Slot("dt_layernorm.weight", 0, 0)])
    return {
        "channel": UnitFamily("channel", E, channel, "inner channel c: x and z rows of in_proj, conv "
                              "filter, x_proj column, dt_proj row, A_log row, D, out_proj column"),
        "state": UnitFamily("state", N, state, "SSM state n: B and C rows of x_proj, A_log column",
                            normalised=_norm_over(m, ("b_layernorm", "c_layernorm"), "B and C over the states")),
        "dt_rank": UnitFamily("dt_rank", R, dt_rank, "dt low-rank direction r: x_proj dt row, dt_proj column",
                              normalised=_norm_over(m, ("dt_layernorm",), "dt over its rank")),
    }


# Zamba's per-head raw parameters, shown in the groups of the Mamba-1 modules they replace
_HEAD_PARAM_GROUPS = {"x_proj_weight": "x_proj", "dt_proj_weight": "dt_proj", "dt_proj_bias": "dt_proj"}


def _zamba_units(m: MixerInfo) -> dict[str, UnitFamily]:
    """Zamba (v1): H independent Mamba-1 heads of P channels. Inner channel c = h*P + p owns in_proj rows
    2c (x) and 2c+1 (z), conv channel c, out_proj column c and index [h, ..., p] of the per-head tensors
    (x_proj_weight (H, R+2N, P), dt_proj_weight (H, P, R), dt_proj_bias and D (H, P), A_log (H, P, N)).
    Those tensors share one head dim, so a ``channel`` unit is channel p of every head (a cut keeps
    the same channels in every head, as the config's one head dim needs); ``state`` n and ``dt_rank``
    r are likewise shared by all heads; a ``head`` takes all its channels."""
    H, P, N, R = m.num_heads, m.head_dim, m.state_size, m.dt_rank
    out = "out_proj.weight"
    channel = _and_biases([Slot("in_proj.weight", 0, 0, 2, repeats=H, every=2 * P),
                           Slot("conv1d.weight", 0, 0, 1, repeats=H, every=P)])
    channel += [Slot("x_proj_weight", 2, 0), Slot("dt_proj_weight", 1, 0), Slot("dt_proj_bias", 1, 0),
                Slot("A_log", 1, 0), Slot("D", 1, 0), Slot(out, 1, 0, 1, repeats=H, every=P)]
    head = _and_biases([Slot("in_proj.weight", 0, 0, 2 * P), Slot("conv1d.weight", 0, 0, P)])
    head += [Slot(name, 0, 0) for name in ("x_proj_weight", "dt_proj_weight", "dt_proj_bias", "A_log", "D")]
    head += [Slot(out, 1, 0, P)]
    state = [Slot("x_proj_weight", 1, R), Slot("x_proj_weight", 1, R + N), Slot("A_log", 2, 0)]
    dt_rank = [Slot("x_proj_weight", 1, 0), Slot("dt_proj_weight", 2, 0)]
    return {
        "channel": UnitFamily("channel", P, _optional(m, channel), "channel p of every head: x and z rows of "
                              "in_proj (interleaved), conv channel, x_proj column, dt_proj row and bias, A_log "
                              "row, D, out_proj column"),
        "state": UnitFamily("state", N, _optional(m, state), "SSM state n of every head: B and C rows of "
                            "x_proj, A_log column"),
        "dt_rank": UnitFamily("dt_rank", R, _optional(m, dt_rank), "dt low-rank direction r of every head: "
                              "x_proj dt row, dt_proj column"),
        "head": UnitFamily("head", H, _optional(m, head), "head h: its x and z rows of in_proj, conv channels, "
                           "x_proj, dt_proj and its bias, A_log, D, out_proj columns"),
    }


def _norm_over(m: MixerInfo, norms: tuple[str, ...], what: str) -> str:
    """Why slicing changes a mixer that RMS-normalises ``what`` (FalconMamba, Jamba), else ""."""
    if not any(hasattr(m.module, n) for n in norms):
        return ""
    return (f"the mixer RMS-normalises {what}: a zeroed unit still counts in the mean, a sliced one "
            "does not, so slicing would change the model")


def _mamba2_units(m: MixerInfo) -> dict[str, UnitFamily]:
    E, N, H, P, G = m.intermediate_size, m.state_size, m.num_heads, m.head_dim, m.n_groups
    dt0 = 2 * E + 2 * G * N
    head = _optional(m, [
        Slot("in_proj.weight", 0, 0, P), Slot("in_proj.weight", 0, E, P), Slot("in_proj.weight", 0, dt0, 1),
        Slot("in_proj.bias", 0, 0, P), Slot("in_proj.bias", 0, E, P), Slot("in_proj.bias", 0, dt0, 1),
        Slot("conv1d.weight", 0, 0, P), Slot("conv1d.bias", 0, 0, P), Slot("dt_bias", 0, 0, 1),
        Slot("A_log", 0, 0, 1), Slot("D", 0, 0, 1), Slot("norm.weight", 0, 0, P), Slot("out_proj.weight", 1, 0, P),
    ])
    head_channel = _optional(m, [
        Slot("in_proj.weight", 0, 0), Slot("in_proj.weight", 0, E), Slot("in_proj.bias", 0, 0),
        Slot("in_proj.bias", 0, E), Slot("conv1d.weight", 0, 0), Slot("conv1d.bias", 0, 0),
        Slot("norm.weight", 0, 0), Slot("out_proj.weight", 1, 0),
    ])
    # State unit u = g*N + n: the B and C rows of group g (in_proj and conv channels).
    state = _optional(m, [
        Slot("in_proj.weight", 0, 2 * E), Slot("in_proj.weight", 0, 2 * E + G * N),
        Slot("in_proj.bias", 0, 2 * E), Slot("in_proj.bias", 0, 2 * E + G * N),
        Slot("conv1d.weight", 0, E), Slot("conv1d.weight", 0, E + G * N),
        Slot("conv1d.bias", 0, E), Slot("conv1d.bias", 0, E + G * N),
    ])
    hpg = H // G
    group = _optional(m, [
        Slot("in_proj.weight", 0, 0, hpg * P), Slot("in_proj.weight", 0, E, hpg * P),
        Slot("in_proj.weight", 0, 2 * E, N), Slot("in_proj.weight", 0, 2 * E + G * N, N),
        Slot("in_proj.weight", 0, dt0, hpg),
        Slot("in_proj.bias", 0, 0, hpg * P), Slot("in_proj.bias", 0, E, hpg * P),
        Slot("in_proj.bias", 0, 2 * E, N), Slot("in_proj.bias", 0, 2 * E + G * N, N),
        Slot("in_proj.bias", 0, dt0, hpg), Slot("conv1d.weight", 0, 0, hpg * P),
        Slot("conv1d.weight", 0, E, N), Slot("conv1d.weight", 0, E + G * N, N),
        Slot("conv1d.bias", 0, 0, hpg * P), Slot("conv1d.bias", 0, E, N), Slot("conv1d.bias", 0, E + G * N, N),
        Slot("dt_bias", 0, 0, hpg), Slot("A_log", 0, 0, hpg), Slot("D", 0, 0, hpg),
        Slot("norm.weight", 0, 0, hpg * P), Slot("out_proj.weight", 1, 0, hpg * P),
    ])
    return {
        "head": UnitFamily("head", H, head, "head h: its z, x and dt rows of in_proj, conv channels, "
                           "dt_bias, A_log, D, norm weights and out_proj columns", blocks=G),
        "head_channel": UnitFamily("head_channel", E, head_channel, "channel p of head h: z and x rows, "
                                   "conv channel, norm weight, out_proj column (same p in every head)", blocks=H),
        "state": UnitFamily("state", G * N, state, "SSM state n of group g: B and C rows of in_proj and "
                            "their conv channels", blocks=G),
        "group": UnitFamily("group", G, group, "B/C group g with its heads", prunable=False),
    }


def _gated_delta_blocks(m: MixerInfo) -> dict[str, list[tuple[str, int, int]]]:
    """q, k, v rows of the conv (and of Qwen3.5's in_proj_qkv). Qwen3-Next's in_proj_qkvz interleaves
    them per key head, so it has no contiguous blocks to show."""
    kd, vd = m.key_dim, m.intermediate_size
    qkv = [("q", 0, kd), ("k", kd, 2 * kd), ("v", 2 * kd, 2 * kd + vd)]
    return {"conv1d": qkv} if m.packed else {"in_proj_qkv": qkv, "conv1d": qkv}


def _gated_delta_rows(m: MixerInfo) -> dict[str, list[Slot]]:
    """The input-projection rows of each unit kind (the layout differs between Qwen3-Next and Qwen3.5)."""
    H, Kh, dk, dv = m.num_v_heads, m.num_k_heads, m.head_k_dim, m.head_v_dim
    r, kd = H // Kh, m.key_dim
    if m.packed:  # per key head: [q (dk), k (dk), v (r*dv), z (r*dv)] and [b (r), a (r)]
        qkvz, ba, B = "in_proj_qkvz.weight", "in_proj_ba.weight", 2 * dk + 2 * r * dv
        return {
            "key_channel": [Slot(qkvz, 0, 0, 1, repeats=Kh, every=B), Slot(qkvz, 0, dk, 1, repeats=Kh, every=B)],
            "value_head": [Slot(qkvz, 0, 2 * dk, dv, period=r, stride=B),
                           Slot(qkvz, 0, 2 * dk + r * dv, dv, period=r, stride=B),
                           Slot(ba, 0, 0, 1, period=r, stride=2 * r), Slot(ba, 0, r, 1, period=r, stride=2 * r)],
            "value_channel": [Slot(qkvz, 0, 2 * dk + part * r * dv + j * dv, 1, repeats=Kh, every=B)
                              for part in (0, 1) for j in range(r)],
            "key_head": [Slot(qkvz, 0, 0, B), Slot(ba, 0, 0, 2 * r)],
        }
    qkv, z, b, a = "in_proj_qkv.weight", "in_proj_z.weight", "in_proj_b.weight", "in_proj_a.weight"
    return {
        "key_channel": [Slot(qkv, 0, 0, 1, repeats=Kh, every=dk), Slot(qkv, 0, kd, 1, repeats=Kh, every=dk)],
        "value_head": [Slot(qkv, 0, 2 * kd, dv), Slot(z, 0, 0, dv), Slot(b, 0, 0, 1), Slot(a, 0, 0, 1)],
        "value_channel": [Slot(qkv, 0, 2 * kd, 1, repeats=H, every=dv), Slot(z, 0, 0, 1, repeats=H, every=dv)],
        "key_head": [Slot(qkv, 0, 0, dk), Slot(qkv, 0, kd, dk), Slot(qkv, 0, 2 * kd, r * dv), Slot(z, 0, 0, r * dv),
                     Slot(b, 0, 0, r), Slot(a, 0, 0, r)],
    }


# Why Gated DeltaNet channel cuts stay zeros (measured: tests/test_gated_delta.py). A zeroed key channel
# leaves q and k's L2 norms alone, but slicing it raises q's 1/sqrt(head_k_dim) scale, which the gated
# RMSNorm divides out only up to its eps; a value channel changes the norm's width (the weight rescale
# of Mamba-2 heads holds only up to eps). Exact would need eps x full/kept in these norms alone, and
# the config's rms_norm_eps is shared by every norm of the model.
_CHANNEL_EPS = ("slicing changes the gated RMSNorm's eps share ({what}); exact only with eps x full/kept, which "
                "rms_norm_eps (shared by every norm of the model) cannot hold: measured up to 1.3 max |Δlogits| "
                "on tiny checkpoints whose norm inputs sit near eps")


def _gated_delta_units(m: MixerInfo) -> dict[str, UnitFamily]:
    """Value head h belongs to key head h // r (r = num_v / num_k): a cut keeps the same number of
    value heads under every key head, so num_v stays r' x num_k. A zeroed value head or key head
    outputs exact zeros (v = 0 keeps its state at 0), so slicing it is exact up to float rounding.
    Channel cuts are ``normalised`` (see _CHANNEL_EPS): they run as zeros in plans;
    :func:`ssm_profile.pruning.surgery.slice_units` still slices them on request."""
    H, Kh, dk, dv = m.num_v_heads, m.num_k_heads, m.head_k_dim, m.head_v_dim
    r, kd = H // Kh, m.key_dim
    rows = _gated_delta_rows(m)
    conv, out = "conv1d.weight", "out_proj.weight"
    slots = {
        "value_head": rows["value_head"] + [Slot(conv, 0, 2 * kd, dv), Slot("A_log", 0, 0), Slot("dt_bias", 0, 0),
                                            Slot(out, 1, 0, dv)],
        "value_channel": rows["value_channel"] + [Slot(conv, 0, 2 * kd, 1, repeats=H, every=dv),
                                                  Slot("norm.weight", 0, 0), Slot(out, 1, 0, 1, repeats=H, every=dv)],
        "key_channel": rows["key_channel"] + [Slot(conv, 0, 0, 1, repeats=Kh, every=dk),
                                              Slot(conv, 0, kd, 1, repeats=Kh, every=dk)],
        "key_head": rows["key_head"] + [Slot(conv, 0, 0, dk), Slot(conv, 0, kd, dk), Slot(conv, 0, 2 * kd, r * dv),
                                        Slot("A_log", 0, 0, r), Slot("dt_bias", 0, 0, r), Slot(out, 1, 0, r * dv)],
    }
    slots = {kind: _optional(m, _and_biases(s)) for kind, s in slots.items()}
    return {
        "value_head": UnitFamily("value_head", H, slots["value_head"], "value head h: its v and z rows, b and a "
                                 "rows, conv channels, A_log, dt_bias and out_proj columns (the same number cut "
                                 "under every key head)", blocks=Kh),
        "value_channel": UnitFamily("value_channel", dv, slots["value_channel"], "value channel c of every value "
                                    "head: v and z rows, conv channels, gated-norm weight, out_proj columns",
                                    normalised=_CHANNEL_EPS.format(what="the norm averages over head_v_dim")),
        "key_channel": UnitFamily("key_channel", dk, slots["key_channel"], "key channel c of every key head: q and "
                                  "k rows and their conv channels",
                                  normalised=_CHANNEL_EPS.format(what="q's scale 1/sqrt(head_k_dim) grows")),
        "key_head": UnitFamily("key_head", Kh, slots["key_head"], "key head g with the value heads it serves: q, "
                               "k, v, z, b, a rows, conv channels, A_log, dt_bias, out_proj columns"),
    }


def _is_gated_delta(module: nn.Module) -> bool:
    params = getattr(module, "_parameters", {})
    a_log, dt_bias = params.get("A_log"), params.get("dt_bias")
    if a_log is None or dt_bias is None or a_log.ndim != 1 or dt_bias.shape != a_log.shape:
        return False
    if not all(isinstance(getattr(module, n, None), nn.Module) for n in ("conv1d", "norm", "out_proj")):
        return False
    layout = PACKED if hasattr(module, "in_proj_qkvz") else SPLIT
    return (all(isinstance(getattr(module, n, None), nn.Linear) for n in layout)
            and isinstance(getattr(module, "num_k_heads", None), int))


_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)(?:\.|$)")


def kind_of(module: nn.Module) -> str | None:
    """``mamba1``, ``mamba2``, ``gated_delta``, ``kda``, or None for a module that is no mixer ssm-profile analyses."""
    a_log = module._parameters.get("A_log") if hasattr(module, "_parameters") else None
    if a_log is None:
        return KDA if _kda.is_kda(module) else None
    if _is_gated_delta(module):
        return GATED_DELTA
    if not hasattr(module, "in_proj") or not hasattr(module, "out_proj") or not hasattr(module, "conv1d"):
        return None
    if a_log.ndim == 3:  # Zamba (v1): Mamba-1 heads with per-head x/dt projections
        return MAMBA1 if _is_zamba_heads(module) else None
    return {2: MAMBA1, 1: MAMBA2}.get(a_log.ndim)


def _is_zamba_heads(module: nn.Module) -> bool:
    params = module._parameters
    return params.get("x_proj_weight") is not None and params.get("dt_proj_weight") is not None


def find_mixers(model: nn.Module) -> list[MixerInfo]:
    """Every Mamba/Mamba-2/Gated DeltaNet/KDA mixer of ``model``, in module order."""
    mixers = []
    for path, module in model.named_modules():
        kind = kind_of(module)
        if kind is None:
            continue
        match = _LAYER_RE.search(path)
        layer = int(match.group(1)) if match else len(mixers)
        mixers.append(MixerInfo(index=len(mixers), layer=layer, path=path, module=module, kind=kind))
    return mixers


# Recurrent layers of other families (read from transformers' class names): Gated DeltaNet and Kimi delta
# attention layers whose parameters find_mixers does not recognise, RecurrentGemma's RG-LRU block,
# RWKV's time mixing, xLSTM, LFM2's short convolutions, linear attention and retention layers.
# (KimiLinearAttention is Kimi Linear's full MLA attention, not a linear-attention layer.)
_OTHER_RECURRENT = re.compile(r"GatedDeltaNet|DeltaAttention|RecurrentBlock|Rglru|RwkvSelfAttention|RwkvAttention|"
                              r"xLSTMLayer|[ms]LSTM|ShortConv|(?<!^Kimi)LinearAttention|Retention")


def other_recurrent_layers(model: nn.Module) -> dict[str, list[int]]:
    """Recurrent layers of families ssm-profile does not support yet: class name -> layer indices
    (outermost matching module only; e.g. RecurrentGemma's block, not also the RG-LRU inside it).
    Mixers :func:`find_mixers` recognises (Gated DeltaNet and KDA included) are not listed."""
    found: dict[str, list[int]] = {}
    matched: list[str] = []
    for path, module in model.named_modules():
        name = type(module).__name__
        if any(path.startswith(p + ".") for p in matched):
            continue
        if kind_of(module) is not None:
            matched.append(path)
            continue
        if not _OTHER_RECURRENT.search(name):
            continue
        matched.append(path)
        layer = _LAYER_RE.search(path)
        found.setdefault(name, []).append(int(layer.group(1)) if layer else len(found.get(name, [])))
    return found


def architecture_name(model: nn.Module) -> str:
    return getattr(getattr(model, "config", None), "model_type", type(model).__name__)


def mixer_kind(model: nn.Module) -> str:
    """``mamba1``, ``mamba2``, ``gated_delta``, ``kda`` or ``mixed`` for the model as a whole."""
    kinds = {m.kind for m in find_mixers(model)}
    return kinds.pop() if len(kinds) == 1 else "mixed"
