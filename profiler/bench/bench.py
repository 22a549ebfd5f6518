"""`ssm-profile bench`: the profiler's speed, measured against its own baselines in one run.

Four measurements, all at one torch thread count (one thread is the headline):

1. ``layer_forward``: one Mamba-1 mixer at mamba-130m width (H=768, E=1536, N=16) on 1,024 tokens:
   transformers' reference CPU path, the fast kernels (the numba scan of :mod:`ssm_profile.kernels.fastscan`
   and oneDNN's linear of :mod:`ssm_profile.kernels.fastlinear`), and the layer's dense projections alone
   (the floor), with torch's linear and with the fast path's; ``fast / floor`` compares like with
   like (the fast path's linear). From :func:`ssm_profile.bench.bench_scan.bench_layer_forward`.
2. ``layer_backward``: forward + backward of the same layer on 512 tokens, reference vs fast.
   ``delta_forward``: the same three cases for one Gated DeltaNet mixer (Qwen3.5 layout, Qwen3-Next's
   128 x 128 head states) on 1,024 tokens: transformers' forward (its chunked torch delta rule) vs
   the owned forward (the numba recurrence of :mod:`ssm_profile.kernels.fastdelta`). From
   :func:`ssm_profile.bench.bench_scan.bench_delta_forward`.
3. ``profiles``: the default profile (``ssm-profile profile MODEL``: every criterion, target and
   sparsity, the per-layer sweep, 16 evaluation windows of 256 tokens) of each embedded model,
   plain sweep (every trial a full forward, ``--plain-sweep``) vs incremental
   (:mod:`ssm_profile.profiling.incremental`), both with the fast kernels, and whether every trial loss is
   identical, and ``exact_reuse_bound``: from the stage times of one batch (embedding, each
   layer, head) and the incremental run's start layers, the most any exact reuse could save
   (:func:`exact_reuse_bound`). With ``reference=True`` also the profiler as it was before this work: plain sweep,
   transformers' reference kernels and torch's linear, and the loss from whole-batch logits
   (:meth:`ssm_profile.mixers.choice.Kernels.reference`).
4. ``throughput``: tokens/s of a forward pass (8 x 256 tokens) of each embedded model, dense vs
   cut by a uniform structured plan (half the Mamba-1 channels, half the Mamba-2 heads; sliced
   with :func:`ssm_profile.pruning.surgery.slice_units`).

Memory: each profile runs in a fresh process (``multiprocessing`` spawn). ``peak_rss_mib`` is that
process's peak resident set (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and ``delta_mib`` its
rise during the profile above the high-water mark reached after loading the model and warming up
the kernels. ``quick`` shrinks every measurement (tiny data, few trials, in-process) for a smoke
test; its numbers say nothing about speed.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import platform
import resource
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import torch

from .. import __version__
from .bench_scan import delta_shape, torch_threads

EMBEDDED = ("tiny-mamba", "tiny-mamba2")
HYBRID = "tiny-deltanet"  # Gated DeltaNet: no incremental evaluator, so it is timed apart
GOALS = {"layer_forward_speedup": 4.0, "layer_forward_over_floor": 1.5, "layer_backward_speedup": 10.0,
         "profile_speedup": 3.0, "profile_seconds": 120.0, "hybrid_over_mamba2": 2.0}
Note = Callable[[str], None]


# ------------------------------------------------------------------------------ machine


def machine_info() -> dict[str, Any]:
    """CPU model (from /proc/cpuinfo), cores, memory and library versions."""
    import numba
    import transformers

    cpu = platform.processor() or platform.machine()
    flags: set[str] = set()
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                cpu = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    mem = None
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo", encoding="utf-8") as handle:
        mem = int(handle.readline().split()[1]) * 1024
    simd = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "other"
    return {"cpu": cpu, "simd": simd, "cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "memory_gib": None if mem is None else round(mem / 2**30, 1), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "numba": numba.__version__, "ssm-profile": __version__,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}



def _rss_mib() -> float:
    """This process's peak resident set so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------ profiles


def _profile_settings(quick: bool):
    from ..calibration.data import DataSpec
    from ..profiling.record import ProfileSettings

    if quick:
        return (DataSpec(nsamples=4, eval_samples=4, seqlen=32),
                ProfileSettings(criteria=["magnitude", "random"], sparsities=[0.3, 0.6], bootstrap=20))
    return DataSpec(), ProfileSettings()  # exactly what `ssm-profile profile MODEL` runs


def _profile_once(name: str, mode: str, threads: int, quick: bool) -> dict[str, Any]:
    """One default profile of embedded ``name`` in ``mode`` (incremental | plain | reference), to a
    temporary run directory. Returns seconds, memory and every trial's losses."""
    from ..base.runtime import quiet_libraries

    quiet_libraries()
    torch.set_num_threads(threads)
    from ..calibration.data import batch_losses, load_dataset
    from ..mixers.choice import Kernels
    from ..profiling.profile import profile_model
    from ..model.resolve import load_model

    loaded = load_model(name)
    spec, settings = _profile_settings(quick)
    settings.incremental = mode == "incremental"
    settings.fast_scan = mode != "reference"
    # "reference": the profiler as it was: transformers' kernels, plain sweep, whole-batch logits
    kernels = Kernels.reference() if mode == "reference" else Kernels.for_run(settings.fast_scan)
    dataset = load_dataset(loaded.tokenizer, spec)
    # warm up: load (or compile) the kernels, touch the allocator
    batch_losses(loaded.model, dataset.evaluation[: settings.batch_size], settings.batch_size, kernels=kernels)
    before = _rss_mib()
    with tempfile.TemporaryDirectory(prefix="ssm-bench-") as tmp:
        start = time.perf_counter()
        result = profile_model(loaded, dataset, settings, run_dir=os.path.join(tmp, "run"), kernels=kernels)
        seconds = time.perf_counter() - start
    peak = _rss_mib()
    staged = mode == "incremental" and hasattr(loaded.model, "backbone")  # the stages of a Mamba model
    stages = _stage_seconds(loaded.model, dataset.evaluation[: settings.batch_size]) if staged else None
    return {"mode": mode, "seconds": seconds, "stage_seconds": stages, "trial_seconds": result.record.timings.get("trials"),
            "timings": result.record.timings, "peak_rss_mib": round(peak, 1),
            "delta_mib": round(max(0.0, peak - before), 1), "trials": len(result.trials),
            "incremental": result.record.incremental.to_dict() if result.record.incremental else None,
            "losses": {t.key: (t.loss, tuple(t.window_losses)) for t in result.trials}}


def bench_hybrid_profile(threads: int, quick: bool, profiles: dict[str, Any], note: Note | None = None,
                         ) -> dict[str, Any]:
    """The default profile of the embedded Gated DeltaNet hybrid, with the project's kernel and with
    transformers' torch path, against tiny-mamba2's (the same run's incremental profile)."""
    note = note or (lambda s: None)
    runs = {}
    for mode in ("incremental", "reference"):  # the Gated DeltaNet trials are full forwards either way
        note(f"default profile of {HYBRID}: {'project kernels' if mode == 'incremental' else 'transformers forward'}")
        if quick:
            with torch_threads(threads):
                runs[mode] = _profile_once(HYBRID, mode, threads, quick)
        else:
            runs[mode] = isolated(_profile_once, HYBRID, mode, threads, quick)
    seconds, base = runs["incremental"]["seconds"], profiles["tiny-mamba2"]["incremental"]["seconds"]
    return {"model": HYBRID, "seconds": seconds, "trials": runs["incremental"]["trials"],
            "transformers_seconds": runs["reference"]["seconds"],
            "speedup_vs_transformers": runs["reference"]["seconds"] / seconds,
            "vs": "tiny-mamba2", "vs_seconds": base, "ratio_to_vs": seconds / base}


def _stage_seconds(model: torch.nn.Module, ids: torch.Tensor, repeats: int = 5) -> dict[str, Any]:
    """Seconds per evaluation batch of each stage of a trial (fast kernels): the embedding, every
    decoder layer, and the final norm + head + loss. Best of ``repeats``."""
    from .bench_scan import best_times
    from ..calibration.data import head_window_losses
    from ..mixers.choice import Kernels, installed

    backbone = model.backbone
    with installed(model, Kernels.fast()), torch.no_grad():
        inputs = [backbone.embeddings(ids)]
        for layer in backbone.layers:
            inputs.append(layer(inputs[-1], cache=None, attention_mask=None))
        cases = {"embedding": lambda: backbone.embeddings(ids),
                 "head": lambda: head_window_losses(model.lm_head, backbone.norm_f(inputs[-1]), ids)}
        for i, layer in enumerate(backbone.layers):
            cases[f"layer {i}"] = lambda i=i, layer=layer: layer(inputs[i], cache=None, attention_mask=None)
        best = best_times(cases, repeats)
    return {"embedding": best["embedding"], "layers": [best[f"layer {i}"] for i in range(len(backbone.layers))],
            "head": best["head"]}


def exact_reuse_bound(stages: dict[str, Any], counts: dict[str, int], trials: int) -> float:
    """The most any exact reuse could speed up these trials over full forwards: a trial that
    starts at layer ``l`` is charged only the layers after ``l`` and the head (layer ``l`` itself
    free, which no real evaluator achieves), repeated and unchanged masks cost nothing."""
    layers = stages["layers"]
    full = stages["embedding"] + sum(layers) + stages["head"]
    spent = (counts.get("plain", 0) + counts.get("outside_layers", 0)) * full
    for key, count in counts.items():
        if key.startswith("start_layer_"):
            spent += count * (sum(layers[int(key.rsplit("_", 1)[1]) + 1:]) + stages["head"])
    return trials * full / spent if spent > 0 else math.inf


def isolated(fn: Callable[..., dict], *args) -> dict:
    """Run ``fn(*args)`` in a fresh spawned process (its own memory high-water mark)."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(fn, args)


def bench_profiles(threads: int = 1, quick: bool = False, reference: bool = False,
                   models: tuple[str, ...] = EMBEDDED, note: Note | None = None) -> dict[str, Any]:
    """Default profile of each model: plain sweep vs incremental (and optionally reference kernels)."""
    note = note or (lambda s: None)
    out: dict[str, Any] = {}
    modes = ["plain", "incremental"] + (["reference"] if reference else [])
    for name in models:
        runs = {}
        for mode in modes:
            note(f"default profile of {name}: {mode} sweep")
            if quick:
                with torch_threads(threads):
                    runs[mode] = _profile_once(name, mode, threads, quick)
            else:
                runs[mode] = isolated(_profile_once, name, mode, threads, quick)
        plain, inc = runs["plain"], runs["incremental"]
        same = sum(plain["losses"].get(k) == v for k, v in inc["losses"].items())
        entry = {"trials": inc["trials"], "identical_trials": same,
                 "identical": same == inc["trials"] == plain["trials"],
                 "speedup": plain["seconds"] / inc["seconds"],
                 "trial_speedup": (plain["trial_seconds"] or 0) / max(inc["trial_seconds"] or 1e-9, 1e-9),
                 "incremental_summary": inc.get("incremental")}
        if inc.get("stage_seconds") and inc.get("incremental"):
            entry["stage_seconds"] = inc["stage_seconds"]
            entry["exact_reuse_bound"] = exact_reuse_bound(inc["stage_seconds"], inc["incremental"]["counts"],
                                                           inc["trials"])
        if "reference" in runs:
            ref = runs["reference"]
            entry["speedup_vs_reference"] = ref["seconds"] / inc["seconds"]
            diffs = [abs(ref["losses"][k][0] - v[0]) for k, v in inc["losses"].items() if k in ref["losses"]]
            entry["reference_max_abs_loss_diff"] = max(diffs) if diffs else None
        for mode, run in runs.items():
            entry[mode] = {k: v for k, v in run.items() if k not in ("losses", "incremental")}
        out[name] = entry
    return out


# ------------------------------------------------------------------------------ throughput


def _structured_cut(model: torch.nn.Module, fraction: float) -> str:
    """Slice every mixer uniformly: Mamba-1 channels, Mamba-2 heads, Gated DeltaNet value heads
    (keeping the first units)."""
    from ..model.arch import GATED_DELTA, MAMBA1, find_mixers
    from ..pruning.surgery import slice_units, sync_config

    described = ""
    for mixer in find_mixers(model):
        kind = {MAMBA1: "channel", GATED_DELTA: "value_head"}.get(mixer.kind, "head")
        family = mixer.unit_family(kind)
        per_block = family.count // family.blocks
        keep_per_block = max(1, round(per_block * (1 - fraction)))
        keep = [b * per_block + i for b in range(family.blocks) for i in range(keep_per_block)]
        slice_units(mixer, kind, keep)
        described = f"{kind}s {family.count} -> {len(keep)} per layer"
    sync_config(model)  # best effort: the in-memory model runs either way
    return described


def _tokens_per_s(model: torch.nn.Module, ids: torch.Tensor, repeats: int) -> float:
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            model(input_ids=ids, use_cache=False)
            best = min(best, time.perf_counter() - start)
    return ids.numel() / best


def bench_throughput(threads: int = 1, quick: bool = False, fraction: float = 0.5,
                     models: tuple[str, ...] = EMBEDDED) -> dict[str, Any]:
    """Forward tokens/s of each embedded model, dense vs uniformly cut (fast kernels on)."""
    from ..mixers.choice import Kernels, installed
    from ..model.resolve import load_model

    batch, seqlen, repeats = (2, 32, 2) if quick else (8, 256, 5)
    out = {}
    with torch_threads(threads):
        for name in models:
            model = load_model(name, with_tokenizer=False).model
            vocab = model.config.vocab_size
            ids = torch.randint(0, vocab, (batch, seqlen), generator=torch.Generator().manual_seed(0))
            with installed(model, Kernels.fast()):
                dense = _tokens_per_s(model, ids, repeats)
            params = sum(p.numel() for p in model.parameters())
            cut = _structured_cut(model, fraction)
            with installed(model, Kernels.fast()):  # after the cut: its sliced Linears are new modules
                pruned = _tokens_per_s(model, ids, repeats)
            out[name] = {"batch": batch, "seqlen": seqlen, "dense_tok_s": dense, "pruned_tok_s": pruned,
                         "speedup": pruned / dense, "cut": f"{fraction:.0%} of {cut}",
                         "params_dense": params, "params_pruned": sum(p.numel() for p in model.parameters())}
    return out


# ------------------------------------------------------------------------------ all


def run_bench(threads: int = 1, quick: bool = False, reference: bool = False, note: Note | None = None,
              ) -> dict[str, Any]:
    """Every measurement of the module docstring, in this process (profiles in child processes)."""
    from .bench_scan import bench_delta_forward, bench_layer_backward, bench_layer_forward
    from ..base.runtime import quiet_libraries

    quiet_libraries()
    note = note or (lambda s: None)
    report: dict[str, Any] = {"machine": machine_info(), "threads": threads, "quick": quick}
    note("Mamba-1 layer forward")
    fwd_len, bwd_len, repeats = (128, 64, 1) if quick else (1024, 512, 3)
    report["layer_forward"] = bench_layer_forward(fwd_len, threads, repeats)
    note("Mamba-1 layer forward+backward")
    report["layer_backward"] = bench_layer_backward(bwd_len, threads, repeats)
    note("Gated DeltaNet layer forward")
    report["delta_forward"] = bench_delta_forward(fwd_len, threads, repeats)
    report["profiles"] = bench_profiles(threads, quick, reference, note=note)
    report["hybrid_profile"] = bench_hybrid_profile(threads, quick, report["profiles"], note=note)
    note("tokens/s dense vs pruned")
    report["throughput"] = bench_throughput(threads, quick)
    report["goals"] = check_goals(report)
    return report


def check_goals(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value and whether it is met."""
    fwd, bwd = report["layer_forward"], report["layer_backward"]
    goals = [
        {"goal": "Mamba-1 layer forward, 1,024 tokens: fast >= 4x reference", "value": fwd["speedup"],
         "met": fwd["speedup"] >= GOALS["layer_forward_speedup"]},
        {"goal": "Mamba-1 layer forward: fast within 1.5x of the dense-projection floor (same linear)",
         "value": fwd["fast_over_floor"], "met": fwd["fast_over_floor"] <= GOALS["layer_forward_over_floor"]},
        {"goal": "Mamba-1 layer forward+backward, 512 tokens: fast >= 10x reference", "value": bwd["speedup"],
         "met": bwd["speedup"] >= GOALS["layer_backward_speedup"]},
    ]
    for name, p in report["profiles"].items():
        bound = p.get("exact_reuse_bound")
        goals.append({"goal": f"{name} default profile: incremental >= 3x plain sweep (same kernels)",
                      "value": p["speedup"], "met": p["speedup"] >= GOALS["profile_speedup"],
                      "note": None if bound is None else f"no exact reuse can exceed {bound:.2f}x on these trials"})
        if "speedup_vs_reference" in p:
            goals.append({"goal": f"{name} default profile: >= 3x the profiler before (plain sweep, reference "
                                  "kernels)", "value": p["speedup_vs_reference"],
                          "met": p["speedup_vs_reference"] >= GOALS["profile_speedup"]})
        goals.append({"goal": f"{name} default profile: identical numbers (incremental vs plain)",
                      "value": f"{p['identical_trials']}/{p['trials']}", "met": bool(p["identical"])})
        secs = p["incremental"]["seconds"]
        goals.append({"goal": f"{name} default profile under 2 minutes", "value": secs,
                      "met": secs < GOALS["profile_seconds"]})
    hybrid = report.get("hybrid_profile")
    if hybrid:
        goals.append({"goal": f"{hybrid['model']} default profile within 2x of {hybrid['vs']}'s (same run)",
                      "value": hybrid["ratio_to_vs"], "met": hybrid["ratio_to_vs"] <= GOALS["hybrid_over_mamba2"],
                      "note": f"{hybrid['speedup_vs_transformers']:.2f}x faster than with transformers' forward"})
    if report.get("quick"):
        for g in goals:
            if "identical" not in g["goal"]:
                g["met"] = None  # quick mode shrinks the measurements: no verdict on speed
    return goals


# ------------------------------------------------------------------------------ output


def _fmt(v: float | None, digits: int = 3) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if abs(v) < 100 else f"{v:,.0f}"


def _profile_rows(report: dict[str, Any]):
    """(model, sweep, kernels, run, speedup text, numbers text) per profile run: the rows both the
    console and the Markdown tables show, in one wording."""
    for name, p in report["profiles"].items():
        for mode, sweep, kernels in (("reference", "plain", "reference"), ("plain", "plain", "fast"),
                                     ("incremental", "incremental", "fast")):
            if mode not in p:
                continue
            if mode == "incremental":
                speed = f"{p['speedup']:.2f}x vs plain" + (f", {p['speedup_vs_reference']:.2f}x vs reference"
                                                            if "speedup_vs_reference" in p else "")
                numbers = ("identical to plain" if p["identical"]
                           else f"{p['identical_trials']}/{p['trials']} identical")
            elif mode == "reference":
                speed = "1.00x"
                numbers = f"max abs loss diff {p.get('reference_max_abs_loss_diff') or 0:.1e} vs fast"
            else:
                speed, numbers = "-", "baseline"
            yield name, sweep, kernels, p[mode], speed, numbers


def render(report: dict[str, Any], console=None) -> None:
    """Print the report as rich tables."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=160)  # files and pipes get the whole table, not 80 columns
    m = report["machine"]
    console.print(f"[bold]ssm-profile bench[/bold] {m['ssm-profile']} · {m['date']} · {m['cpu']} ({m['simd']}), "
                  f"{m['usable_cores']} of {m['cores']} cores usable, {m['memory_gib']} GiB · "
                  f"torch {m['torch']}, transformers {m['transformers']}, numba {m['numba']} · "
                  f"[bold]{report['threads']} thread(s)[/bold]" + (" · QUICK (smoke test, not a measurement)"
                                                                    if report["quick"] else ""))
    fwd, bwd = report["layer_forward"], report["layer_backward"]
    t = Table(title="Mamba-1 mixer H=768 E=1536 N=16 (mamba-130m width), wall seconds (best of repeats)")
    for col in ("case", "tokens", "reference s", "fast s", "floor s, torch linear", "floor s, fast linear",
                "ref / fast", "fast / floor"):
        t.add_column(col, justify="left" if col == "case" else "right")
    t.add_row("forward", str(fwd["seq_len"]), _fmt(fwd["reference_s"], 4), _fmt(fwd["fast_s"], 4),
              _fmt(fwd.get("floor_torch_s"), 4), _fmt(fwd["floor_s"], 4), f"{fwd['speedup']:.1f}x",
              f"{fwd['fast_over_floor']:.2f}x")
    t.add_row("forward+backward", str(bwd["seq_len"]), _fmt(bwd["reference_s"], 4), _fmt(bwd["fast_s"], 4), "-",
              "-", f"{bwd['speedup']:.1f}x", "-")
    console.print(t)
    console.print(f"fast path's float32 linear (inference): {fwd.get('linear', '-')}")
    delta = report.get("delta_forward")  # absent in reports written before Gated DeltaNet
    if delta is not None:
        t = Table(title=f"Gated DeltaNet mixer (Qwen3.5) {delta_shape(delta)}, wall seconds (best of repeats)")
        for col in ("case", "tokens", "transformers s", "owned s", "floor s, torch linear", "floor s, fast linear",
                    "transformers / owned", "owned / floor"):
            t.add_column(col, justify="left" if col == "case" else "right")
        t.add_row("forward", str(delta["seq_len"]), _fmt(delta["reference_s"], 4), _fmt(delta["fast_s"], 4),
                  _fmt(delta["floor_torch_s"], 4), _fmt(delta["floor_s"], 4), f"{delta['speedup']:.1f}x",
                  f"{delta['fast_over_floor']:.2f}x")
        console.print(t)

    t = Table(title="Default profile of the embedded models (wall seconds, peak RSS of a fresh process)")
    for col in ("model", "sweep", "kernels", "trials", "total s", "trials s", "peak MiB", "+MiB",
                "speedup", "numbers"):
        t.add_column(col, justify="left" if col in ("model", "sweep", "kernels", "numbers") else "right")
    for name, sweep, kernels, r, speed, numbers in _profile_rows(report):
        t.add_row(name, sweep, kernels, str(r["trials"]), _fmt(r["seconds"], 1), _fmt(r["trial_seconds"], 1),
                  _fmt(r["peak_rss_mib"], 0), _fmt(r["delta_mib"], 0), speed, numbers)
    console.print(t)

    t = Table(title="Forward throughput, fast kernels (tokens/s)")
    for col in ("model", "batch x seq", "structured cut", "dense tok/s", "pruned tok/s", "pruned / dense"):
        t.add_column(col, justify="left" if col in ("model", "structured cut") else "right")
    for name, r in report["throughput"].items():
        t.add_row(name, f"{r['batch']}x{r['seqlen']}", r["cut"], f"{r['dense_tok_s']:,.0f}",
                  f"{r['pruned_tok_s']:,.0f}", f"{r['speedup']:.2f}x")
    console.print(t)

    t = Table(title="Speed goals: fast kernels and the incremental sweep against their baselines")
    for col in ("goal", "measured", "met", "note"):
        t.add_column(col)
    for g in report["goals"]:
        value = g["value"] if isinstance(g["value"], str) else f"{g['value']:.2f}"
        met = {True: "[green]yes[/green]", False: "[red]MISSED[/red]", None: "n/a (quick)"}[g["met"]]
        t.add_row(g["goal"], value, met, g.get("note") or "")
    console.print(t)


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables (what the README's performance section shows)."""
    m = report["machine"]
    lines = [f"Measured {m['date'][:10]} on {m['cpu']} ({m['simd']}; {m['usable_cores']} cores usable, shared with "
             f"other jobs; {m['memory_gib']} GiB), {report['threads']} torch thread(s); torch {m['torch']}, "
             f"transformers {m['transformers']}, numba {m['numba']}."
             + (" QUICK smoke test: the numbers mean nothing." if report["quick"] else ""), ""]
    fwd, bwd = report["layer_forward"], report["layer_backward"]
    lines += [("| Mamba-1 mixer, mamba-130m width | tokens | reference s | fast s | floor s, torch linear "
               "| floor s, fast linear | reference / fast | fast / floor |"),
              "|---|---:|---:|---:|---:|---:|---:|---:|",
              (f"| forward | {fwd['seq_len']} | {fwd['reference_s']:.4f} | {fwd['fast_s']:.4f} | "
               f"{_fmt(fwd.get('floor_torch_s'), 4)} | {fwd['floor_s']:.4f} | {fwd['speedup']:.1f}x | "
               f"{fwd['fast_over_floor']:.2f}x |"),
              (f"| forward+backward | {bwd['seq_len']} | {bwd['reference_s']:.4f} | {bwd['fast_s']:.4f} | - | - "
               f"| {bwd['speedup']:.1f}x | - |"),
              "", f"Fast path's float32 linear (inference): {fwd.get('linear', '-')}.", ""]
    delta = report.get("delta_forward")
    if delta is not None:
        lines += [(f"| Gated DeltaNet mixer (Qwen3.5), {delta_shape(delta)} | tokens | transformers s | owned s "
                   "| floor s, torch linear | floor s, fast linear | transformers / owned | owned / floor |"),
                  "|---|---:|---:|---:|---:|---:|---:|---:|",
                  (f"| forward | {delta['seq_len']} | {delta['reference_s']:.4f} | {delta['fast_s']:.4f} | "
                   f"{delta['floor_torch_s']:.4f} | {delta['floor_s']:.4f} | {delta['speedup']:.1f}x | "
                   f"{delta['fast_over_floor']:.2f}x |"), ""]
    lines += ["| default profile | sweep | kernels | trials | total s | trial s | peak RSS MiB | speedup | numbers |",
              "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for name, sweep, kernels, r, speed, numbers in _profile_rows(report):
        lines.append(f"| {name} | {sweep} | {kernels} | {r['trials']} | {r['seconds']:.1f} | "
                     f"{r['trial_seconds']:.1f} | {r['peak_rss_mib']:.0f} | {speed} | {numbers} |")
    lines += ["", "| tokens/s (fast kernels) | batch x seq | structured cut | dense | pruned | pruned / dense |",
              "|---|---|---|---:|---:|---:|"]
    for name, r in report["throughput"].items():
        lines.append(f"| {name} | {r['batch']}x{r['seqlen']} | {r['cut']} | {r['dense_tok_s']:,.0f} | "
                     f"{r['pruned_tok_s']:,.0f} | {r['speedup']:.2f}x |")
    lines += ["", "| goal | measured | met | note |", "|---|---:|---|---|"]
    for g in report["goals"]:
        value = g["value"] if isinstance(g["value"], str) else f"{g['value']:.2f}"
        met = {True: "yes", False: "**missed**", None: "n/a"}[g["met"]]
        lines.append(f"| {g['goal']} | {value} | {met} | {g.get('note') or ''} |")
    return "\n".join(lines) + "\n"
