"""Do plans keep their promise out of sample? A grid of plans on both embedded models.

For each embedded model: one default profile (cached under ``runs/promise/<model>``), then a plan
for every metric (params / flops / state) x ratio (0.2 / 0.3 / 0.5) x tolerance (0.05 / 0.10).
Each feasible plan is verified by the planner on the held-out verification windows; this script
reports the fraction whose verification increase is within tolerance and the largest ratio of
verification increase to tolerance (goal: >= 95% within, never above 1.5x).

    python examples/promise_grid.py [--out runs/promise]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ssm_profile.base.errors import PlanError
from ssm_profile.plan import make_plan
from ssm_profile.profiling.profile import profile_model
from ssm_profile.model.resolve import load_model
from ssm_profile.profiling.results import ProfileResult

MODELS = ("tiny-mamba", "tiny-mamba2")
METRICS = ("params", "flops", "state")
RATIOS = (0.2, 0.3, 0.5)
TOLERANCES = (0.05, 0.10)


def run_for(model: str, out: Path) -> tuple[ProfileResult, object]:
    loaded = load_model(model)
    run_dir = out / model
    if not (run_dir / "run.json").exists():
        profile_model(loaded, run_dir=run_dir)
    return ProfileResult.load(run_dir), loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/promise", help="where the profiles are cached")
    args = parser.parse_args()
    rows = []
    for model in MODELS:
        result, loaded = run_for(model, Path(args.out))
        for metric in METRICS:
            for ratio in RATIOS:
                for tol in TOLERANCES:
                    try:
                        plan = make_plan(result, metric=metric, ratio=ratio, max_ppl_increase=tol, loaded=loaded)
                    except PlanError:
                        print(f"{model:12} {metric:6} {ratio:.1f} {tol:.2f}  infeasible", flush=True)
                        continue
                    v = plan.verification
                    rows.append((v.rel_ppl_increase / tol, v.kept))
                    print(f"{model:12} {metric:6} {ratio:.1f} {tol:.2f}  search {plan.measured.rel_ppl_increase:+.2%}  "
                          f"verification {v.rel_ppl_increase:+.2%} [{v.interval[0]:+.2%}, {v.interval[1]:+.2%}]  "
                          f"{'kept' if v.kept else 'NOT KEPT'}", flush=True)
    if rows:
        kept = sum(k for _, k in rows)
        print(f"\n{len(rows)} feasible plans: {kept / len(rows):.0%} within tolerance on verification; "
              f"max verification/tolerance {max(r for r, _ in rows):.2f}x")


if __name__ == "__main__":
    main()
