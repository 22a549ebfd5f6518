"""Fast CPU forward for Mamba-2 (SSD) mixers.

The usual CPU path for Mamba-2 (transformers' ``mamba2_chunk_scan``, :func:`ssd_chunked` here) is the chunked "SSD" form written in
PyTorch: per chunk it materialises (batch, chunks, chunk, chunk, heads) decay and score tensors
and runs a dozen einsums, exps and masked fills, so a tiny mixer spends most of its time in
allocation and dispatch. Inference needs none of that: the same recurrence,

    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T,    y_t = h_t C_t + D x_t      (per head, h: P x N)

runs here as one numba kernel, one (batch, head) job at a time, its P x N state in L1 and the
inner loop vectorised over the head dimension. It equals the chunked form up to float32 rounding
(a different summation order), never bit for bit.

The kernel is forward-only: when autograd needs gradients the SSD mixer family
(:mod:`ssm_profile.mixers.ssd`) runs :func:`ssd_chunked`, the chunked form in PyTorch, written here.
The Mamba-2 depthwise causal conv goes to :func:`ssm_profile.kernels.fastscan.causal_conv1d`, which reads the
strided view of ``in_proj``'s output directly (``F.conv1d`` copies it first).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import fastscan

BACKEND = fastscan.BACKEND

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


def ssd_chunked(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                chunk_size: int, D: torch.Tensor | None = None, dt_bias: torch.Tensor | None = None,
                dt_limit: tuple[float, float] = (0.0, float("inf"))) -> torch.Tensor:
    """The Mamba-2 scan in its chunked (SSD) form, in PyTorch: differentiable, any device.

    Same meaning as :func:`ssd_scan` with ``dt_softplus=True`` and no initial state: x (b, l, h, p),
    dt (b, l, h), A, D, dt_bias (h), B, C (b, l, g, n); returns float32 y (b, l, h, p). Within a chunk
    of ``chunk_size`` steps the output is one masked (decay-weighted) attention-like product; across
    chunks the state is carried by a recurrence over chunk boundaries."""
    batch, length, heads, hdim = x.shape
    groups = B.shape[2]
    dtp = _prepare_dt(dt, dt_bias, True, dt_limit).float()  # (b, l, h)
    xf = x.float()
    bm = B.float().repeat_interleave(heads // groups, dim=2)  # (b, l, h, n)
    cm = C.float().repeat_interleave(heads // groups, dim=2)
    q = max(1, min(int(chunk_size), length))
    pad = (-length) % q
    if pad:  # zero steps at the end change nothing before them (dt = 0 there: no decay, no input)
        xf, bm, cm = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (xf, bm, cm))
        dtp = F.pad(dtp, (0, 0, 0, pad))
    chunks = xf.shape[1] // q
    xs = (xf * dtp[..., None]).view(batch, chunks, q, heads, hdim)
    bs, cs = bm.view(batch, chunks, q, heads, -1), cm.view(batch, chunks, q, heads, -1)
    a = (dtp * A.float()).view(batch, chunks, q, heads).permute(0, 3, 1, 2)  # (b, h, c, q)
    a_cum = torch.cumsum(a, dim=-1)
    # 1. within each chunk
    decay = torch.exp(_segment_sum(a))  # (b, h, c, q, q)
    y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", cs, bs, decay, xs)
    # 2. the state each chunk leaves, from its own inputs
    to_end = torch.exp(a_cum[..., -1:] - a_cum)  # (b, h, c, q)
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", bs, to_end, xs)
    # 3. states carried across chunk boundaries (zero initial state)
    states = torch.cat([torch.zeros_like(states[:, :1]), states], dim=1)
    carry = torch.exp(_segment_sum(F.pad(a_cum[..., -1], (1, 0))))  # (b, h, c+1, c+1)
    states = torch.einsum("bhzc,bchpn->bzhpn", carry, states)[:, :-1]
    # 4. what the carried state contributes inside each chunk
    y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", cs, states, torch.exp(a_cum))
    y = (y_diag + y_off).reshape(batch, chunks * q, heads, hdim)[:, :length]
    if D is not None:
        y = y + x.float() * D.float()[:, None]
    return y


def _segment_sum(a: torch.Tensor) -> torch.Tensor:
    """(..., t) -> (..., t, t): out[i, j] = a[j+1] + ... + a[i] for i >= j, -inf above the diagonal."""
    t = a.shape[-1]
    rows = a[..., None].expand(*a.shape, t)  # rows[..., i, j] = a[i]
    below = torch.tril(torch.ones(t, t, dtype=torch.bool, device=a.device), diagonal=-1)
    sums = torch.cumsum(rows.masked_fill(~below, 0), dim=-2)
    return sums.masked_fill(~torch.tril(torch.ones(t, t, dtype=torch.bool, device=a.device)), float("-inf"))
