"""Measure how per-tensor unit scores should be combined (raw sum, mean-normalised, per-tensor rank).

For each embedded model, each structured unit target and each criterion that aggregates element
scores into units, prints the measured ΔL (loss increase on the evaluation windows) of a cut of
every layer at 30/50/70%, once per aggregation (:func:`ssm_profile.criteria.base.aggregate_unit_scores`).
Lower is better. Runs in a few minutes on one core:

    python examples/unit_score_norms.py [--nsamples 8] [--eval-samples 8]
"""

from __future__ import annotations

import argparse

import torch

from ssm_profile import DataSpec, ProfileSettings, load_model, profile_model
from ssm_profile.criteria import Criterion
from ssm_profile.criteria.base import UNIT_AGGREGATIONS
from ssm_profile.calibration.data import load_dataset

MODELS = {"tiny-mamba": ["unit:state", "unit:channel"], "tiny-mamba2": ["unit:state", "unit:head"]}
CRITERIA = ["magnitude", "wanda", "fisher"]
SPARSITIES = [0.3, 0.5, 0.7]


def measure(model_name: str, targets: list[str], spec: DataSpec) -> dict[tuple[str, str, float, str], float]:
    """ΔL per (target, criterion, sparsity, aggregation)."""
    loaded = load_model(model_name)
    dataset = load_dataset(loaded.tokenizer, spec)
    settings = ProfileSettings(criteria=CRITERIA, targets=targets, sparsities=SPARSITIES, per_layer=False,
                               bootstrap=0)
    deltas = {}
    default = Criterion.unit_aggregation
    try:
        for how in UNIT_AGGREGATIONS:
            Criterion.unit_aggregation = how  # every criterion that sums element scores reads this
            for trial in profile_model(loaded, dataset, settings).trials:
                deltas[trial.target, trial.criterion, trial.sparsity, how] = trial.delta_loss
    finally:
        Criterion.unit_aggregation = default
    return deltas


def print_table(model_name: str, targets: list[str], deltas: dict) -> dict[str, float]:
    """Print one row per (target, criterion, sparsity); return the summed ΔL per aggregation."""
    totals = dict.fromkeys(UNIT_AGGREGATIONS, 0.0)
    print(f"\n{model_name}: ΔL (lower is better)")
    print(f"{'target':<14}{'criterion':<11}{'sparsity':>9}" + "".join(f"{h:>10}" for h in UNIT_AGGREGATIONS))
    for target in targets:
        for criterion in CRITERIA:
            for s in SPARSITIES:
                row = [deltas.get((target, criterion, s, h)) for h in UNIT_AGGREGATIONS]
                if None in row:
                    continue
                best = min(row)
                cells = "".join(f"{v:>9.4f}{'*' if v == best else ' '}" for v in row)
                print(f"{target:<14}{criterion:<11}{s:>9.0%}{cells}")
                for h, v in zip(UNIT_AGGREGATIONS, row):
                    totals[h] += v
    print(f"{'sum of ΔL':<34}" + "".join(f"{totals[h]:>10.4f}" for h in UNIT_AGGREGATIONS))
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nsamples", type=int, default=8)
    parser.add_argument("--eval-samples", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = DataSpec(nsamples=args.nsamples, eval_samples=args.eval_samples, seqlen=args.seqlen)
    grand = dict.fromkeys(UNIT_AGGREGATIONS, 0.0)
    for model_name, targets in MODELS.items():
        for h, v in print_table(model_name, targets, measure(model_name, targets, spec)).items():
            grand[h] += v
    print("\nboth models, sum of ΔL: " + ", ".join(f"{h} {v:.4f}" for h, v in grand.items()))


if __name__ == "__main__":
    main()
