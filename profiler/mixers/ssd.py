"""Mamba-2 (SSD) mixers: Mamba-2 and the Mamba-2 layers of Bamba, NemotronH, Zamba2,
GraniteMoeHybrid (IBM Granite 4.0-H) and FalconH1 (µP multipliers on the input and on each block of
``in_proj``'s output; its gated norm may normalise before the gate, or be absent).

Recognised by parameters: ``A_log`` and ``dt_bias`` of rank 1 beside ``in_proj``, ``conv1d`` and
``out_proj``. Sizes are read from the tensors and the mixer's fields (``num_heads``, ``head_dim``,
``n_groups``, ``ssm_state_size``, ``chunk_size``, ``time_step_limit``).

Stages (parameter groups read): ``in_proj`` → ``conv1d`` → ``scan`` (``dt_bias``, ``A_log``, ``D``) →
``norm`` → ``out_proj``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..model.arch import MAMBA2
from ..base.patching import forwards_overridden
from . import _kernels as K
from ._base import MixerFamily, Stage, State


@dataclass(frozen=True)
class GatedNorm:
    eps: float
    groups: int
    before_gate: bool  # FalconH1 may normalise first and gate after


@dataclass(frozen=True)
class SSDSpec:
    heads: int
    head_dim: int
    groups: int
    state: int
    chunk_size: int
    dt_limit: tuple[float, float]
    activation: str | None
    in_multiplier: float | None  # FalconH1's ssm_in_multiplier
    norm: GatedNorm | None  # None: the output is gated by silu(z) without a norm


def _gated_norm(module: nn.Module, inner: int) -> GatedNorm | None:
    norm = getattr(module, "norm", None)
    if norm is None or norm._parameters.get("weight") is None:
        return None
    if getattr(norm, "group_size", None):
        groups = inner // int(norm.group_size)
    else:
        groups = int(getattr(norm, "n_groups", 1))
    return GatedNorm(eps=float(norm.variance_epsilon), groups=groups,
                     before_gate=bool(getattr(norm, "norm_before_gate", False)))


def _sizes(module: nn.Module) -> tuple[int, int, int, int]:
    """(heads, inner width, B/C groups, B and C rows of in_proj), read from the tensor shapes."""
    heads, inner = module.A_log.shape[0], module.out_proj.weight.shape[1]
    return heads, inner, int(getattr(module, "n_groups", 1)), module.in_proj.weight.shape[0] - 2 * inner - heads


def _in_proj(module: nn.Module, spec: SSDSpec, state: State, kernel: str) -> State:
    h = state["h"]
    dtype = h.dtype
    if spec.in_multiplier is not None and spec.in_multiplier != 1:
        h = h * spec.in_multiplier
    proj = module.in_proj(h)
    mup = getattr(module, "mup_vector", None)
    if mup is not None:
        proj = proj * mup
    return {"proj": proj, "dtype": dtype}


def _conv(module: nn.Module, spec: SSDSpec, state: State, kernel: str) -> State:
    inner, bc = spec.heads * spec.head_dim, spec.groups * spec.state
    z, xbc, dt = state["proj"].split([inner, inner + 2 * bc, spec.heads], dim=-1)
    conv = module.conv1d
    xbc = K.causal_conv(xbc.transpose(1, 2), conv.weight.squeeze(1), conv.bias, spec.activation, kernel)
    x, B, C = torch.split(xbc.transpose(1, 2), [inner, bc, bc], dim=-1)
    return {"z": z, "x": x, "B": B, "C": C, "dt": dt, "dtype": state["dtype"]}


def _scan(module: nn.Module, spec: SSDSpec, state: State, kernel: str) -> State:
    x, B, C, dt = state["x"], state["B"], state["C"], state["dt"]
    b, length, _ = x.shape
    A = -torch.exp(module.A_log.float())
    y = K.ssd_scan(x.view(b, length, spec.heads, spec.head_dim), dt, A,
                   B.view(b, length, spec.groups, spec.state), C.view(b, length, spec.groups, spec.state),
                   module.D, module.dt_bias, spec.dt_limit, spec.chunk_size, kernel)
    return {"y": y.reshape(b, length, -1), "z": state["z"], "dtype": state["dtype"]}


def _norm(module: nn.Module, spec: SSDSpec, state: State, kernel: str) -> State:
    y, z = state["y"], state["z"]
    if spec.norm is None:
        return {"y": y * F.silu(z), "dtype": state["dtype"]}
    norm, how = module.norm, spec.norm

    def owned(hidden_states: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        return K.gated_rms_norm(hidden_states, gate, norm.weight, how.eps, how.groups, how.before_gate)

    with forwards_overridden({norm: owned}):  # the norm's hooks (calibration statistics) run around it
        return {"y": norm(y, z), "dtype": state["dtype"]}


def _out_proj(module: nn.Module, spec: SSDSpec, state: State, kernel: str) -> State:
    return {"out": module.out_proj(state["y"].to(state["dtype"]))}


class SSD(MixerFamily):
    name = "ssd"
    kind = MAMBA2
    title = "Mamba-2 SSD"
    stages = (
        Stage("in_proj", frozenset({"in_proj"}), _in_proj),
        Stage("conv1d", frozenset({"conv1d"}), _conv, resumable=True),
        Stage("scan", frozenset({"dt_bias", "A_log", "D"}), _scan),
        Stage("norm", frozenset({"norm"}), _norm, resumable=True),
        Stage("out_proj", frozenset({"out_proj"}), _out_proj, resumable=True),
    )

    def matches(self, module: nn.Module) -> bool:
        a_log, dt_bias = module._parameters.get("A_log"), module._parameters.get("dt_bias")
        return (a_log is not None and a_log.ndim == 1 and dt_bias is not None
                and all(isinstance(getattr(module, n, None), nn.Module) for n in ("in_proj", "conv1d", "out_proj")))

    def unsupported(self, module: nn.Module) -> str | None:
        activation = getattr(module, "activation", "silu")
        if activation not in K.ACTIVATIONS:
            return f"its activation '{activation}' is not one the owned forward computes"
        heads, inner, groups, bc_rows = _sizes(module)
        if inner % heads or heads % groups or bc_rows % (2 * groups):
            return "its in_proj rows do not split into z, x, B, C and dt"
        return None

    def spec(self, module: nn.Module) -> SSDSpec:
        heads, inner, groups, bc_rows = _sizes(module)
        state = bc_rows // (2 * groups)
        limit = tuple(float(v) for v in getattr(module, "time_step_limit", (0.0, float("inf"))))
        multiplier = getattr(module, "ssm_in_multiplier", None)
        return SSDSpec(heads=heads, head_dim=inner // heads, groups=groups, state=state,
                       chunk_size=int(getattr(module, "chunk_size", 256)), dt_limit=limit,  # type: ignore[arg-type]
                       activation=getattr(module, "activation", "silu"),
                       in_multiplier=None if multiplier is None else float(multiplier),
                       norm=_gated_norm(module, inner))

    def kernels(self, device: torch.device, grad: bool) -> str | None:
        kernel = K.device_kernel(device)
        if kernel == K.NUMBA and grad:  # the numba SSD kernel is forward-only
            return K.TORCH
        return kernel
