"""Does SparseGPT-OBS beat WANDA at 50% and 70% unstructured sparsity of in_proj and out_proj?

For each embedded model, prunes the target in every layer with each criterion (``obs`` =
SparseGPT: adaptive mask per block + the OBS update of the kept weights; ``wanda`` = |W|·‖X‖ per
row, mask only) and measures ΔL on the search windows and on the held-out verification windows of
the default data. ``obs − wanda`` is the paired difference of their ΔL with a paired Student-t 95%
interval over windows (:func:`ssm_profile.profiling.findings.difference`); negative = OBS is better.

``--sequential`` prunes layer by layer as SparseGPT does: each layer's Hessians are collected on
the model whose earlier layers are already pruned (default: every layer from the dense model's
Hessians, as the profiler's trials and ``apply`` do). Runs in a few minutes on one core:

    python examples/obs_vs_wanda.py [--damp 0.01] [--block 128] [--nsamples 32] [--sequential]
"""

from __future__ import annotations

import argparse

import torch

from ssm_profile import DataSpec, load_model
from ssm_profile.model.arch import find_mixers
from ssm_profile.criteria import ScoringContext, get
from ssm_profile.calibration.data import batch_losses, load_dataset
from ssm_profile.profiling.findings import difference
from ssm_profile.mixers.choice import Kernels, installed
from ssm_profile.criteria.masks import MaskApplier, Pruning
from ssm_profile.profiling.results import ProfileResult
from ssm_profile.profiling.sensitivity import Scorer, Trial, TrialSpec
from ssm_profile.calibration.stats import collect_stats

MODELS = ("tiny-mamba", "tiny-mamba2")
TARGETS = ("in_proj", "out_proj")
SPARSITIES = (0.5, 0.7)
CRITERIA = ("obs", "wanda")


def cut(model, calibration, spec: TrialSpec, args) -> Pruning:
    """The cut of ``spec`` on every layer: from the dense model's statistics, or layer by layer."""
    needs = set(get(spec.criterion).needs)
    mixers = find_mixers(model)
    if not args.sequential:
        return scorer_for(model, collect_stats(model, calibration, needs), args).prune(spec, mixers)
    parts = []
    with MaskApplier(model) as applier:  # earlier layers pruned while the next layer's inputs are collected
        for mixer in mixers:
            stats = collect_stats(model, calibration, needs)
            part = scorer_for(model, stats, args).prune(TrialSpec(spec.target, spec.criterion, spec.sparsity,
                                                                   mixer.layer), mixers)
            applier.apply(part.mask, part.values)
            parts.append(part)
    return Pruning.combine(parts)


def scorer_for(model, stats, args) -> Scorer:
    scorer = Scorer(model, ScoringContext(model=model, stats=stats), CRITERIA)
    scorer.criteria["obs"] = get("obs", damp=args.damp, block=args.block)
    return scorer


def trial(spec: TrialSpec, losses: torch.Tensor, dense: torch.Tensor) -> Trial:
    loss = float(losses.mean())
    return Trial(spec.target, spec.criterion, spec.sparsity, None, loss, loss - float(dense.mean()), 0.0, 0.0, 0,
                 None, 0.0, [float(x) for x in losses])


def measure(model_name: str, args) -> list[str]:
    loaded = load_model(model_name)
    with installed(loaded.model, Kernels.for_run(True)):  # the profiler's fast CPU kernels
        return measure_loaded(model_name, loaded, args)


def measure_loaded(model_name: str, loaded, args) -> list[str]:
    model = loaded.model
    data = load_dataset(loaded.tokenizer, DataSpec(nsamples=args.nsamples))
    windows = {"search": data.evaluation, "verify": data.verification}
    dense = {k: batch_losses(model, w, 8) for k, w in windows.items()}
    lines = []
    for target in TARGETS:
        for sparsity in SPARSITIES:
            trials = {k: {} for k in windows}
            for criterion in CRITERIA:
                spec = TrialSpec(target, criterion, sparsity)
                pruning = cut(model, data.calibration, spec, args)
                with MaskApplier(model) as applier:
                    applier.apply(pruning.mask, pruning.values)
                    for k, w in windows.items():
                        trials[k][criterion] = trial(spec, batch_losses(model, w, 8), dense[k])
            cells = []
            for k in windows:
                result = ProfileResult(meta={}, analysis=None, dense_window_losses=dense[k].tolist(),
                                       trials=list(trials[k].values()), bootstrap=2000)
                d = difference(result, "obs-wanda", trials[k]["obs"], trials[k]["wanda"])
                cells.append(f"{trials[k]['obs'].delta_loss:>8.4f} {trials[k]['wanda'].delta_loss:>8.4f} "
                             f"{d.value:>+8.4f} [{d.low:+.4f}, {d.high:+.4f}]")
            lines.append(f"{model_name:<12}{target:<9}{sparsity:>5.0%}  " + "  ".join(cells))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--damp", type=float, default=0.01)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--nsamples", type=int, default=32, help="calibration windows")
    parser.add_argument("--sequential", action="store_true", help="layer by layer on the pruned model's inputs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    order = "sequential (layer by layer)" if args.sequential else "parallel (dense-model Hessians)"
    print(f"SparseGPT damp {args.damp}, block {args.block}, {args.nsamples} calibration windows, {order}")
    print("ΔL obs, ΔL wanda, obs−wanda [paired bootstrap 95% CI]; negative = OBS better")
    print(f"{'model':<12}{'target':<9}{'sparsity':>5}  {'search windows':<46}  verification windows")
    for model_name in MODELS:
        for line in measure(model_name, args):
            print(line, flush=True)


if __name__ == "__main__":
    main()
