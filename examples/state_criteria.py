"""Which state scores rank SSM states best: the Gramian variants, and magnitude with or without A_log.

For each embedded model, cuts 30/50/70% of the states of every layer (``unit:state``) and prints
the measured ΔL on the search windows (lower = the criterion kept the states that matter):

* ``ssm_gramian`` (Hankel singular value proxy sqrt(Wc·Wo)) against ``ssm_energy`` (stationary
  output energy, E[dt²x²]E[B²]E[C²]/(1-a²)), with ``random`` and ``fisher`` as references;
* ``magnitude`` whose state units read |A_log| and the x_proj / in_proj B and C rows (and conv
  channels), against the same without A_log (``Magnitude.states_read_a_log``).

Runs in a few minutes on one core:

    python examples/state_criteria.py [--nsamples 32]
"""

from __future__ import annotations

import argparse

import torch

from ssm_profile import DataSpec, ProfileSettings, load_model, profile_model
from ssm_profile.criteria.basic import Magnitude
from ssm_profile.calibration.data import load_dataset

MODELS = ("tiny-mamba", "tiny-mamba2")
SPARSITIES = [0.3, 0.5, 0.7]
CRITERIA = ["ssm_gramian", "ssm_energy", "magnitude", "random", "fisher"]


def measure(model_name: str, spec: DataSpec) -> dict[tuple[str, float], float]:
    """ΔL per (column, sparsity); the magnitude column once with A_log and once without."""
    loaded = load_model(model_name)
    dataset = load_dataset(loaded.tokenizer, spec)
    settings = ProfileSettings(criteria=CRITERIA, targets=["unit:state"], sparsities=SPARSITIES, per_layer=False,
                               bootstrap=0)
    deltas = {}
    default = Magnitude.states_read_a_log
    try:
        for with_a_log in (True, False):
            Magnitude.states_read_a_log = with_a_log
            for t in profile_model(loaded, dataset, settings).trials:
                if t.criterion == "magnitude":
                    deltas[f"magnitude{'' if with_a_log else ' -A_log'}", t.sparsity] = t.delta_loss
                elif with_a_log:
                    deltas[t.criterion, t.sparsity] = t.delta_loss
    finally:
        Magnitude.states_read_a_log = default
    return deltas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nsamples", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    columns = ["ssm_gramian", "ssm_energy", "magnitude", "magnitude -A_log", "random", "fisher"]
    print("ΔL of unit:state cuts in every layer (search windows; lower is better)")
    print(f"{'model':<13}{'states cut':>10}" + "".join(f"{c:>18}" for c in columns))
    for model_name in MODELS:
        deltas = measure(model_name, DataSpec(nsamples=args.nsamples))
        for s in SPARSITIES:
            print(f"{model_name:<13}{s:>10.0%}" + "".join(f"{deltas.get((c, s), float('nan')):>18.4f}"
                                                          for c in columns), flush=True)
        print(f"{model_name:<13}{'sum':>10}" + "".join(f"{sum(deltas.get((c, s), 0.0) for s in SPARSITIES):>18.4f}"
                                                      for c in columns))


if __name__ == "__main__":
    main()
