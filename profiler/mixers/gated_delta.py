"""Gated DeltaNet mixers: the linear-attention layers of Qwen3-Next (``Qwen3NextGatedDeltaNet``) and
Qwen3.5 (``Qwen3_5GatedDeltaNet``).

Recognised by parameters: ``A_log`` and ``dt_bias`` of rank 1 (one per value head) beside
``conv1d``, ``norm`` and ``out_proj``, with the input projections either packed (Qwen3-Next:
``in_proj_qkvz``, grouped per key head, and ``in_proj_ba``) or split (Qwen3.5: ``in_proj_qkv``,
``in_proj_z``, ``in_proj_b``, ``in_proj_a``). Sizes come from the tensors (value heads from
``A_log``, head_v_dim from the norm, the q/k/v widths from ``conv1d`` and ``out_proj``) and one
field, ``num_k_heads``.

Stages (parameter groups read): ``in_proj`` → ``conv1d`` (over q, k, v) → ``scan`` (``A_log``,
``dt_bias``: g = −exp(A_log)·softplus(a + dt_bias), β = sigmoid(b), then the gated delta rule) →
``norm`` (RMSNorm over head_v_dim, then ·silu(z)) → ``out_proj``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import fastdelta
from ..base.patching import forwards_overridden
from . import _kernels as K
from ._base import MixerFamily, Stage, State

GATED_DELTA = "gated_delta"
PACKED = ("in_proj_qkvz", "in_proj_ba")  # Qwen3-Next
SPLIT = ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a")  # Qwen3.5


@dataclass(frozen=True)
class DeltaSpec:
    k_heads: int
    v_heads: int
    head_k: int
    head_v: int
    packed: bool  # Qwen3-Next's in_proj_qkvz / in_proj_ba
    activation: str | None
    norm_eps: float

    @property
    def ratio(self) -> int:  # value heads per key head
        return self.v_heads // self.k_heads


def _linears(module: nn.Module, names: tuple[str, ...]) -> bool:
    return all(isinstance(getattr(module, n, None), nn.Linear) for n in names)


def _sizes(module: nn.Module) -> tuple[int, int, int, int]:
    """(value heads, head_v_dim, key width num_k·head_k_dim, value width num_v·head_v_dim) from the tensors."""
    value_dim = module.out_proj.weight.shape[1]
    return (module.A_log.shape[0], module.norm.weight.shape[0], (module.conv1d.weight.shape[0] - value_dim) // 2,
            value_dim)


def _in_proj(module: nn.Module, spec: DeltaSpec, state: State, kernel: str) -> State:
    h = state["h"]
    batch, length, _ = h.shape
    if not spec.packed:
        return {"qkv": module.in_proj_qkv(h), "z": module.in_proj_z(h), "b": module.in_proj_b(h),
                "a": module.in_proj_a(h), "dtype": h.dtype}
    # Qwen3-Next: per key head, rows [q (dk); k (dk); v (r·dv); z (r·dv)] and [b (r); a (r)]
    r, dk, dv = spec.ratio, spec.head_k, spec.head_v
    qkvz = module.in_proj_qkvz(h).view(batch, length, spec.k_heads, 2 * dk + 2 * r * dv)
    q, k, v, z = torch.split(qkvz, [dk, dk, r * dv, r * dv], dim=-1)
    b, a = torch.split(module.in_proj_ba(h).view(batch, length, spec.k_heads, 2 * r), [r, r], dim=-1)
    qkv = torch.cat([x.reshape(batch, length, -1) for x in (q, k, v)], dim=-1)
    return {"qkv": qkv, "z": z.reshape(batch, length, -1), "b": b.reshape(batch, length, -1),
            "a": a.reshape(batch, length, -1), "dtype": h.dtype}


def _conv(module: nn.Module, spec: DeltaSpec, state: State, kernel: str) -> State:
    qkv = state["qkv"]
    batch, length, _ = qkv.shape
    conv = module.conv1d
    qkv = K.causal_conv(qkv.transpose(1, 2), conv.weight.squeeze(1), conv.bias, spec.activation, kernel)
    key_dim = spec.k_heads * spec.head_k
    q, k, v = torch.split(qkv.transpose(1, 2), [key_dim, key_dim, spec.v_heads * spec.head_v], dim=-1)
    return {"q": q.reshape(batch, length, spec.k_heads, spec.head_k),
            "k": k.reshape(batch, length, spec.k_heads, spec.head_k),
            "v": v.reshape(batch, length, spec.v_heads, spec.head_v),
            "z": state["z"], "b": state["b"], "a": state["a"], "dtype": state["dtype"]}


def _scan(module: nn.Module, spec: DeltaSpec, state: State, kernel: str) -> State:
    g = -module.A_log.float().exp() * F.softplus(state["a"].float() + module.dt_bias)  # float32, as transformers
    beta = state["b"].sigmoid()
    y = K.gated_delta_rule(state["q"], state["k"], state["v"], g, beta, kernel)
    return {"y": y, "z": state["z"], "dtype": state["dtype"]}


def _norm(module: nn.Module, spec: DeltaSpec, state: State, kernel: str) -> State:
    y, z = state["y"], state["z"]
    batch, length = y.shape[:2]
    norm, eps = module.norm, spec.norm_eps

    def owned(hidden_states: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        return K.gated_rms_norm(hidden_states, gate, norm.weight, eps, 1, True)

    # one row per (token, value head), as transformers calls it, so the norm's hooks see the same
    with forwards_overridden({norm: owned}):
        out = norm(y.reshape(-1, spec.head_v), z.reshape(-1, spec.head_v))
    return {"y": out.reshape(batch, length, -1), "dtype": state["dtype"]}


def _out_proj(module: nn.Module, spec: DeltaSpec, state: State, kernel: str) -> State:
    return {"out": module.out_proj(state["y"].to(state["dtype"]))}


class GatedDelta(MixerFamily):
    name = "gated_delta"
    kind = GATED_DELTA
    title = "Gated DeltaNet"
    stages = (
        Stage("in_proj", frozenset(PACKED + SPLIT), _in_proj),
        Stage("conv1d", frozenset({"conv1d"}), _conv, resumable=True),
        Stage("scan", frozenset({"A_log", "dt_bias"}), _scan, resumable=True),
        Stage("norm", frozenset({"norm"}), _norm, resumable=True),
        Stage("out_proj", frozenset({"out_proj"}), _out_proj, resumable=True),
    )

    def matches(self, module: nn.Module) -> bool:
        a_log, dt_bias = module._parameters.get("A_log"), module._parameters.get("dt_bias")
        return (a_log is not None and a_log.ndim == 1 and dt_bias is not None and dt_bias.ndim == 1
                and all(isinstance(getattr(module, n, None), nn.Module) for n in ("conv1d", "norm", "out_proj"))
                and (_linears(module, PACKED) or _linears(module, SPLIT)))

    def unsupported(self, module: nn.Module) -> str | None:
        activation = getattr(module, "activation", "silu")
        if activation not in K.ACTIVATIONS:
            return f"its activation '{activation}' is not one the owned forward computes"
        norm = module.norm
        if norm._parameters.get("weight") is None or getattr(norm, "activation", None) not in ("silu", "swish"):
            return "its norm is not the gated RMSNorm (a weight, then ·silu(z))"
        k_heads = getattr(module, "num_k_heads", None)
        v_heads, head_v, key_dim, value_dim = _sizes(module)
        if not isinstance(k_heads, int) or k_heads <= 0 or key_dim % k_heads or v_heads % k_heads \
                or value_dim != v_heads * head_v:
            return "its q, k, v widths do not split into num_k_heads key heads and A_log's value heads"
        if getattr(module, "head_k_dim", key_dim // k_heads) != key_dim // k_heads:
            return "its head_k_dim field disagrees with its tensors"
        packed = _linears(module, PACKED)
        rows = ((2 * key_dim + 2 * value_dim, 2 * v_heads) if packed
                else (2 * key_dim + value_dim, value_dim, v_heads, v_heads))
        if tuple(getattr(module, n).weight.shape[0] for n in (PACKED if packed else SPLIT)) != rows:
            return "its input projections' rows do not match its heads"
        return None

    def spec(self, module: nn.Module) -> DeltaSpec:
        v_heads, head_v, key_dim, _ = _sizes(module)
        k_heads = int(module.num_k_heads)
        norm = module.norm
        eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))
        return DeltaSpec(k_heads=k_heads, v_heads=v_heads, head_k=key_dim // k_heads, head_v=head_v,
                         packed=_linears(module, PACKED), activation=getattr(module, "activation", "silu"),
                         norm_eps=float(eps))

    def hidden_size(self, module: nn.Module) -> int:
        return module.out_proj.weight.shape[0]

    def kernels(self, device: torch.device, grad: bool) -> str | None:
        if device.type == "cpu":  # the numba recurrence is forward-only: gradients take the chunked form
            return K.NUMBA if fastdelta.BACKEND == "numba" and not grad else K.TORCH
        if device.type == "cuda":  # fla only without gradients: its float32 function has no backward
            return K.FLA if not grad and K.fla_kernels() is not None else K.TORCH
        return None
