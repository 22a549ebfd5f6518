"""Mamba-1 selective-scan mixers: Mamba, FalconMamba (weightless RMS norms on dt, B and C), the
Mamba layers of Jamba (weighted norms on dt, B and C) and of Zamba (several independent heads,
their x/dt projections as raw parameters, x and z rows interleaved in ``in_proj``).

Recognised by parameters: ``A_log`` of rank 2 with ``x_proj``/``dt_proj`` modules, or of rank 3 with
``x_proj_weight``/``dt_proj_weight`` parameters (Zamba's heads).

Stages (parameter groups read): ``in_proj`` → ``conv1d`` → ``x_proj`` (+ dt/B/C norms) →
``scan`` (``dt_proj``, ``A_log``, ``D``) → ``out_proj``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..model.arch import MAMBA1
from . import _kernels as K
from ._base import MixerFamily, Stage, State


@dataclass(frozen=True)
class Norm:
    """An RMS norm the mixer applies to dt, B or C (``weight`` None: weightless)."""

    weight: torch.Tensor | None
    eps: float


@dataclass(frozen=True)
class SelectiveSpec:
    heads: int  # 1, or Zamba's independent heads
    per_head: bool  # Zamba's layout (per-head x_proj/dt_proj parameters, x and z rows interleaved), any head count
    rank: int  # dt rank R
    state: int  # N
    activation: str | None
    dt_norm: Norm | None
    b_norm: Norm | None
    c_norm: Norm | None


def _norm(module: nn.Module, name: str) -> Norm | None:
    norm = getattr(module, name, None)
    if norm is None:
        return None
    weight = norm._parameters.get("weight")  # a buffer of ones (FalconMamba) is not used by its norm
    return Norm(weight=weight, eps=float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))))


def _is_heads(module: nn.Module) -> bool:
    return module._parameters.get("x_proj_weight") is not None


def _in_proj(module: nn.Module, spec: SelectiveSpec, state: State, kernel: str) -> State:
    h = state["h"]
    xz = module.in_proj(h).transpose(1, 2)  # (b, 2e, l)
    return {"xz": xz, "dtype": h.dtype}


def _conv(module: nn.Module, spec: SelectiveSpec, state: State, kernel: str) -> State:
    xz = state["xz"]
    if spec.per_head:  # Zamba interleaves x and z rows: [x0, z0, x1, z1, ...]
        b, _, length = xz.shape
        x, z = xz.view(b, -1, 2, length).unbind(2)
        x = x.contiguous()
    else:
        x, z = xz.chunk(2, dim=1)
    conv = module.conv1d
    x = K.causal_conv(x, conv.weight.squeeze(1), conv.bias, spec.activation, kernel)
    return {"x": x, "z": z, "dtype": state["dtype"]}


def _x_proj(module: nn.Module, spec: SelectiveSpec, state: State, kernel: str) -> State:
    x = state["x"]
    sizes = [spec.rank, spec.state, spec.state]
    if spec.per_head:
        b, e, length = x.shape
        xh = x.reshape(b, spec.heads, e // spec.heads, length).transpose(0, 1)  # (heads, b, p, l)
        dt_raw, B, C = torch.split((module.x_proj_weight[:, None] @ xh).transpose(-1, -2), sizes, dim=-1)
    else:
        dt_raw, B, C = torch.split(module.x_proj(x.transpose(1, 2)), sizes, dim=-1)
    if spec.dt_norm is not None:
        dt_raw = K.rms_norm(dt_raw, spec.dt_norm.weight, spec.dt_norm.eps)
    if spec.b_norm is not None:
        B = K.rms_norm(B, spec.b_norm.weight, spec.b_norm.eps)
    if spec.c_norm is not None:
        C = K.rms_norm(C, spec.c_norm.weight, spec.c_norm.eps)
    return {**state, "dt_raw": dt_raw, "B": B, "C": C}


def _scan(module: nn.Module, spec: SelectiveSpec, state: State, kernel: str) -> State:
    x, z, dt_raw, B, C = state["x"], state["z"], state["dt_raw"], state["B"], state["C"]
    A = -torch.exp(module.A_log.float())
    if not spec.per_head:
        bias = module.dt_proj.bias
        delta = module.dt_proj.weight @ dt_raw.transpose(1, 2)  # (b, e, l)
        y = K.selective_scan(x, delta, A, B.transpose(1, 2), C.transpose(1, 2), module.D.float(), z,
                             None if bias is None else bias.float(), kernel)
        return {"y": y, "dtype": state["dtype"]}
    b, e, length = x.shape
    p = e // spec.heads
    xh = x.reshape(b, spec.heads, p, length).transpose(0, 1)
    zh = z.reshape(b, spec.heads, p, length).transpose(0, 1)
    delta = module.dt_proj_weight[:, None] @ dt_raw.transpose(-1, -2)  # (heads, b, p, l)
    bias = module.dt_proj_bias
    ys = [K.selective_scan(xh[i], delta[i], A[i], B[i].transpose(1, 2), C[i].transpose(1, 2),
                           module.D[i].float(), zh[i], None if bias is None else bias[i].float(), kernel)
          for i in range(spec.heads)]
    return {"y": torch.cat(ys, dim=1), "dtype": state["dtype"]}


def _out_proj(module: nn.Module, spec: SelectiveSpec, state: State, kernel: str) -> State:
    return {"out": module.out_proj(state["y"].transpose(1, 2).to(state["dtype"]))}


class SelectiveScan(MixerFamily):
    name = "selective_scan"
    kind = MAMBA1
    title = "Mamba-1 selective scan"
    stages = (
        Stage("in_proj", frozenset({"in_proj"}), _in_proj),
        Stage("conv1d", frozenset({"conv1d"}), _conv, resumable=True),
        Stage("x_proj", frozenset({"x_proj", "x_proj_weight", "dt_layernorm", "b_layernorm", "c_layernorm"}),
              _x_proj),
        Stage("scan", frozenset({"dt_proj", "dt_proj_weight", "dt_proj_bias", "A_log", "D"}), _scan,
              resumable=True),
        Stage("out_proj", frozenset({"out_proj"}), _out_proj, resumable=True),
    )

    def matches(self, module: nn.Module) -> bool:
        a_log = module._parameters.get("A_log")
        if a_log is None or not all(isinstance(getattr(module, n, None), nn.Module)
                                    for n in ("in_proj", "conv1d", "out_proj")):
            return False
        if a_log.ndim == 2:
            return isinstance(getattr(module, "x_proj", None), nn.Linear) and isinstance(
                getattr(module, "dt_proj", None), nn.Linear)
        return a_log.ndim == 3 and _is_heads(module) and module._parameters.get("dt_proj_weight") is not None

    def unsupported(self, module: nn.Module) -> str | None:
        activation = getattr(module, "activation", "silu")
        if activation not in K.ACTIVATIONS:
            return f"its activation '{activation}' is not one the owned forward computes"
        return None

    def spec(self, module: nn.Module) -> SelectiveSpec:
        per_head = _is_heads(module)  # a Zamba mixer sliced to one head keeps this layout
        heads = module.A_log.shape[0] if per_head else 1
        if per_head:
            state, rank = module.A_log.shape[2], module.dt_proj_weight.shape[2]
        else:
            state, rank = module.A_log.shape[1], module.dt_proj.weight.shape[1]
        return SelectiveSpec(heads=heads, per_head=per_head, rank=rank, state=state,
                             activation=getattr(module, "activation", "silu"),
                             dt_norm=_norm(module, "dt_layernorm"), b_norm=_norm(module, "b_layernorm"),
                             c_norm=_norm(module, "c_layernorm"))

    def kernels(self, device: torch.device, grad: bool) -> str | None:
        return K.device_kernel(device)  # numba and mamba-ssm scans both have a backward
