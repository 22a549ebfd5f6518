"""Fast CPU forward for Mamba-2 (SSD) mixers.

transformers' CPU path for Mamba-2 (``mamba2_chunk_scan``) is the chunked "SSD" form written in
PyTorch: per chunk it materialises (batch, chunks, chunk, chunk, heads) decay and score tensors
and runs a dozen einsums, exps and masked fills, so a tiny mixer spends most of its time in
allocation and dispatch. Inference needs none of that: the same recurrence,

    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T,    y_t = h_t C_t + D x_t      (per head, h: P x N)

runs here as one numba kernel, one (batch, head) job at a time, its P x N state in L1 and the
inner loop vectorised over the head dimension. It equals the chunked form up to float32 rounding
(a different summation order), never bit for bit.

Only inference is routed here: when autograd needs gradients of any input, transformers' own
function runs (calibration and gradient-based criteria are unchanged). The Mamba-2 depthwise
causal conv goes to :func:`ssm_profile.fastscan.causal_conv1d`, which reads the strided half of
``in_proj`` directly (``F.conv1d`` copies it first).

:data:`DROP_INS` are installed on one model's Mamba-2 mixers at a time by :mod:`ssm_profile.kernels`
(the one switch for every fast kernel). ``SSM_PROFILE_FAST_SCAN=0`` disables them at call time.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from . import fastscan

BACKEND = fastscan.BACKEND
# Modules whose ``mamba2_chunk_scan`` / ``causal_conv1d_fn`` globals are transformers' Mamba-2
# functions with the signatures handled here.
MODELING_MODULES = ("transformers.models.mamba2.modeling_mamba2",)

if BACKEND == "numba":
    import numba
    import numpy as np

    @numba.njit(cache=True, fastmath=True, parallel=True, error_model="numpy")
    def _ssd_fwd_kernel(x, dt, a, bm, cm, d_skip, heads_per_group, state, y):
        """x (b, l, h, p), dt (b, l, h), a (h), bm/cm (b, l, g, n), d_skip (h): float32, C-contiguous.
        state (b, h, n, p) holds the initial state and receives the final one; writes y (b, l, h, p)."""
        batch, length, heads, hdim = x.shape
        nstate = bm.shape[3]
        for job in numba.prange(batch * heads):
            b, h = job // heads, job % heads
            g = h // heads_per_group
            st = state[b, h]
            ah, dh = a[h], d_skip[h]
            for t in range(length):
                d = dt[b, t, h]
                decay = np.exp(d * ah)
                xt = x[b, t, h]
                yt = y[b, t, h]
                bt, ct = bm[b, t, g], cm[b, t, g]
                for p in range(hdim):
                    yt[p] = np.float32(0.0)
                for n in range(nstate):
                    bn, cn = bt[n] * d, ct[n]
                    row = st[n]
                    for p in range(hdim):
                        v = decay * row[p] + bn * xt[p]
                        row[p] = v
                        yt[p] += cn * v
                for p in range(hdim):
                    yt[p] += dh * xt[p]


def _prepare_dt(dt: torch.Tensor, dt_bias: torch.Tensor | None, dt_softplus: bool,
                dt_limit: tuple[float, float]) -> torch.Tensor:
    """dt exactly as transformers' ``mamba2_chunk_scan`` forms it."""
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    return torch.clamp(dt, min=dt_limit[0], max=dt_limit[1])


def ssd_scan(hidden_states: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             chunk_size: int | None = None, D: torch.Tensor | None = None, dt_bias: torch.Tensor | None = None,
             initial_states: torch.Tensor | None = None, dt_softplus: bool = False,
             dt_limit: tuple[float, float] = (0.0, float("inf")), return_final_states: bool = False, **kwargs):
    """Mamba-2 scan with the semantics of transformers' ``mamba2_chunk_scan`` (forward only).

    Shapes: hidden_states (b, l, h, p); dt (b, l, h); A, D, dt_bias (h); B, C (b, l, g, n);
    initial_states (b, h, p, n). Returns float32 ``y`` (b, l, h, p), or ``(y, final_state)``.
    ``chunk_size`` is accepted for signature compatibility; the recurrence needs no chunks.
    Without numba it runs a time-stepped PyTorch loop (slow, for completeness).
    """
    batch, length, heads, hdim = hidden_states.shape
    groups, nstate = B.shape[2], B.shape[3]
    dtp = _prepare_dt(dt, dt_bias, dt_softplus, dt_limit).float().contiguous()
    x = hidden_states.float().contiguous()
    bm, cm = B.float().contiguous(), C.float().contiguous()
    a = A.float().contiguous()
    d_skip = torch.zeros(heads, dtype=torch.float32, device=x.device) if D is None else D.float().contiguous()
    if initial_states is None:
        state = x.new_zeros(batch, heads, nstate, hdim)
    else:
        state = initial_states.float().transpose(2, 3).contiguous()
    if BACKEND == "numba" and x.device.type == "cpu":
        y = x.new_empty(batch, length, heads, hdim)
        fastscan._sync_threads()
        _ssd_fwd_kernel(x.numpy(), dtp.numpy(), a.numpy(), bm.numpy(), cm.numpy(), d_skip.numpy(),
                        heads // groups, state.numpy(), y.numpy())
    else:
        y, state = _ssd_torch(x, dtp, a, bm, cm, d_skip, heads // groups, state)
    if return_final_states:
        return y, state.transpose(2, 3).contiguous()
    return y


def _ssd_torch(x, dt, a, bm, cm, d_skip, heads_per_group, state):
    """The same recurrence in PyTorch, one time step at a time (fallback without numba)."""
    bm = bm.repeat_interleave(heads_per_group, dim=2)  # (b, l, h, n)
    cm = cm.repeat_interleave(heads_per_group, dim=2)
    ys = []
    for t in range(x.shape[1]):
        d = dt[:, t]  # (b, h)
        decay = torch.exp(d * a)[..., None, None]
        state = decay * state + (bm[:, t] * d[..., None])[..., :, None] * x[:, t, :, None, :]
        ys.append((state * cm[:, t, :, :, None]).sum(dim=2) + d_skip[:, None] * x[:, t])
    return torch.stack(ys, dim=1), state


# --------------------------------------------------------------------------- transformers drop-in


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def chunk_scan_drop_in(original: Callable) -> Callable:
    """A drop-in for transformers' ``mamba2_chunk_scan`` that runs :func:`ssd_scan` for CPU inference."""

    @functools.wraps(original)
    def mamba2_chunk_scan(hidden_states, dt, A, B, C, chunk_size, D=None, dt_bias=None, initial_states=None,
                          dt_softplus=False, dt_limit=(0.0, float("inf")), return_final_states=False, **kwargs):
        if (fastscan.on_cpu_eager(hidden_states, kwargs) and hidden_states.dim() == 4
                and not _needs_grad(hidden_states, dt, A, B, C, D, dt_bias, initial_states)
                and not any(math.isnan(float(v)) for v in dt_limit)):
            return ssd_scan(hidden_states, dt, A, B, C, chunk_size, D=D, dt_bias=dt_bias,
                            initial_states=initial_states, dt_softplus=dt_softplus, dt_limit=dt_limit,
                            return_final_states=return_final_states)
        return original(hidden_states, dt, A, B, C, chunk_size, D=D, dt_bias=dt_bias, initial_states=initial_states,
                        dt_softplus=dt_softplus, dt_limit=dt_limit, return_final_states=return_final_states, **kwargs)

    return mamba2_chunk_scan


# Module-level names of the Mamba-2 modeling module -> drop-in maker (see ``fastscan.DROP_INS``).
DROP_INS = {"mamba2_chunk_scan": chunk_scan_drop_in, "causal_conv1d_fn": fastscan.conv_drop_in}
