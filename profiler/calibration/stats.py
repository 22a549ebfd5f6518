"""One pass (or two) over calibration data that gathers what the pruning criteria read.

``collect_stats(model, tokens, needs)`` fills a :class:`~ssm_profile.criteria.base.CalibrationStats`
with only what ``needs`` asks for:

``inputs``  per input channel of every linear-like operation of every mixer: ``sq`` = Σ x²,
            ``sum`` = Σ x (float64) and ``n`` = how many values were summed per entry (0-d int64),
            keyed ``f"{mixer.path}.{key}"``:

            ============ =========================== ===================================================
            key          shape                       what
            ============ =========================== ===================================================
            in_proj      (hidden,)                   in_proj input (the block's normed hidden states);
                                                     Gated DeltaNet: the input of all its in_proj_*;
                                                     KDA: of q/k/v/b_proj, f_a_proj and g_a_proj
            conv1d       (conv channels,)            conv input: Mamba-1 the x half of in_proj's output
                                                     (E); Mamba-2 the xBC part (E + 2GN); Gated
                                                     DeltaNet q, k, v (2·key_dim + value_dim); KDA
                                                     q_proj, k_proj, v_proj outputs (3·heads·d)
            f_b_proj     (r_f,)                      KDA: the decay's low-rank input, f_a_proj's output
            g_b_proj     (r_g,)                      KDA: the output gate's low-rank input
            x_proj       (E,)                        Mamba-1: silu(conv(x)), the scan input x
            dt_proj      (R,)                        Mamba-1: the dt part of x_proj's output (after a
                                                     ``dt_layernorm`` where the mixer has one)
            x            (E,)                        Mamba-2: the scan input x (x part of silu(conv(xBC)))
            D            (E,) / (nH,)                what D multiplies: the scan input x; Mamba-2 per
                                                     head, summed over the head's P channels
                                                     (``n`` = tokens·P there)
            norm         (E,)                        Mamba-2: y·silu(gate), what the gated RMSNorm
                                                     normalises
            out_proj     (E,)                        out_proj input (KDA: o_proj's)
            ============ =========================== ===================================================

            Zamba (v1): as Mamba-1 but no dt_proj input and no x_proj/dt_proj Hessian (per-head parameters).

            Forward hooks on ``conv1d`` and ``dt_proj`` never fire in transformers 5.x (their weights
            are used directly), so their inputs are read off ``in_proj``'s and ``x_proj``'s outputs,
            and Mamba-2's conv output is recomputed from the captured xBC.

``hessians`` X^T X (sum over tokens; per batch in float32, accumulated in ``hessian_dtype``) of
            the in_proj, x_proj, dt_proj and out_proj inputs, same keys; the token count is
            ``inputs[key]["n"]`` (inputs are always filled for these keys when hessians are asked for).

``grads``   per mixer parameter (full name): Σ g and Σ g² over gradient micro-batches, where g is
            the gradient of the mean token loss of ``grad_batch_size`` sequences (default one
            sequence, so the statistics do not depend on ``batch_size``); ``grad_batches`` = how
            many micro-batches.  No ``.grad``, ``requires_grad`` change or train/eval change is left
            behind.

``ssm``     per mixer path, sums over tokens (``n`` = token count):
            Mamba-1: ``dt_sum`` (E) Σ dt_c; ``dt2_sum`` (E) Σ dt_c²; ``dt2x2_sum`` (E) Σ dt_c² x_c²;
            ``x2_sum`` (E) Σ x_c²;
            ``B2_sum`` (N) Σ B_n²; ``C2_sum`` (N) Σ C_n², with dt = softplus(dt_proj.W·dt_raw + b).
            Mamba-2: ``dt_sum`` (nH) Σ dt_h; ``dt2_sum`` (nH) Σ dt_h²; ``dt2x2_sum`` (E) Σ dt_h² x_hp²; ``x2_sum`` (E);
            ``B2_sum``/``C2_sum`` (G·N) per group and state, with dt = clamp(softplus(dt_raw + dt_bias),
            time_step_limit).

``tokens``  the calibration ids.

Everything is a sum over tokens, so the result is the same for any ``batch_size`` (up to float
rounding). ``progress(done, total, label)`` is called after each batch when given: sequences done
over both passes, their total, and the pass ("activations" or "gradients"). All statistics are returned on the CPU.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..model.arch import GATED_DELTA, KDA, MAMBA1, MixerInfo, find_mixers
from ..criteria.base import CalibrationStats
from ..mixers.choice import model_device
from .offload import STATS_PREFIX, DiskTensors

NEEDS = frozenset({"inputs", "hessians", "grads", "ssm", "tokens"})
HESSIAN_GROUPS = ("in_proj", "x_proj", "dt_proj", "out_proj")

Progress = Callable[[int, int, str], None]  # (done, total, label), as ssm_profile.cli.progress


class _Acc:
    """Accumulates the per-channel statistics of one mixer during the activation pass."""

    def __init__(self, stats: CalibrationStats, want: set[str], hessian_dtype: torch.dtype):
        self.stats = stats
        self.want = want
        self.hessian_dtype = hessian_dtype
        self.hessians: dict[str, torch.Tensor] = {}  # this pass's XᵀX (moved to stats.hessians after it)

    def channels(self, key: str, x: torch.Tensor, per: int = 1) -> None:
        """x: (..., d) -> Σx², Σx per channel; ``per`` values summed per entry (Mamba-2 D)."""
        x = x.detach().reshape(-1, x.shape[-1]).double()
        tokens = x.shape[0]
        if per > 1:
            x = x.reshape(tokens, -1, per)
            sq, s = (x * x).sum(dim=(0, 2)), x.sum(dim=(0, 2))
        else:
            sq, s = (x * x).sum(0), x.sum(0)
        entry = self.stats.inputs.get(key)
        if entry is None:
            self.stats.inputs[key] = {"sq": sq, "sum": s, "n": torch.tensor(tokens * per, dtype=torch.int64)}
        else:
            entry["sq"] += sq
            entry["sum"] += s
            entry["n"] += tokens * per

    def hessian(self, key: str, x: torch.Tensor) -> None:
        # one batch's XᵀX in (at least) float32, accumulated over batches in ``hessian_dtype``
        x = x.detach().reshape(-1, x.shape[-1])
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        h = (x.T @ x).to(self.hessian_dtype)
        if key in self.hessians:
            self.hessians[key] += h
        else:
            self.hessians[key] = h

    def linear_input(self, key: str, x: torch.Tensor) -> None:
        """A linear layer's input: channel stats when inputs or hessians are wanted, X^T X if hessians."""
        if self.want & {"inputs", "hessians"}:
            self.channels(key, x)
        if "hessians" in self.want:
            self.hessian(key, x)

    def ssm(self, path: str, **sums: torch.Tensor) -> None:
        entry = self.stats.ssm.setdefault(path, {})
        for name, value in sums.items():
            value = value.detach().double() if value.is_floating_point() else value
            if name in entry:
                entry[name] += value
            else:
                entry[name] = value.clone()


def _tok(x: torch.Tensor) -> torch.Tensor:
    """Flatten leading dims: (..., d) -> (T, d) in float64."""
    return x.detach().reshape(-1, x.shape[-1]).double()


def _mamba1_hooks(m: MixerInfo, acc: _Acc) -> list:
    mod, path, want = m.module, m.path, acc.want
    E, N, R = m.intermediate_size, m.state_size, m.dt_rank
    handles = []

    def in_proj_hook(_mod, args, out):
        acc.linear_input(f"{path}.in_proj", args[0])
        if "inputs" in want:
            acc.channels(f"{path}.conv1d", out[..., :E])

    def x_proj_hook(_mod, args, out):
        x = args[0]
        acc.linear_input(f"{path}.x_proj", x)
        if "inputs" in want:
            acc.channels(f"{path}.D", x)
        dt_raw, B, C = torch.split(out, [R, N, N], dim=-1)
        # FalconMamba / Jamba normalise dt, B and C before use
        if getattr(mod, "dt_layernorm", None) is not None:
            dt_raw = mod.dt_layernorm(dt_raw)
        if getattr(mod, "b_layernorm", None) is not None:
            B = mod.b_layernorm(B)
        if getattr(mod, "c_layernorm", None) is not None:
            C = mod.c_layernorm(C)
        acc.linear_input(f"{path}.dt_proj", dt_raw)
        if "ssm" in want:
            w = mod.dt_proj.weight
            bias = mod.dt_proj.bias
            pre = _tok(dt_raw) @ w.detach().double().T
            if bias is not None:
                pre = pre + bias.detach().double()
            dt = F.softplus(pre)  # (T, E)
            xt = _tok(x)
            acc.ssm(path, dt_sum=dt.sum(0), dt2_sum=(dt * dt).sum(0), dt2x2_sum=(dt * dt * xt * xt).sum(0),
                    x2_sum=(xt * xt).sum(0),
                    B2_sum=(_tok(B) ** 2).sum(0), C2_sum=(_tok(C) ** 2).sum(0),
                    n=torch.tensor(xt.shape[0], dtype=torch.int64))

    def out_proj_hook(_mod, args, out):
        acc.linear_input(f"{path}.out_proj", args[0])

    handles.append(mod.in_proj.register_forward_hook(in_proj_hook))
    if want & {"inputs", "hessians", "ssm"}:
        handles.append(mod.x_proj.register_forward_hook(x_proj_hook))
    handles.append(mod.out_proj.register_forward_hook(out_proj_hook))
    return handles


def _zamba_hooks(m: MixerInfo, acc: _Acc) -> list:
    """Zamba (v1): hooks on in_proj and out_proj (x_proj/dt_proj are raw per-head parameters); the scan input
    is recomputed from in_proj's x rows (interleaved with z) by :func:`mamba2_conv`, the SSM sums head by head."""
    mod, path, want = m.module, m.path, acc.want

    def in_proj_hook(_mod, args, out):
        acc.linear_input(f"{path}.in_proj", args[0])
        x = out[..., 0::2]
        if "inputs" in want:
            acc.channels(f"{path}.conv1d", x)
        if want & {"inputs", "ssm"}:
            _zamba_scan_input(m, acc, mamba2_conv(m, x))

    def out_proj_hook(_mod, args, out):
        acc.linear_input(f"{path}.out_proj", args[0])

    return [mod.in_proj.register_forward_hook(in_proj_hook), mod.out_proj.register_forward_hook(out_proj_hook)]


def _zamba_scan_input(m: MixerInfo, acc: _Acc, x: torch.Tensor) -> None:
    """x: the scan input (B, L, E) in float64. x_proj/D channel statistics, and the Mamba-1 SSM sums with
    dt per channel (head after head) and B², C² summed over the heads (a state unit is state n of every head)."""
    mod, H, P, N, R = m.module, m.num_heads, m.head_dim, m.state_size, m.dt_rank
    if "inputs" in acc.want:
        acc.channels(f"{m.path}.x_proj", x)
        acc.channels(f"{m.path}.D", x)
    if "ssm" not in acc.want:
        return
    xt = _tok(x)  # (T, E)
    xh = xt.view(-1, H, P).transpose(0, 1)  # (H, T, P)
    proj = xh @ mod.x_proj_weight.detach().double().transpose(1, 2)  # (H, T, R + 2N)
    dt_raw, B, C = torch.split(proj, [R, N, N], dim=-1)
    pre = dt_raw @ mod.dt_proj_weight.detach().double().transpose(1, 2) + mod.dt_proj_bias.detach().double()[:, None]
    dt = F.softplus(pre).transpose(0, 1).reshape(xt.shape)  # (T, E)
    acc.ssm(m.path, dt_sum=dt.sum(0), dt2_sum=(dt * dt).sum(0), dt2x2_sum=(dt * dt * xt * xt).sum(0),
            x2_sum=(xt * xt).sum(0), B2_sum=(B * B).sum(dim=(0, 1)), C2_sum=(C * C).sum(dim=(0, 1)),
            n=torch.tensor(xt.shape[0], dtype=torch.int64))


def mamba2_conv(m: MixerInfo, xbc: torch.Tensor) -> torch.Tensor:
    """Causal depthwise conv + activation of a Mamba-2 mixer on xBC (B, L, C) -> (B, L, C), float64 (also
    Zamba's conv on its x rows)."""
    mod = m.module
    L, K = xbc.shape[1], m.conv_kernel
    w = mod.conv1d.weight.detach().double()
    b = mod.conv1d.bias.detach().double() if mod.conv1d.bias is not None else None
    y = F.conv1d(xbc.detach().double().transpose(1, 2), w, b, padding=K - 1, groups=w.shape[0])[..., :L]
    act = getattr(mod, "act", None) or F.silu
    return act(y).transpose(1, 2)


def _mamba2_hooks(m: MixerInfo, acc: _Acc) -> list:
    mod, path, want = m.module, m.path, acc.want
    E, N, H, P, G = m.intermediate_size, m.state_size, m.num_heads, m.head_dim, m.n_groups
    conv_dim = m.conv_channels
    handles = []

    def in_proj_hook(_mod, args, out):
        acc.linear_input(f"{path}.in_proj", args[0])
        if not want & {"inputs", "ssm"}:
            return
        _z, xbc, dt_raw = torch.split(out, [E, conv_dim, H], dim=-1)
        if "inputs" in want:
            acc.channels(f"{path}.conv1d", xbc)
        xbc_out = mamba2_conv(m, xbc)
        x, B, C = torch.split(xbc_out, [E, G * N, G * N], dim=-1)
        if "inputs" in want:
            acc.channels(f"{path}.x", x)
            acc.channels(f"{path}.D", x, per=P)
        if "ssm" in want:
            dt = F.softplus(_tok(dt_raw) + mod.dt_bias.detach().double())
            lo, hi = getattr(mod, "time_step_limit", (0.0, float("inf")))
            dt = dt.clamp(min=lo, max=hi)  # (T, H)
            xt = _tok(x)
            dt_ch = dt.repeat_interleave(P, dim=1)  # (T, E)
            acc.ssm(path, dt_sum=dt.sum(0), dt2_sum=(dt * dt).sum(0), dt2x2_sum=(dt_ch**2 * xt**2).sum(0),
                    x2_sum=(xt**2).sum(0),
                    B2_sum=(_tok(B) ** 2).sum(0), C2_sum=(_tok(C) ** 2).sum(0),
                    n=torch.tensor(xt.shape[0], dtype=torch.int64))

    def norm_hook(_mod, args, kwargs, out):
        y = args[0] if args else kwargs["hidden_states"]
        gate = args[1] if len(args) > 1 else kwargs.get("gate")
        v = y.detach().float()
        if gate is not None:
            v = v * F.silu(gate.detach().float())
        acc.channels(f"{path}.norm", v)

    def out_proj_hook(_mod, args, out):
        acc.linear_input(f"{path}.out_proj", args[0])

    handles.append(mod.in_proj.register_forward_hook(in_proj_hook))
    if "inputs" in want and isinstance(getattr(mod, "norm", None), nn.Module):
        handles.append(mod.norm.register_forward_hook(norm_hook, with_kwargs=True))
    handles.append(mod.out_proj.register_forward_hook(out_proj_hook))
    return handles


def _gated_delta_hooks(m: MixerInfo, acc: _Acc) -> list:
    """Gated DeltaNet: every input projection reads the same hidden states (one ``in_proj`` entry);
    the conv input is the first projection's q, k, v rows in conv order; and out_proj's input.
    No ``ssm`` statistics: the SSM criteria are defined on Mamba's selective scan."""
    mod, path, want = m.module, m.path, acc.want
    rows = m.conv_input_rows()

    def in_proj_hook(_mod, args, out):
        acc.linear_input(f"{path}.in_proj", args[0])
        if "inputs" in want:
            acc.channels(f"{path}.conv1d", out.index_select(-1, rows.to(out.device)))

    def out_proj_hook(_mod, args, out):
        acc.linear_input(f"{path}.out_proj", args[0])

    first = mod.in_proj_qkvz if m.packed else mod.in_proj_qkv
    return [first.register_forward_hook(in_proj_hook), mod.out_proj.register_forward_hook(out_proj_hook)]


def _kda_hooks(m: MixerInfo, acc: _Acc) -> list:
    """Kimi delta attention: q/k/v_proj, b_proj and the two a-projections read the hidden states (one
    ``in_proj`` entry); the conv input is [q, k, v] as the forward concatenates them (q, k and v run in
    that order); each b-projection's input is its own entry, o_proj's input is ``out_proj``. No ``ssm``
    statistics: the SSM criteria are defined on Mamba's selective scan."""
    mod, path, want = m.module, m.path, acc.want
    held: dict[str, torch.Tensor] = {}

    def q_hook(_mod, args, out):
        acc.linear_input(f"{path}.in_proj", args[0])
        if "inputs" in want:
            held["q"] = out

    def k_hook(_mod, args, out):
        if "inputs" in want:
            held["k"] = out

    def v_hook(_mod, args, out):
        if "inputs" in want and "q" in held and "k" in held:
            acc.channels(f"{path}.conv1d", torch.cat([held.pop("q"), held.pop("k"), out], dim=-1))

    def input_of(key: str):
        return lambda _mod, args, out: acc.linear_input(f"{path}.{key}", args[0])

    pairs = [(mod.q_proj, q_hook), (mod.k_proj, k_hook), (mod.v_proj, v_hook),
             (mod.forget_gate.f_b_proj, input_of("f_b_proj")), (mod.g_b_proj, input_of("g_b_proj")),
             (mod.o_proj, input_of("out_proj"))]
    return [linear.register_forward_hook(hook) for linear, hook in pairs]


def _hooks(m: MixerInfo, acc: _Acc) -> list:
    if m.kind == GATED_DELTA:
        return _gated_delta_hooks(m, acc)
    if m.kind == KDA:
        return _kda_hooks(m, acc)
    if m.multi_head:
        return _zamba_hooks(m, acc)
    return _mamba1_hooks(m, acc) if m.kind == MAMBA1 else _mamba2_hooks(m, acc)


def _batches(tokens: torch.Tensor, size: int) -> Iterable[torch.Tensor]:
    for start in range(0, tokens.shape[0], size):
        yield tokens[start:start + size]


def hessian_dims(m: MixerInfo) -> list[int]:
    """Input widths of the linear layers whose XᵀX ``hessians`` collects for mixer ``m``."""
    if m.kind == GATED_DELTA:  # every input projection reads the hidden states
        return [m.hidden_size, m.intermediate_size]
    if m.kind == KDA:  # the hidden states, o_proj's input, and the two low-rank inputs
        return [m.hidden_size, m.intermediate_size, m.dims()["decay_rank"], m.dims()["gate_rank"]]
    groups = HESSIAN_GROUPS if m.kind == MAMBA1 and not m.multi_head else ("in_proj", "out_proj")
    return [getattr(m.module, g).weight.shape[1] for g in groups]


def statistics_bytes(m: MixerInfo, needs: Iterable[str], hessian_dtype: torch.dtype = torch.float64) -> int:
    """Bytes of the large statistics of mixer ``m`` that ``needs`` collects: XᵀX and the two
    gradient sums (the per-channel ones are a few vectors and are left out)."""
    needs = set(needs)
    size = 0
    if "hessians" in needs:
        size += sum(d * d for d in hessian_dims(m)) * hessian_dtype.itemsize
    if "grads" in needs:
        size += 2 * 4 * sum(p.numel() for p in m.module.parameters())  # Σg, Σg² in float32
    return size


def layer_chunks(mixers: list[MixerInfo], needs: Iterable[str], budget: int | None,
                 hessian_dtype: torch.dtype = torch.float64) -> list[list[MixerInfo]]:
    """Consecutive mixers whose ``needs`` statistics fit ``budget`` bytes together (at least one
    mixer each); one chunk of all mixers when ``budget`` is None or they all fit."""
    chunks: list[list[MixerInfo]] = [[]]
    held = 0
    for m in mixers:
        size = statistics_bytes(m, needs, hessian_dtype)
        if budget is not None and chunks[-1] and held + size > budget:
            chunks.append([])
            held = 0
        chunks[-1].append(m)
        held += size
    return chunks


def collect_stats(model: nn.Module, tokens: torch.Tensor, needs: Iterable[str], batch_size: int = 8,
                  progress: Progress | None = None, *, grad_batch_size: int = 1,
                  hessian_dtype: torch.dtype = torch.float64, seed: int = 0,
                  memory_budget: int | None = None, offload_dir: str | Path | None = None) -> CalibrationStats:
    """Gather what ``needs`` asks for (see the module docstring) from ``tokens`` (nsamples, seqlen).

    ``memory_budget``: bytes the large statistics (XᵀX, gradient sums) may hold in RAM at once.
    None, or enough for all of them: one pass each, everything in RAM. Otherwise the bounded path:
    each pass runs once per chunk of layers (:func:`layer_chunks`) that fits the budget, moves
    that chunk's statistics to disk (:class:`~ssm_profile.calibration.offload.DiskTensors` under
    ``offload_dir``) before the next, and the gradient pass recomputes each block's activations in
    backward instead of keeping them. The numbers are the same either way (same batches, same
    float operations in the same order); only where they are kept changes.
    """
    needs = set(needs)
    unknown = needs - NEEDS
    if unknown:
        raise ValueError(f"unknown statistics {sorted(unknown)}; choose from {sorted(NEEDS)}")
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    if tokens.ndim != 2:
        raise ValueError(f"calibration tokens must be (nsamples, seqlen), got shape {tuple(tokens.shape)}")
    stats = CalibrationStats(seed=seed)
    if "tokens" in needs:
        stats.tokens = tokens.clone()
    mixers = find_mixers(model)
    want = needs & {"inputs", "hessians", "ssm"}
    bounded = memory_budget is not None and sum(statistics_bytes(m, needs, hessian_dtype) for m in mixers) > memory_budget
    budget = memory_budget if bounded else None
    hessian_chunks = layer_chunks(mixers, want, budget, hessian_dtype) if want else []
    grad_chunks = layer_chunks(mixers, {"grads"}, budget) if "grads" in needs else []
    if bounded:
        stats.hessians = DiskTensors(offload_dir, prefix=f"{STATS_PREFIX}hessians-")
        stats.grad_sum = DiskTensors(offload_dir, prefix=f"{STATS_PREFIX}grad-sums-")
        stats.grad_sq_sum = DiskTensors(offload_dir, prefix=f"{STATS_PREFIX}grad-squares-")
    device = model_device(model)
    was_training = model.training
    n = tokens.shape[0]
    total = n * (len(hessian_chunks) + len(grad_chunks))
    done = 0
    try:
        model.eval()
        for chunk in hessian_chunks:
            note = (lambda k, label, at=done: progress(at + k, total, label)) if progress else None
            _activation_pass(model, chunk, tokens, want, batch_size, note, hessian_dtype, device, stats)
            done += n
        for chunk in grad_chunks:
            note = (lambda k, label, at=done: progress(at + k, total, label)) if progress else None
            counted = chunk is grad_chunks[0]
            _gradient_pass(model, chunk, tokens, grad_batch_size, note, device, stats, count=counted,
                           checkpoint=bounded)
            done += n
    finally:
        model.train(was_training)
    return _to_cpu(stats)


def _to_cpu(stats: CalibrationStats) -> CalibrationStats:
    """Statistics live on the CPU (criteria score on the CPU, whatever device the model is on);
    offloaded ones are on disk already."""

    def cpu(tensors):
        return {k: v.cpu() for k, v in tensors.items()} if isinstance(tensors, dict) else tensors

    stats.inputs = {k: cpu(v) for k, v in stats.inputs.items()}
    stats.hessians = cpu(stats.hessians)
    stats.grad_sum = cpu(stats.grad_sum)
    stats.grad_sq_sum = cpu(stats.grad_sq_sum)
    stats.ssm = {k: cpu(v) for k, v in stats.ssm.items()}
    if stats.tokens is not None:
        stats.tokens = stats.tokens.cpu()
    return stats


class _ChunkDone(Exception):
    """Raised by the last hook of a chunk: the rest of the forward pass is not needed."""


def _activation_pass(model, mixers, tokens, want, batch_size, progress, hessian_dtype, device, stats) -> None:
    """One activation pass over ``tokens`` for ``mixers``; their XᵀX accumulate in RAM, then go
    into ``stats.hessians`` (a dict, or the disk store of the bounded path)."""
    acc = _Acc(stats, want, hessian_dtype)
    handles = []
    finished = []

    def stop_after_last(_mod, _args, _out):
        finished.append(True)
        if len(finished) == len(mixers):
            raise _ChunkDone

    try:
        for m in mixers:
            handles += _hooks(m, acc)
            handles.append(m.out_linear.register_forward_hook(stop_after_last))
        done = 0
        with torch.no_grad():
            for ids in _batches(tokens, max(1, batch_size)):
                finished.clear()
                try:
                    model(input_ids=ids.to(device), use_cache=False)
                except _ChunkDone:
                    pass
                done += ids.shape[0]
                if progress:
                    progress(done, "activations")
    finally:
        for h in handles:
            h.remove()
    if "hessians" in want and "inputs" not in want:
        # keep only the entries that give the hessians their token counts
        stats.inputs = {k: v for k, v in stats.inputs.items() if k in acc.hessians or k in stats.hessians}
    stats.hessians.update(acc.hessians)


def _gradient_pass(model, mixers, tokens, grad_batch_size, progress, device, stats, *, count: bool = True,
                   checkpoint: bool = False) -> None:
    """Σg and Σg² of ``mixers``' parameters over gradient micro-batches of ``tokens``.

    Every mixer's parameters take part in backward, whichever are kept, so that each chunk of the
    bounded path runs the very backward graph of the in-memory path (a smaller graph rounds some
    gradients differently). Each parameter's gradient is added to its sums (``mixers``' only) as
    soon as backward has computed it and then freed, so no full set of ``.grad`` is ever held.
    ``count``: add the micro-batches to ``stats.grad_batches``/``grad_tokens`` (once over the
    chunks); ``checkpoint``: recompute each block's activations in backward (:func:`_checkpointed`).
    """
    every = find_mixers(model)
    targets = {m.full_name(name): p for m in every for name, p in m.module.named_parameters()}
    kept = {m.full_name(name): p for m in mixers for name, p in m.module.named_parameters()}
    target_ids = {id(p) for p in targets.values()}
    params = list(model.parameters())
    saved_req = [p.requires_grad for p in params]
    saved_grad = [p.grad for p in params]
    sums: dict[str, torch.Tensor] = {}
    squares: dict[str, torch.Tensor] = {}
    reached: set[str] = set()

    def add(name: str, g: torch.Tensor) -> None:
        if name in sums:
            sums[name] += g
            squares[name] += g * g
        else:
            sums[name] = g.clone()
            squares[name] = g * g

    def accumulate(name: str):
        def hook(p: nn.Parameter) -> None:
            if name in kept:
                add(name, p.grad.detach().float())
                reached.add(name)
            p.grad = None
        return hook

    handles = []
    try:
        for p in params:
            p.grad = None
            p.requires_grad_(id(p) in target_ids)
        handles = [p.register_post_accumulate_grad_hook(accumulate(name)) for name, p in targets.items()]
        done = 0
        with _checkpointed(model, every if checkpoint else []):
            for ids in _batches(tokens, max(1, grad_batch_size)):
                reached.clear()
                ids = ids.to(device)
                # no cache: a checkpointed block must see the same inputs when it is recomputed
                model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
                for name, p in kept.items():
                    if name not in reached:  # not on the loss's path: a zero gradient
                        add(name, torch.zeros_like(p, dtype=torch.float32))
                if count:
                    stats.grad_batches += 1
                    stats.grad_tokens += ids.shape[0] * (ids.shape[1] - 1)  # predicted tokens in this micro-batch
                done += ids.shape[0]
                if progress:
                    progress(done, "gradients")
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
        for p, req, g in zip(params, saved_req, saved_grad):
            p.requires_grad_(req)
            p.grad = g
    stats.grad_sum.update(sums)
    stats.grad_sq_sum.update(squares)


@contextlib.contextmanager
def _checkpointed(model: nn.Module, mixers: list[MixerInfo]) -> Iterator[None]:
    """The blocks holding ``mixers`` keep only their inputs for backward and recompute the rest
    there (activation checkpointing, in eval mode; the recomputation is the same forward, so the
    gradients are the same)."""
    paths = [m.path.rpartition(".")[0] for m in mixers]
    blocks = [model.get_submodule(p) for p in paths if p]
    own = [block.__dict__.get("forward") for block in blocks]  # an instance forward someone installed
    for block in blocks:
        block.forward = functools.partial(_checkpoint_call, block.forward)
    try:
        yield
    finally:
        for block, forward in zip(blocks, own):
            if forward is None:
                del block.forward  # the class's forward again
            else:
                block.forward = forward


def _checkpoint_call(forward, *args, **kwargs):
    from torch.utils.checkpoint import checkpoint

    return checkpoint(forward, *args, use_reentrant=False, **kwargs)
