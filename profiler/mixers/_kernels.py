"""The compute kernels a family's stages call, by name: ``numba`` (the project's CPU kernels),
``torch`` (plain PyTorch, any device, differentiable) and ``mamba-ssm`` (the CUDA kernels of the
``mamba-ssm`` and ``causal-conv1d`` packages, through their public functions).

Which one a call takes is the family's choice (:meth:`MixerFamily.kernels`); every function here has
the same meaning whatever the kernel, and the families' forwards are checked against transformers'
at first use (:func:`ssm_profile.mixers.check`).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F

NUMBA, TORCH, MAMBA_SSM = "numba", "torch", "mamba-ssm"
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
