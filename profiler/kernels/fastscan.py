"""Fast CPU selective scan for Mamba-1, forward and backward.

transformers' CPU fallback (``mamba_selective_scan``) loops over the sequence in Python and
materialises (batch, channels, length, state) tensors; autograd then records every step. Here each
direction is one fused numba kernel:

* forward: blocks of 16 channels step through time together, one channel per vector lane, so
  ``exp(dt * A)`` (``channels * length * state`` of them: the cost floor) fills whole AVX-512
  vectors for any state size and ``C . h`` needs no cross-lane sum. The loop is written with
  explicit 16-lane vector intrinsics; a polynomial exp replaces libm's scalar ``expf``. Inputs are
  read in whatever layout they come (transformers' gate is a strided half of ``in_proj``).
* backward: one channel at a time, lanes over states: the row's states are recomputed (no
  (b, e, l, n) tensor is ever stored), then a reverse-time recurrence yields every gradient.

Work is split over (batch, channel block) jobs; every value is computed the same way whatever the
thread count, and cross-channel gradient sums use fixed groups, so results never depend on it.

The Mamba-1 mixer family (:mod:`ssm_profile.mixers.selective`) calls :func:`selective_scan` and
:func:`causal_conv1d` from its own forward; this module knows nothing of transformers. The kernels'
vector intrinsics and float32 math live in :mod:`ssm_profile.kernels.simd`. Without numba,
:func:`selective_scan` is a time-chunked PyTorch implementation (``BACKEND == "torch"``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

try:
    import numba

    BACKEND = "numba"
except ImportError:  # pure-PyTorch fallback below
    numba = None
    BACKEND = "torch"

_TILE = 32  # time steps per forward tile (tiles stay in L1)
_GRAD_GROUPS = 16  # channel groups with private dB/dC buffers; fixed so sums never depend on threads
_TORCH_CHUNK = 64  # time steps per chunk in the torch fallback (bounds its memory)


# --------------------------------------------------------------------------- numba kernels

if BACKEND == "numba":
    # LANES channels per forward vector (one AVX-512 register of float32); the vector intrinsics
    # and float32 math live in ssm_profile.kernels.simd.
    from .simd import (LANES, ONE, SOFTPLUS_THRESHOLD, ZERO, exp_f32, jit, prefetch, sigmoid_f32, softplus_f32, vexp,
                       vfma, vload, vmul, vsplat, vstore)

    @jit(fastmath=True)
    def _row_dt(delta, bias, softplus, dts):
        """dts = softplus(delta + bias) (or without softplus) for one row."""
        for t in range(delta.shape[0]):
            x = delta[t] + bias
            dts[t] = softplus_f32(x) if softplus else x

    # ---- forward: lanes are channels. A block of LANES channels steps through time together,
    # so exp(dt*A) fills whole vectors for any state size and no cross-lane sum is needed.

    # Tiles are flat float32 arrays indexed [t * LANES + c], carved from one 64-byte aligned
    # buffer: a vector then never straddles cache lines (which breaks store-to-load forwarding).

    @jit
    def _aligned_zeros(size):
        buf = np.zeros(size + 16, np.float32)
        offset = ((-buf.ctypes.data) % 64) // 4
        return buf[offset:offset + size]

    @jit(fastmath=True)
    def _load_tile(flat, strides, b, e0, nv, t0, tl, tile):
        """tile[t, c] = x[b, e0 + c, t0 + t] for a tensor x given as its flat storage and strides,
        and prefetch the next tile.

        Rows are read through slices so every element index is a non-negative loop counter:
        numba's wraparound on computed indices would turn these copies into gathers/scatters."""
        sb, se, st = strides[0], strides[1], strides[2]
        last = flat.shape[0] - 1
        if se == 1:  # channels contiguous, e.g. transformers' gate: copy rows of channels
            for t in range(tl):
                start = b * sb + (t0 + t) * st + e0
                src, dst = flat[start:start + nv], tile[t * LANES:t * LANES + nv]
                for c in range(nv):
                    dst[c] = src[c]
                prefetch(flat, min(start + tl * st, last))
        elif st == 1:  # time contiguous, e.g. a contiguous (b, e, l) tensor: transpose
            for c in range(nv):
                start = b * sb + (e0 + c) * se + t0
                src = flat[start:start + tl]
                for t in range(tl):
                    tile[t * LANES + c] = src[t]
                for ahead in range(tl, 2 * tl, 16):
                    prefetch(flat, min(start + ahead, last))
        else:
            for c in range(nv):
                for t in range(tl):
                    tile[t * LANES + c] = flat[b * sb + (e0 + c) * se + (t0 + t) * st]

    @jit(fastmath=True)
    def _tile_dt(dt, ut, bias, softplus, du, size):
        """In place dt <- softplus(dt + bias) (or dt + bias); du = dt * u."""
        for i in range(size):
            x = dt[i] + bias[i]
            d = softplus_f32(x) if softplus else x
            dt[i] = d
            du[i] = d * ut[i]

    @jit(fastmath=True)
    def _tile_gate(y, ut, d_skip, zt, has_z, size):
        """In place y <- (y + D u) * silu(z)."""
        for i in range(size):
            v = y[i] + d_skip[i] * ut[i]
            y[i] = v * (zt[i] * sigmoid_f32(zt[i])) if has_z else v

    @jit(fastmath=True, parallel=True)
    def _scan_fwd_kernel(u, delta, z, strides, a, bm, cm, d_skip, bias, has_z, softplus,
                         out_tm, last):
        """u, delta, z: flat storage of (b, e, l) tensors with ``strides[i]``; bm, cm (b, l, n);
        writes out_tm (b, l, e) and last (b, e, n)."""
        batch, length, channels = out_tm.shape
        state = a.shape[1]
        blocks = (channels + LANES - 1) // LANES
        size, width = _TILE * LANES, state * LANES
        for job in numba.prange(batch * blocks):
            b, e0 = job // blocks, (job % blocks) * LANES
            nv = min(LANES, channels - e0)
            work = _aligned_zeros(7 * size + 2 * width)
            dt, ut, du, zt, y, bias_t, d_t = (work[0:size], work[size:2 * size],
                                              work[2 * size:3 * size], work[3 * size:4 * size],
                                              work[4 * size:5 * size], work[5 * size:6 * size],
                                              work[6 * size:7 * size])
            a_t, h = work[7 * size:7 * size + width], work[7 * size + width:7 * size + 2 * width]
            # Per-lane constants broadcast over a tile. Lanes past the last channel stay zero:
            # they compute harmless values that are never stored.
            for c in range(nv):
                for n in range(state):
                    a_t[n * LANES + c] = a[e0 + c, n]
                for t in range(_TILE):
                    bias_t[t * LANES + c] = bias[e0 + c]
                    d_t[t * LANES + c] = d_skip[e0 + c]
            for t0 in range(0, length, _TILE):
                tl = min(_TILE, length - t0)
                _load_tile(delta, strides[1], b, e0, nv, t0, tl, dt)
                _load_tile(u, strides[0], b, e0, nv, t0, tl, ut)
                if has_z:
                    _load_tile(z, strides[2], b, e0, nv, t0, tl, zt)
                _tile_dt(dt, ut, bias_t, softplus, du, tl * LANES)
                for t in range(tl):
                    row = t * LANES
                    dtv, duv = vload(dt, row), vload(du, row)
                    yv = vsplat(ZERO)
                    for n in range(state):
                        col = n * LANES
                        hv = vfma(vexp(vmul(dtv, vload(a_t, col))), vload(h, col),
                                   vmul(duv, vsplat(bm[b, t0 + t, n])))
                        vstore(h, col, hv)
                        yv = vfma(hv, vsplat(cm[b, t0 + t, n]), yv)
                    vstore(y, row, yv)
                _tile_gate(y, ut, d_t, zt, has_z, tl * LANES)
                block = out_tm[b, t0:t0 + tl, e0:e0 + nv]
                for t in range(tl):
                    line, row = block[t], y[t * LANES:t * LANES + nv]
                    for c in range(nv):
                        line[c] = row[c]
            for c in range(nv):
                for n in range(state):
                    last[b, e0 + c, n] = h[n * LANES + c]

    @jit(fastmath=True, parallel=True)
    def _conv_kernel(flat, strides, w_t, bias, silu, out_tm):
        """Depthwise causal conv (+ SiLU) of a channels-contiguous (b, e, l) input given as flat
        storage and strides; w_t is (kernel, e); writes out_tm (b, l, e), vectorised over e."""
        batch, length, channels = out_tm.shape
        width = w_t.shape[0]
        sb, st = strides[0], strides[2]
        chunks = (length + _TILE - 1) // _TILE
        for job in numba.prange(batch * chunks):
            b, t0 = job // chunks, (job % chunks) * _TILE
            for t in range(t0, min(t0 + _TILE, length)):
                acc = out_tm[b, t]
                for e in range(channels):
                    acc[e] = bias[e]
                for k in range(width):
                    src_t = t - (width - 1) + k
                    if src_t >= 0:
                        start = b * sb + src_t * st
                        row, wk = flat[start:start + channels], w_t[k]
                        for e in range(channels):
                            acc[e] += wk[e] * row[e]
                if silu:
                    for e in range(channels):
                        acc[e] = acc[e] * sigmoid_f32(acc[e])

    # ---- backward: one channel per job step, lanes are states (runs once per training step).

    @jit(fastmath=True)
    def _row_recurrence(u, dts, a, bm, cm, ys, dA_store, h_store):
        """Forward recompute of one row from a zero state, keeping exp(dt*A) and every state."""
        for t in range(u.shape[0]):
            d = dts[t]
            du = d * u[t]
            acc = ZERO
            for n in range(a.shape[0]):
                da = exp_f32(d * a[n])
                hv = da * h_store[t, n] + du * bm[t, n]
                dA_store[t, n] = da
                h_store[t + 1, n] = hv
                acc += hv * cm[t, n]
            ys[t] = acc

    @jit(fastmath=True)
    def _row_gate_bwd(gout, ys, z, has_z, gys, dz):
        """Backward through out = y * silu(z): gys = dL/dy, dz = dL/dz."""
        for t in range(gout.shape[0]):
            if has_z:
                s = sigmoid_f32(z[t])
                gys[t] = gout[t] * z[t] * s
                dz[t] = gout[t] * ys[t] * s * (ONE + z[t] * (ONE - s))
            else:
                gys[t] = gout[t]

    @jit(fastmath=True)
    def _row_dt_bwd(delta, bias, softplus, ddelta):
        """Chain dL/d(dt) through the softplus; returns the row's delta_bias gradient."""
        total = ZERO
        for t in range(delta.shape[0]):
            x = delta[t] + bias
            g = ddelta[t]
            if softplus and x <= SOFTPLUS_THRESHOLD:
                g = g * sigmoid_f32(x)
            ddelta[t] = g
            total += g
        return total

    @jit(fastmath=True)
    def _row_reverse(u, dts, a, bm, cm, d_skip, gys, gh, dA_store, h_store, du, ddelta, dA_acc, dB, dC):
        """Reverse-time recurrence of one row; dB/dC accumulate into the group's buffers."""
        state = a.shape[0]
        for t in range(u.shape[0] - 1, -1, -1):
            gy, ut, d = gys[t], u[t], dts[t]
            du_t = gy * d_skip
            dd = ZERO
            for n in range(state):
                g = gh[n] + gy * cm[t, n]  # dL/dh_t
                dC[t, n] += gy * h_store[t + 1, n]
                w = g * h_store[t, n] * dA_store[t, n]  # dL/d(dt*A) at (t, n)
                dd += w * a[n] + g * bm[t, n] * ut
                dA_acc[n] += w * d
                dB[t, n] += g * d * ut
                du_t += g * d * bm[t, n]
                gh[n] = g * dA_store[t, n]  # carried to h_{t-1}
            du[t] = du_t
            ddelta[t] = dd

    @jit(fastmath=True, parallel=True)
    def _scan_bwd_kernel(u, delta, a, bm, cm, d_skip, bias, z, softplus, has_z, gout, glast,
                         du, ddelta, dz, dA_part, dB_part, dC_part, dD_part, dbias_part):
        batch, channels, length = u.shape
        state = a.shape[1]
        groups = dB_part.shape[0]
        for job in numba.prange(batch * groups):
            b, g = job // groups, job % groups
            dts = np.empty(length, np.float32)
            ys = np.empty(length, np.float32)
            gys = np.empty(length, np.float32)
            h = np.empty(state, np.float32)
            dA_acc = np.empty(state, np.float32)
            dA_store = np.empty((length, state), np.float32)
            h_store = np.zeros((length + 1, state), np.float32)  # row 0 = initial state
            for e in range(g * channels // groups, (g + 1) * channels // groups):
                _row_dt(delta[b, e], bias[e], softplus, dts)
                _row_recurrence(u[b, e], dts, a[e], bm[b], cm[b], ys, dA_store, h_store)
                for t in range(length):
                    ys[t] += d_skip[e] * u[b, e, t]
                _row_gate_bwd(gout[b, e], ys, z[b, e], has_z, gys, dz[b, e])
                h[:] = glast[b, e]
                dA_acc[:] = ZERO
                _row_reverse(u[b, e], dts, a[e], bm[b], cm[b], d_skip[e], gys, h, dA_store, h_store,
                             du[b, e], ddelta[b, e], dA_acc, dB_part[g, b], dC_part[g, b])
                dbias_part[b, e] = _row_dt_bwd(delta[b, e], bias[e], softplus, ddelta[b, e])
                dA_part[b, e] = dA_acc
                total = ZERO
                for t in range(length):
                    total += gys[t] * u[b, e, t]
                dD_part[b, e] = total


def _sync_threads() -> None:
    """Follow torch's thread count so ``torch.set_num_threads`` governs the kernels too."""
    wanted = torch.get_num_threads()
    numba.set_num_threads(max(1, min(wanted, numba.config.NUMBA_NUM_THREADS)))
    if torch.get_num_threads() != wanted:  # starting numba's OpenMP pool can reset torch's count
        torch.set_num_threads(wanted)


def _flat(t: torch.Tensor) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A (b, e, l) tensor as (its storage span as a flat array, its strides), without copying:
    the forward kernel reads any layout, e.g. transformers' gate, a strided half of in_proj."""
    t = t.detach()
    span = 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
    return torch.as_strided(t, (span,), (1,)).numpy(), t.stride()


class _NumbaScan(torch.autograd.Function):
    """float32 scan; inputs are (u, delta, A, B, C, D, z, delta_bias, softplus), B/C as (b, n, l)."""

    @staticmethod
    def forward(ctx, u, delta, a, bm, cm, d_skip, z, bias, softplus):
        batch, channels, length = u.shape
        zeros = u.new_zeros(channels)
        d_skip = zeros if d_skip is None else d_skip.detach().contiguous()
        bias = zeros if bias is None else bias.detach().contiguous()
        # B and C go (batch, length, state): each time step reads one contiguous state vector.
        bm, cm = (t.detach().transpose(1, 2).contiguous() for t in (bm, cm))
        # Written time-major (what transformers' out_proj reads next), returned as (b, e, l).
        out = u.new_empty(batch, length, channels)
        last = u.new_empty(batch, channels, a.shape[1])
        _sync_threads()
        (u_flat, u_st), (d_flat, d_st), (z_flat, z_st) = (_flat(t) for t in (u, delta, u if z is None else z))
        strides = np.array([u_st, d_st, z_st], dtype=np.int64)
        _scan_fwd_kernel(u_flat, d_flat, z_flat, strides, a.detach().contiguous().numpy(), bm.numpy(),
                         cm.numpy(), d_skip.numpy(), bias.numpy(), z is not None, bool(softplus),
                         out.numpy(), last.numpy())
        out = out.transpose(1, 2)
        ctx.save_for_backward(u.detach(), delta.detach(), a.detach(), bm, cm, d_skip,
                              None if z is None else z.detach(), bias)
        ctx.softplus, ctx.flags = bool(softplus), (ctx.needs_input_grad[5], z is not None,
                                                   ctx.needs_input_grad[7])
        return out, last

    @staticmethod
    def backward(ctx, gout, glast):
        u, delta, a, bm, cm, d_skip, z, bias = (None if t is None else t.contiguous()
                                                for t in ctx.saved_tensors)
        has_d, has_z, has_bias = ctx.flags
        batch, channels, length = u.shape
        groups = min(_GRAD_GROUPS, channels)
        gout = u.new_zeros(u.shape) if gout is None else gout.float().contiguous()
        glast = u.new_zeros(batch, channels, a.shape[1]) if glast is None else glast.float().contiguous()
        du, ddelta, dz = (torch.empty_like(u) for _ in range(3))
        dA_part = u.new_empty(batch, channels, a.shape[1])
        dB_part = u.new_zeros(groups, batch, length, a.shape[1])
        dC_part = torch.zeros_like(dB_part)
        dD_part, dbias_part = u.new_empty(batch, channels), u.new_empty(batch, channels)
        _sync_threads()
        _scan_bwd_kernel(*(t.numpy() for t in (u, delta, a, bm, cm, d_skip, bias)),
                         (u if z is None else z).numpy(), ctx.softplus, has_z, gout.numpy(),
                         glast.numpy(), *(t.numpy() for t in (du, ddelta, dz, dA_part, dB_part,
                                                               dC_part, dD_part, dbias_part)))
        dB = _ordered_sum(dB_part).transpose(1, 2)
        dC = _ordered_sum(dC_part).transpose(1, 2)
        return (du, ddelta, _ordered_sum(dA_part), dB, dC,
                _ordered_sum(dD_part) if has_d else None, dz if has_z else None,
                _ordered_sum(dbias_part) if has_bias else None, None)


def _ordered_sum(parts: torch.Tensor) -> torch.Tensor:
    """Sum over dim 0 in a fixed order (torch's reduction may split work by thread count)."""
    total = parts[0].clone()
    for part in parts[1:]:
        total += part
    return total


# --------------------------------------------------------------------------- public API


def _result_dtypes(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, D: torch.Tensor | None,
                   z: torch.Tensor | None) -> tuple[torch.dtype, torch.dtype]:
    """Output and last-state dtypes of transformers' recurrent path (its type promotions)."""
    out = u.dtype
    if D is not None:
        out = torch.promote_types(out, torch.promote_types(u.dtype, D.dtype))
    if z is not None:
        out = torch.promote_types(out, z.dtype)
    state = torch.promote_types(torch.promote_types(A.dtype, delta.dtype),
                                torch.promote_types(delta.dtype, torch.float32))
    return out, torch.promote_types(state, u.dtype)


def _discretisation_dt(delta: torch.Tensor, delta_bias: torch.Tensor | None, softplus: bool) -> torch.Tensor:
    """dt exactly as transformers forms it (bias added and softplus taken in delta's dtype)."""
    if delta_bias is not None:
        delta = delta + delta_bias.to(delta.dtype)[..., None]
    return F.softplus(delta) if softplus else delta


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                   C: torch.Tensor, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                   delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                   return_last_state: bool = False):
    """Mamba-1 selective scan (the reference semantics of mamba-ssm's ``selective_scan_fn``).

    Shapes: u, delta, z (batch, channels, length); A (channels, state); B, C (batch, state, length);
    D, delta_bias (channels,). Computes in float32, differentiable in every tensor argument.
    Returns ``out`` or ``(out, last_state)``. Without numba, or off the CPU, it runs
    :func:`selective_scan_torch`.
    """
    if BACKEND != "numba" or u.device.type != "cpu":
        return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    out_dtype, state_dtype = _result_dtypes(u, delta, A, D, z)
    if delta.dtype != torch.float32:  # keep transformers' rounding of dt in low precision
        delta, delta_bias, delta_softplus = _discretisation_dt(delta, delta_bias, delta_softplus), None, False
    f32 = [None if t is None else t.float() for t in (u, delta, A, B, C, D, z, delta_bias)]
    out, last = _NumbaScan.apply(*f32, delta_softplus)
    out = out.to(out_dtype)
    return (out, last.to(state_dtype)) if return_last_state else out


def selective_scan_torch(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                         C: torch.Tensor, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                         delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                         return_last_state: bool = False):
    """Pure-PyTorch fallback (same semantics): time-chunked so only (b, e, chunk, n) is materialised."""
    out_dtype, state_dtype = _result_dtypes(u, delta, A, D, z)
    dt = _discretisation_dt(delta, delta_bias, delta_softplus).float()
    uf, af, bf, cf = u.float(), A.float(), B.float(), C.float()
    h = uf.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t0 in range(0, u.shape[2], _TORCH_CHUNK):
        sl = slice(t0, t0 + _TORCH_CHUNK)
        d_a = torch.exp(dt[:, :, sl, None] * af[None, :, None, :])  # (b, e, T, n)
        d_bu = (dt[:, :, sl] * uf[:, :, sl])[..., None] * bf[:, None, :, sl].transpose(2, 3)
        states = []
        for t in range(d_a.shape[2]):
            h = d_a[:, :, t] * h + d_bu[:, :, t]
            states.append(h)
        ys.append(torch.einsum("betn,bnt->bet", torch.stack(states, dim=2), cf[:, :, sl]))
    y = torch.cat(ys, dim=2)
    if D is not None:
        y = y + uf * D.float()[None, :, None]
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(out_dtype)
    return (y, h.to(state_dtype)) if return_last_state else y


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  activation: str | None = None) -> torch.Tensor | None:
    """Depthwise causal conv (optional SiLU) for float32 CPU inputs whose channels are contiguous
    (the mixers' strided view of ``in_proj``'s output), where
    ``F.conv1d`` is ~10x slower than on a contiguous tensor. Returns None for any other case.

    Without autograd the conv runs in a numba kernel that writes time-major output (what the
    mixer's x_proj and the scan read next); with autograd the input is made contiguous for
    ``F.conv1d``.
    """
    if not (x.device.type == "cpu" and x.dim() == 3 and x.stride(1) == 1 and weight.dim() == 2
            and activation in (None, "silu", "swish") and x.dtype == weight.dtype == torch.float32
            and (bias is None or bias.dtype == torch.float32)):
        return None
    if BACKEND != "numba" or (torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, weight, bias))):
        out = F.conv1d(x.contiguous(), weight.unsqueeze(1), bias, padding=weight.shape[1] - 1,
                       groups=x.shape[1])[..., :x.shape[2]]
        return F.silu(out) if activation is not None else out
    batch, channels, length = x.shape
    out = x.new_empty(batch, length, channels)
    flat, strides = _flat(x)
    bias = x.new_zeros(channels) if bias is None else bias.detach().contiguous()
    _sync_threads()
    _conv_kernel(flat, np.array(strides, dtype=np.int64), weight.detach().t().contiguous().numpy(),
                 bias.numpy(), activation is not None, out.numpy())
    return out.transpose(1, 2)
