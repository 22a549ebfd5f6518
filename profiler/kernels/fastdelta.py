"""The gated delta rule (Gated DeltaNet: Qwen3-Next, Qwen3.5) over a full sequence, on any device.

Per sequence and value head h, with q and k L2-normalised (eps 1e-6 inside the root, as the FLA
library and transformers do) and q scaled by 1/sqrt(head_k_dim), the state S (head_k_dim x head_v_dim)
runs

    S_t = exp(g_t) S_{t-1} + k_t delta_t^T,   delta_t = beta_t (v_t - exp(g_t) S_{t-1}^T k_t),
    o_t = S_t^T q_t.

q and k may have fewer heads than v (num_v_heads a multiple of num_k_heads): key head i serves the
num_v/num_k consecutive value heads from i·num_v/num_k, as ``repeat_interleave`` over heads lays them.

Two implementations of one meaning (they agree to float32 rounding, never bit for bit):

* :func:`gated_delta_chunked`: the chunked (WY / UT-transform) form in PyTorch, differentiable, any
  device: within a chunk a triangular solve condenses the delta updates into matrix products, and the
  state is carried from chunk to chunk;
* :func:`gated_delta_scan`: forward only, the recurrence itself as one numba kernel on the CPU, one
  (sequence, value head) job at a time with its state in cache: per token one pass reads S^T k and
  S^T q together with the previous token's update. Elsewhere (or without numba) it runs the chunked
  form.

This module knows nothing of transformers or of ssm_profile: only torch, numpy and numba.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:
    import numba
    import numpy as np

    BACKEND = "numba"
except ImportError:  # the chunked PyTorch form serves every call
    numba = None
    BACKEND = "torch"

L2_EPS = 1e-6  # transformers' l2norm and FLA's: x * rsqrt(sum(x²) + eps)
CHUNK = 64  # transformers' default chunk; what the differentiable form uses unless told otherwise

Result = tuple[torch.Tensor, torch.Tensor | None]


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 for float64 inputs (an oracle's precision), float32 for everything else (as transformers)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def normalise_qk(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k in :func:`compute_dtype`, L2-normalised over the head dimension; q also scaled by
    1/sqrt(head_k_dim)."""
    q, k = q.to(compute_dtype(q)), k.to(compute_dtype(q))
    q = q * torch.rsqrt((q * q).sum(-1, keepdim=True) + L2_EPS)
    k = k * torch.rsqrt((k * k).sum(-1, keepdim=True) + L2_EPS)
    return q * q.shape[-1] ** -0.5, k


def _check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor) -> int:
    """Value heads per key head, after checking the layout."""
    batch, length, k_heads, _ = k.shape
    v_heads = v.shape[2]
    if q.shape != k.shape or v.shape[:2] != (batch, length) or g.shape != (batch, length, v_heads) \
            or beta.shape != g.shape or v_heads % k_heads:
        raise ValueError(f"gated delta rule: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, "
                         f"g {tuple(g.shape)}, beta {tuple(beta.shape)} do not fit (b, l, h, d) with "
                         "num_v_heads a multiple of num_k_heads")
    return v_heads // k_heads


def gated_delta_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                        chunk_size: int = CHUNK, initial_state: torch.Tensor | None = None,
                        output_final_state: bool = False) -> Result:
    """The gated delta rule in its chunked form (differentiable, any device).

    q, k (b, l, num_k_heads, head_k_dim) raw (normalised here); v (b, l, num_v_heads, head_v_dim);
    g (log decay, <= 0) and beta (b, l, num_v_heads); initial_state (b, num_v_heads, head_k_dim,
    head_v_dim). Computes in float32 (float64 for float64 q). Returns o (b, l, num_v_heads, head_v_dim)
    in q's dtype and the final state in the compute dtype (None unless ``output_final_state``)."""
    ratio = _check_shapes(q, k, v, g, beta)
    dtype, length = q.dtype, q.shape[1]
    qn, kn = normalise_qk(q, k)
    if ratio > 1:
        qn, kn = qn.repeat_interleave(ratio, dim=2), kn.repeat_interleave(ratio, dim=2)
    # (b, h, l, ...) in float32, padded to whole chunks: a padded step has g = 0 (no decay) and
    # beta = 0 (no update), so it changes neither the outputs before it nor the final state
    size = max(1, min(int(chunk_size), length))
    pad = (-length) % size
    work = qn.dtype
    qn, kn, vf = (F.pad(x.transpose(1, 2), (0, 0, 0, pad)) for x in (qn, kn, v.to(work)))
    gf, bf = (F.pad(x.to(work).transpose(1, 2), (0, pad)) for x in (g, beta))
    batch, heads, padded, _ = kn.shape
    chunks = padded // size
    qc, kc, vc = (x.reshape(batch, heads, chunks, size, -1) for x in (qn, kn, vf))
    gamma = gf.reshape(batch, heads, chunks, size).cumsum(-1)  # log decay from the chunk's start
    bc = bf.reshape(batch, heads, chunks, size, 1)

    lower = torch.ones(size, size, dtype=torch.bool, device=q.device).tril()
    decay = (gamma[..., :, None] - gamma[..., None, :]).masked_fill(~lower, float("-inf")).exp()  # (.., i, j)
    kb = kc * bc
    # (I + A) u = beta v and (I + A) w = beta exp(gamma) k, A strictly lower: the chunk's delta
    # updates as one unit-triangular system (its diagonal is taken as ones)
    system = (kb @ kc.transpose(-1, -2)) * decay
    u = torch.linalg.solve_triangular(system, vc * bc, upper=False, unitriangular=True)
    w = torch.linalg.solve_triangular(system, kb * gamma.exp()[..., None], upper=False, unitriangular=True)
    scores = (qc @ kc.transpose(-1, -2)) * decay
    q_read = qc * gamma.exp()[..., None]  # q of step i reads the chunk's initial state decayed to i
    k_write = kc * (gamma[..., -1:] - gamma).exp()[..., None]  # k of step i, decayed to the chunk's end
    carry = gamma[..., -1].exp()[..., None, None]

    state = (kn.new_zeros(batch, heads, kn.shape[-1], vf.shape[-1]) if initial_state is None
             else initial_state.to(work))
    outs = []
    for c in range(chunks):
        fresh = u[:, :, c] - w[:, :, c] @ state  # what the state does not already predict
        outs.append(q_read[:, :, c] @ state + scores[:, :, c] @ fresh)
        state = state * carry[:, :, c] + k_write[:, :, c].transpose(-1, -2) @ fresh
    o = torch.cat(outs, dim=2)[:, :, :length].transpose(1, 2).to(dtype)
    return o.contiguous(), state if output_final_state else None


if BACKEND == "numba":

    # The kernel keeps each state transposed, S^T (head_v_dim x head_k_dim): a row is one value
    # channel, so the reads S^T k, S^T q are row dot products (vectorised reductions) and the
    # update of a row and its reads for the next token happen in one sweep over it.

    @numba.njit(cache=True, fastmath=True, error_model="numpy")
    def _read(st, kt, qt, read_k, read_q):
        """read_k = S^T k, read_q = S^T q."""
        for j in range(st.shape[0]):
            row = st[j]
            ak, aq = np.float32(0.0), np.float32(0.0)
            for i in range(row.shape[0]):
                ak += row[i] * kt[i]
                aq += row[i] * qt[i]
            read_k[j], read_q[j] = ak, aq

    @numba.njit(cache=True, fastmath=True, error_model="numpy")
    def _update_and_read(st, a, kt, delta, k_next, q_next, read_k, read_q):
        """S <- a S + k delta^T, and the next token's reads of the new S in the same sweep."""
        for j in range(st.shape[0]):
            row, dj = st[j], delta[j]
            ak, aq = np.float32(0.0), np.float32(0.0)
            for i in range(row.shape[0]):
                s = a * row[i] + dj * kt[i]
                row[i] = s
                ak += s * k_next[i]
                aq += s * q_next[i]
            read_k[j], read_q[j] = ak, aq

    @numba.njit(cache=True, fastmath=True, error_model="numpy")
    def _update(st, a, kt, delta):
        for j in range(st.shape[0]):
            row, dj = st[j], delta[j]
            for i in range(row.shape[0]):
                row[i] = a * row[i] + dj * kt[i]

    @numba.njit(cache=True, fastmath=True, parallel=True, error_model="numpy")
    def _delta_fwd_kernel(q, k, v, g, beta, ratio, state_t, out):
        """q, k (b, l, hk, dk) normalised and scaled; v (b, l, hv, dv); g, beta (b, l, hv): float32,
        C-contiguous. state_t (b, hv, dv, dk), the transposed states, holds the initial ones and
        receives the final ones; writes out (b, l, hv, dv). One sweep over the state per token."""
        batch, length, heads, dv = v.shape
        dk = k.shape[3]
        for job in numba.prange(batch * heads):
            b, h = job // heads, job % heads
            kh = h // ratio
            st = state_t[b, h]
            read_k = np.empty(dv, np.float32)
            read_q = np.empty(dv, np.float32)
            delta = np.empty(dv, np.float32)
            if length > 0:
                _read(st, k[b, 0, kh], q[b, 0, kh], read_k, read_q)
            for t in range(length):
                kt, qt, vt, ot = k[b, t, kh], q[b, t, kh], v[b, t, h], out[b, t, h]
                a = np.exp(g[b, t, h])
                bt = beta[b, t, h]
                kq = np.float32(0.0)
                for i in range(dk):
                    kq += kt[i] * qt[i]
                for j in range(dv):  # o_t = S_t^T q = a S_{t-1}^T q + delta (k . q)
                    d = bt * (vt[j] - a * read_k[j])
                    delta[j] = d
                    ot[j] = a * read_q[j] + kq * d
                if t + 1 < length:
                    _update_and_read(st, a, kt, delta, k[b, t + 1, kh], q[b, t + 1, kh], read_k, read_q)
                else:
                    _update(st, a, kt, delta)


def _sync_threads() -> None:
    """Follow torch's thread count so ``torch.set_num_threads`` governs the kernel too."""
    wanted = torch.get_num_threads()
    numba.set_num_threads(max(1, min(wanted, numba.config.NUMBA_NUM_THREADS)))
    if torch.get_num_threads() != wanted:  # starting numba's pool can reset torch's count
        torch.set_num_threads(wanted)


def gated_delta_scan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                     initial_state: torch.Tensor | None = None, output_final_state: bool = False) -> Result:
    """The gated delta rule, forward only: :func:`gated_delta_chunked`'s meaning and signature (no
    chunk size), computed by the numba recurrence (float32) on the CPU, by the chunked form anywhere
    else and for float64."""
    ratio = _check_shapes(q, k, v, g, beta)
    if BACKEND != "numba" or q.device.type != "cpu" or q.dtype == torch.float64:
        return gated_delta_chunked(q.detach(), k.detach(), v.detach(), g.detach(), beta.detach(),
                                   initial_state=None if initial_state is None else initial_state.detach(),
                                   output_final_state=output_final_state)
    with torch.no_grad():
        qn, kn = normalise_qk(q, k)
        qn, kn, vf, gf, bf = (x.float().contiguous() for x in (qn, kn, v, g, beta))
        batch, length, heads, dv = vf.shape
        state_t = (vf.new_zeros(batch, heads, dv, kn.shape[-1]) if initial_state is None
                   else initial_state.float().transpose(2, 3).contiguous())
        out = vf.new_empty(batch, length, heads, dv)
        _sync_threads()
        _delta_fwd_kernel(qn.numpy(), kn.numpy(), vf.numpy(), gf.numpy(), bf.numpy(), ratio, state_t.numpy(),
                          out.numpy())
    return out.to(q.dtype), state_t.transpose(2, 3).contiguous() if output_final_state else None
