"""Architecture adapters: where the Mamba mixers of a model are, and how their tensors couple.

Mixers are found by what they hold (a direct ``A_log`` parameter beside ``in_proj`` and
``out_proj``), not by attribute name, so Mamba, Mamba-2, FalconMamba and the Mamba layers of
hybrids (Jamba, Zamba2, Bamba, NemotronH, ...) are all seen. ``A_log`` of rank 2 marks a
Mamba-1 mixer, rank 1 a Mamba-2 mixer.

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

MAMBA1 = "mamba1"
MAMBA2 = "mamba2"

# Parameter groups in display order; a mixer has the ones that exist in it.
GROUP_ORDER = ("in_proj", "conv1d", "x_proj", "dt_proj", "dt_bias", "A_log", "D", "norm", "out_proj")


@dataclass(frozen=True)
class Slot:
    """Unit ``u`` touches indices ``[offset + u*width, offset + (u+1)*width)`` of ``param`` along ``dim``."""

    param: str  # parameter name relative to the mixer, e.g. "in_proj.weight"
    dim: int
    offset: int
    width: int = 1

    def indices(self, units: torch.Tensor) -> torch.Tensor:
        units = torch.as_tensor(units, dtype=torch.long).reshape(-1)
        base = self.offset + units * self.width
        return (base[:, None] + torch.arange(self.width)).reshape(-1)


@dataclass(frozen=True)
class UnitFamily:
    """One kind of coupled structural unit in one mixer."""

    kind: str  # channel | state | dt_rank | head | head_channel | group
    count: int
    slots: tuple[Slot, ...]
    description: str
    # Slicing constraints: units are cut in equal numbers from each of ``blocks`` consecutive
    # blocks (Mamba-2 heads and states per group); ``prunable`` False means the kind is never a
    # pruning target and cannot be sliced out (it may still be zeroed), e.g. Mamba-2's B/C groups.
    # Whether a uniform cut can be saved in the stock config is the analysis's ``stock_config``.
    # ``normalised``: why slicing these units would change the model (a norm averages over their
    # dimension, so a zeroed unit counts in the mean and a sliced one does not); empty when it would not.
    blocks: int = 1
    prunable: bool = True
    normalised: str = ""

    def indices(self, units: torch.Tensor | list[int]) -> list[tuple[str, int, torch.Tensor]]:
        """The shared index set of ``units`` in every coupled tensor: (param, dim, indices)."""
        units = torch.as_tensor(units, dtype=torch.long)
        return [(s.param, s.dim, s.indices(units)) for s in self.slots]

    @property
    def tensors(self) -> list[str]:
        return sorted({s.param for s in self.slots})

    def elements_per_unit(self, mixer: "MixerInfo") -> int:
        """Parameters one unit owns across all its coupled tensors."""
        total = 0
        for slot in self.slots:
            shape = mixer.param(slot.param).shape
            other = 1
            for d, size in enumerate(shape):
                if d != slot.dim:
                    other *= size
            total += slot.width * other
        return total


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
    def hidden_size(self) -> int:
        return self.module.out_proj.weight.shape[0]

    @property
    def intermediate_size(self) -> int:
        return self.module.out_proj.weight.shape[1]

    @property
    def conv_kernel(self) -> int:
        return self.module.conv1d.weight.shape[-1]

    @property
    def state_size(self) -> int:
        if self.kind == MAMBA1:
            return self.module.A_log.shape[1]
        return int(self.module.ssm_state_size)

    @property
    def dt_rank(self) -> int:
        return self.module.dt_proj.weight.shape[1] if self.kind == MAMBA1 else 0

    @property
    def num_heads(self) -> int:
        return self.module.A_log.shape[0] if self.kind == MAMBA2 else 0

    @property
    def head_dim(self) -> int:
        return self.intermediate_size // self.num_heads if self.kind == MAMBA2 else 0

    @property
    def n_groups(self) -> int:
        return int(getattr(self.module, "n_groups", 1)) if self.kind == MAMBA2 else 1

    @property
    def conv_channels(self) -> int:
        return self.module.conv1d.weight.shape[0]

    def dims(self) -> dict[str, int]:
        d = {"hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size,
             "state_size": self.state_size, "conv_kernel": self.conv_kernel}
        if self.kind == MAMBA1:
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
            out.setdefault(name.split(".")[0], []).append(name)
        order = {g: i for i, g in enumerate(GROUP_ORDER)}
        return dict(sorted(out.items(), key=lambda kv: order.get(kv[0], len(order))))

    def sub_blocks(self) -> dict[str, list[tuple[str, int, int]]]:
        """Row blocks inside fused tensors: group -> [(block name, start, stop)] along dim 0."""
        E, N = self.intermediate_size, self.state_size
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
        return _mamba1_units(self) if self.kind == MAMBA1 else _mamba2_units(self)

    def unit_family(self, kind: str) -> UnitFamily:
        families = self.unit_families()
        if kind not in families:
            raise KeyError(f"{self.kind} mixers have no '{kind}' units (they have {', '.join(families)})")
        return families[kind]


def _optional(mixer: MixerInfo, slots: list[Slot]) -> tuple[Slot, ...]:
    return tuple(s for s in slots if mixer.has(s.param))


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


_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)(?:\.|$)")


def find_mixers(model: nn.Module) -> list[MixerInfo]:
    """Every Mamba/Mamba-2 mixer of ``model``, in module order."""
    mixers = []
    for path, module in model.named_modules():
        a_log = module._parameters.get("A_log") if hasattr(module, "_parameters") else None
        if a_log is None or not hasattr(module, "in_proj") or not hasattr(module, "out_proj"):
            continue
        if not hasattr(module, "conv1d") or a_log.ndim not in (1, 2):
            continue  # rank 3: Zamba's multi-head Mamba-1 layers, not analysed yet (other_recurrent_layers)
        kind = MAMBA1 if a_log.ndim == 2 else MAMBA2
        match = _LAYER_RE.search(path)
        layer = int(match.group(1)) if match else len(mixers)
        mixers.append(MixerInfo(index=len(mixers), layer=layer, path=path, module=module, kind=kind))
    return mixers


# Recurrent layers of other families (read from transformers' class names): Gated DeltaNet (Qwen3-Next,
# Qwen3.5), Kimi Linear's delta attention, RecurrentGemma's RG-LRU block, RWKV's time mixing, xLSTM,
# LFM2's short convolutions, linear attention and retention layers; and, by its A_log of rank 3,
# Zamba (v1)'s multi-head Mamba-1 mixer.
_OTHER_RECURRENT = re.compile(r"GatedDeltaNet|DeltaAttention|RecurrentBlock|Rglru|RwkvSelfAttention|RwkvAttention|"
                              r"xLSTMLayer|[ms]LSTM|ShortConv|LinearAttention|Retention")


def other_recurrent_layers(model: nn.Module) -> dict[str, list[int]]:
    """Recurrent layers of families ssm-profile does not support yet: class name -> layer indices
    (outermost matching module only; e.g. RecurrentGemma's block, not also the RG-LRU inside it)."""
    found: dict[str, list[int]] = {}
    matched: list[str] = []
    for path, module in model.named_modules():
        name = type(module).__name__
        a_log = module._parameters.get("A_log") if hasattr(module, "_parameters") else None
        multi_head_mamba1 = a_log is not None and a_log.ndim == 3  # Zamba (v1): x_proj/dt_proj per head
        if not (_OTHER_RECURRENT.search(name) or multi_head_mamba1) or any(path.startswith(p + ".") for p in matched):
            continue
        matched.append(path)
        layer = _LAYER_RE.search(path)
        found.setdefault(name, []).append(int(layer.group(1)) if layer else len(found.get(name, [])))
    return found


def architecture_name(model: nn.Module) -> str:
    return getattr(getattr(model, "config", None), "model_type", type(model).__name__)


def mixer_kind(model: nn.Module) -> str:
    """``mamba1``, ``mamba2`` or ``mixed`` for the model as a whole."""
    kinds = {m.kind for m in find_mixers(model)}
    return kinds.pop() if len(kinds) == 1 else "mixed"
