"""The compute kernels a family's stages call, by name: ``numba`` (the project's CPU kernels),
``torch`` (plain PyTorch, any device, differentiable), ``mamba-ssm`` (the CUDA kernels of the
``mamba-ssm`` and ``causal-conv1d`` packages, through their public functions) and ``fla`` (the CUDA
kernels of flash-linear-attention for the gated delta rule, through its public functions).

Which one a call takes is the family's choice (:meth:`MixerFamily.kernels`); every function here has
the same meaning whatever the kernel, and the families' forwards are checked against transformers'
at first use (:func:`ssm_profile.mixers._install.check`).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F

NUMBA, TORCH, MAMBA_SSM, FLA = "numba", "torch", "mamba-ssm", "fla"
ACTIVATIONS = {None: None, "silu": F.silu, "swish": F.silu}


@functools.lru_cache(maxsize=1)
def numba_available() -> bool:
    from ..kernels import fastscan

    return fastscan.BACKEND == "numba"


@functools.lru_cache(maxsize=1)
def cuda_kernels() -> dict[str, Any] | None:
    """mamba-ssm's and causal-conv1d's public functions, or None when they do not import."""
    try:
        from causal_conv1d import causal_conv1d_fn
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception:  # noqa: BLE001 - without CUDA these packages raise more than ImportError
        return None
    return {"conv": causal_conv1d_fn, "scan": selective_scan_fn, "ssd": mamba_chunk_scan_combined}


@functools.lru_cache(maxsize=1)
def fla_kernels() -> dict[str, Any] | None:
    """flash-linear-attention's public gated-delta-rule functions, or None when they do not import."""
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
    except Exception:  # noqa: BLE001 - without CUDA/triton the package raises more than ImportError
        return None
    return {"chunk": chunk_gated_delta_rule, "recurrent": fused_recurrent_gated_delta_rule}


def device_kernel(device: torch.device) -> str | None:
    """The fast kernel for ``device``: numba on the CPU, mamba-ssm on CUDA when it imports."""
    if device.type == "cpu":
        return NUMBA if numba_available() else TORCH
    if device.type == "cuda" and cuda_kernels() is not None:
        return MAMBA_SSM
    return None


def needs_grad(*tensors: Any) -> bool:
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def causal_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str | None,
                kernel: str) -> torch.Tensor:
    """Depthwise causal conv of ``x`` (batch, channels, length) with ``weight`` (channels, width),
    then the activation. Returns (batch, channels, length) in ``x``'s dtype."""
    if kernel == MAMBA_SSM:
        return cuda_kernels()["conv"](x, weight, bias, activation=activation)
    if kernel == NUMBA:
        from ..kernels import fastscan

        out = fastscan.causal_conv1d(x, weight, bias, activation)
        if out is not None:
            return out
    width = weight.shape[-1]
    out = F.conv1d(x.to(weight.dtype), weight.unsqueeze(1), bias, padding=width - 1,
                   groups=x.shape[1])[..., :x.shape[2]]
    act = ACTIVATIONS[activation]
    return (act(out) if act is not None else out).to(x.dtype)


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
                   kernel: str) -> torch.Tensor:
    """Mamba-1 scan with softplus(delta + delta_bias): u, delta, z (b, e, l); A (e, n); B, C (b, n, l)."""
    from ..kernels import fastscan

    if kernel == MAMBA_SSM:
        return cuda_kernels()["scan"](u, delta, A, B, C, D, z, delta_bias, True)
    if kernel == NUMBA:
        return fastscan.selective_scan(u, delta, A, B, C, D, z, delta_bias, True)
    return fastscan.selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, True)


def ssd_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             D: torch.Tensor, dt_bias: torch.Tensor, dt_limit: tuple[float, float], chunk_size: int,
             kernel: str) -> torch.Tensor:
    """Mamba-2 scan with dt = clamp(softplus(dt + dt_bias), *dt_limit): x (b, l, h, p); dt (b, l, h);
    A, D, dt_bias (h); B, C (b, l, g, n). Returns y (b, l, h, p) in float32 (D skip included)."""
    from ..kernels import fastscan2

    if kernel == MAMBA_SSM:
        return cuda_kernels()["ssd"](x, dt, A, B, C, chunk_size, D=D, z=None, dt_bias=dt_bias,
                                     dt_softplus=True, dt_limit=dt_limit)
    if kernel == NUMBA and not needs_grad(x, dt, A, B, C, D, dt_bias):
        return fastscan2.ssd_scan(x, dt, A, B, C, D=D, dt_bias=dt_bias, dt_softplus=True, dt_limit=dt_limit)
    return fastscan2.ssd_chunked(x, dt, A, B, C, chunk_size, D=D, dt_bias=dt_bias, dt_limit=dt_limit)


def gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                     kernel: str) -> torch.Tensor:
    """The gated delta rule with q and k L2-normalised and q scaled by 1/sqrt(head_k_dim): q, k
    (b, l, num_k_heads, head_k_dim); v (b, l, num_v_heads, head_v_dim); g, beta (b, l, num_v_heads).
    Returns o (b, l, num_v_heads, head_v_dim) in q's dtype (see :mod:`ssm_profile.kernels.fastdelta`)."""
    from ..kernels import fastdelta

    if kernel == FLA:
        ratio = v.shape[2] // q.shape[2]
        if ratio > 1:  # older releases want one key head per value head; repeating is always right
            q, k = q.repeat_interleave(ratio, dim=2), k.repeat_interleave(ratio, dim=2)
        # fla's chunked function refuses float32; its recurrent one takes any dtype (forward only)
        fn = fla_kernels()["recurrent" if q.dtype == torch.float32 else "chunk"]
        return fn(q, k, v, g=g, beta=beta, use_qk_l2norm_in_kernel=True)[0].to(q.dtype)
    if kernel == NUMBA and not needs_grad(q, k, v, g, beta):
        return fastdelta.gated_delta_scan(q, k, v, g, beta)[0]
    return fastdelta.gated_delta_chunked(q, k, v, g, beta)[0]


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension in float32 (``weight`` None: weightless), in ``x``'s dtype."""
    dtype = x.dtype
    v = x.float()
    v = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps)
    return v.to(dtype) if weight is None else weight * v.to(dtype)


def gated_rms_norm(y: torch.Tensor, gate: torch.Tensor | None, weight: torch.Tensor, eps: float, groups: int,
                   norm_before_gate: bool) -> torch.Tensor:
    """Mamba-2's gated RMSNorm: y·silu(gate) normalised in ``groups`` equal groups of channels, scaled by
    ``weight`` (with ``norm_before_gate`` the gate multiplies after the norm). In ``y``'s dtype."""
    dtype = y.dtype
    v = y.float()
    if gate is not None and not norm_before_gate:
        v = v * F.silu(gate.float())
    shape = v.shape
    g = v.view(*shape[:-1], groups, shape[-1] // groups)
    g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + eps)
    out = weight * g.view(shape).to(dtype)
    if gate is not None and norm_before_gate:
        out = (out.float() * F.silu(gate.float())).to(dtype)
    return out
