"""Benchmark of the fast selective scan on one Mamba-1 mixer at mamba-130m width, and of the gated
delta rule on one Gated DeltaNet mixer (Qwen3.5 layout, Qwen3-Next's head shape).

Times, in one run and on the same random (seeded) layer: transformers' reference CPU path, the
same layer with the fast kernels installed (:func:`ssm_profile.mixers.choice.installed` with
``Kernels.fast()``: the numba scan and causal conv of :mod:`ssm_profile.kernels.fastscan`, and for
inference oneDNN's float32 linear of :mod:`ssm_profile.kernels.fastlinear`), and (forward) the layer's
dense projections alone, the floor a scan cannot beat, measured twice: with torch's default linear (``floor_torch_s``) and with the
linear the fast path uses (``floor_s``, the one ``fast_over_floor`` compares with: same matmuls,
so the ratio is what the rest of the layer costs). The Gated DeltaNet mixer has the same three cases
(:func:`bench_delta_forward`; its fast path is the numba recurrence of :mod:`ssm_profile.kernels.fastdelta`,
transformers' is its chunked torch function). Numbers are wall seconds, best of ``repeats``
interleaved rounds after one warm-up call per case.

    python -m ssm_profile.bench.bench_scan [--threads 1] [--seq-len 1024] [--bwd-seq-len 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn

from ssm_profile.kernels import fastdelta, fastlinear, fastscan
from ssm_profile.mixers.choice import Kernels, installed

# mamba-130m mixer width
HIDDEN, STATE, EXPAND, DT_RANK, CONV = 768, 16, 2, 48, 4
# a Gated DeltaNet mixer with Qwen3-Next's head shape (128 x 128 states, two value heads per key head)
DELTA = {"hidden_size": 1024, "linear_num_key_heads": 4, "linear_num_value_heads": 8, "linear_key_head_dim": 128,
         "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4}


def build_mixer(seed: int = 0) -> nn.Module:
    """One Mamba-1 mixer (H=768, E=1536, N=16, R=48, conv 4) with seeded random weights."""
    from transformers import MambaConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer

    torch.manual_seed(seed)
    cfg = MambaConfig(vocab_size=64, hidden_size=HIDDEN, state_size=STATE, expand=EXPAND,
                      time_step_rank=DT_RANK, conv_kernel=CONV, num_hidden_layers=1)
    return MambaMixer(cfg, layer_idx=0)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with n torch threads, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def best_times(cases: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best wall time of each case over ``repeats`` rounds, after one warm-up call each (which also
    compiles or loads the numba kernels). Cases alternate within a round, so load from other
    processes hits all of them alike instead of skewing one."""
    for fn in cases.values():
        fn()
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(max(1, repeats)):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def _with_kernels(mixer: nn.Module, fast: bool, fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` with the fast kernels (or transformers' own) installed on ``mixer``."""
    choice = Kernels.fast() if fast else Kernels.reference()

    def run() -> object:
        with installed(mixer, choice):
            return fn()

    return run


def _dense_floor(mixer: nn.Module, seq_len: int) -> Callable[[], object]:
    """The layer's four matmuls (in_proj, x_proj, dt_proj, out_proj) on inputs of the real shapes."""
    x = torch.randn(1, seq_len, mixer.hidden_size)
    h = torch.randn(1, seq_len, mixer.intermediate_size)
    ts = torch.randn(1, seq_len, mixer.time_step_rank)

    def run() -> None:  # the calls MambaMixer makes: three nn.Linear and dt_proj as a matmul
        mixer.in_proj(x)
        mixer.x_proj(h)
        mixer.dt_proj.weight @ ts.transpose(1, 2)
        mixer.out_proj(h)

    return run


def _result(reference: float, fast: float, threads: int, seq_len: int, **extra: float) -> dict:
    return {"seq_len": seq_len, "threads": threads, "backend": fastscan.BACKEND,
            "reference_s": reference, "fast_s": fast, "speedup": reference / fast, **extra}


def bench_layer_forward(seq_len: int = 1024, threads: int = 1, repeats: int = 3, seed: int = 0) -> dict:
    """Forward (inference) of one mixer: reference vs fast scan vs dense-projection floor."""
    with torch_threads(threads), torch.no_grad():
        mixer = build_mixer(seed).eval()
        return _forward_result(mixer, _dense_floor(mixer, seq_len), threads, seq_len, repeats)


def _forward_result(mixer: nn.Module, floor: Callable[[], object], threads: int, seq_len: int,
                    repeats: int) -> dict:
    """One mixer's forward on ``seq_len`` tokens with transformers' kernels, with the fast ones, and its
    dense projections alone (the floor) with either linear: best of ``repeats`` interleaved rounds."""
    x = torch.randn(1, seq_len, mixer.hidden_size)
    t = best_times({"reference": _with_kernels(mixer, False, lambda: mixer(x)),
                    "fast": _with_kernels(mixer, True, lambda: mixer(x)),
                    "floor_torch": _with_kernels(mixer, False, floor),
                    "floor": _with_kernels(mixer, True, floor)}, repeats)
    return _result(t["reference"], t["fast"], threads, seq_len, floor_s=t["floor"], floor_torch_s=t["floor_torch"],
                   fast_over_floor=t["fast"] / t["floor"], linear=fastlinear.backend())


def build_delta_mixer(seed: int = 0) -> nn.Module:
    """One Qwen3.5 Gated DeltaNet mixer of shape :data:`DELTA` with seeded random weights."""
    from transformers import AutoConfig
    from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5GatedDeltaNet

    torch.manual_seed(seed)
    cfg = AutoConfig.for_model("qwen3_5_text", vocab_size=64, num_hidden_layers=1, num_attention_heads=8,
                               num_key_value_heads=2, layer_types=["linear_attention"], **DELTA)
    return Qwen3_5GatedDeltaNet(cfg, layer_idx=0)


def _delta_floor(mixer: nn.Module, seq_len: int) -> Callable[[], object]:
    """The mixer's five matmuls (in_proj_qkv, in_proj_z, in_proj_b, in_proj_a, out_proj) on inputs of the real shapes."""
    x = torch.randn(1, seq_len, mixer.hidden_size)
    y = torch.randn(1, seq_len, mixer.value_dim)

    def run() -> None:
        for proj in (mixer.in_proj_qkv, mixer.in_proj_z, mixer.in_proj_b, mixer.in_proj_a):
            proj(x)
        mixer.out_proj(y)

    return run


def bench_delta_forward(seq_len: int = 1024, threads: int = 1, repeats: int = 3, seed: int = 0) -> dict:
    """Forward (inference) of one Gated DeltaNet mixer: transformers' forward vs the owned forward
    (the numba delta rule) vs the dense-projection floor."""
    with torch_threads(threads), torch.no_grad():
        mixer = build_delta_mixer(seed).eval()
        result = _forward_result(mixer, _delta_floor(mixer, seq_len), threads, seq_len, repeats)
    return {**result, "backend": fastdelta.BACKEND, "shape": dict(DELTA)}


def bench_layer_backward(seq_len: int = 512, threads: int = 1, repeats: int = 3, seed: int = 0) -> dict:
    """Forward + backward (training mode) of one mixer: reference autograd loop vs fast scan."""
    with torch_threads(threads):
        mixer = build_mixer(seed).train()
        x = torch.randn(1, seq_len, mixer.hidden_size, requires_grad=True)
        grad = torch.randn(1, seq_len, mixer.hidden_size)

        def step() -> None:
            mixer.zero_grad(set_to_none=True)
            x.grad = None
            mixer(x).backward(grad)

        t = best_times({"reference": _with_kernels(mixer, False, step), "fast": _with_kernels(mixer, True, step)},
                        repeats)
    return _result(t["reference"], t["fast"], threads, seq_len)


def delta_shape(result: dict) -> str:
    """The Gated DeltaNet mixer's shape in one phrase."""
    d = result["shape"]
    return (f"H={d['hidden_size']}, {d['linear_num_key_heads']} key x {d['linear_num_value_heads']} value heads of "
            f"{d['linear_key_head_dim']} x {d['linear_value_head_dim']}")


def format_table(rows: list[tuple[str, dict]]) -> str:
    """A plain-text table of benchmark results (``-`` where a case has no floor)."""
    header = ("case", "tokens", "thr", "reference s", "fast s", "floor s", "ref/fast", "fast/floor")
    widths = (18, 7, 5, 13, 10, 10, 10, 12)
    lines = ["".join(f"{h:<{w}}" if i == 0 else f"{h:>{w}}" for i, (h, w) in enumerate(zip(header, widths)))]
    for name, r in rows:
        cells = (name, str(r["seq_len"]), str(r["threads"]), f"{r['reference_s']:.4f}", f"{r['fast_s']:.4f}",
                 f"{r['floor_s']:.4f}" if "floor_s" in r else "-", f"{r['speedup']:.1f}",
                 f"{r['fast_over_floor']:.2f}" if "fast_over_floor" in r else "-")
        lines.append("".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells, widths))))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--bwd-seq-len", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    from transformers.utils import logging

    logging.set_verbosity_error()  # the reference path warns that mamba_ssm is missing
    fwd = bench_layer_forward(args.seq_len, args.threads, args.repeats)
    bwd = bench_layer_backward(args.bwd_seq_len, args.threads, args.repeats)
    delta = bench_delta_forward(args.seq_len, args.threads, args.repeats)
    print(f"Mamba-1 mixer H={HIDDEN} E={HIDDEN * EXPAND} N={STATE} R={DT_RANK}, "
          f"scan backend: {fastscan.BACKEND}")
    print(format_table([("forward", fwd), ("forward+backward", bwd)]))
    print(f"\nGated DeltaNet mixer (Qwen3.5) {delta_shape(delta)}, delta-rule backend: {delta['backend']}")
    print(format_table([("forward", delta)]))


if __name__ == "__main__":
    main()
