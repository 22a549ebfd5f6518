"""Does a cut hurt another domain as it hurts the search windows? Per plan, the loss change on the
search windows beside two other domains no step saw: modern prose (``tests/data/modern_prose.txt``)
and Bierce's *The Devil's Dictionary* (1911; ``tests/data/bierce_1911.txt``).

The ratio (other domain ÷ search windows) is the cut's own: on the embedded tiny-mamba a state cut
costs modern prose about 3x its search-window loss and Bierce about half, and an element cut the
reverse. So no margin computed on one text keeps a promise on another; ``plan --also-on TEXT`` names
the text the promise must hold on.

    python examples/domain_shift.py [--model tiny-mamba] [--out runs/promise]
"""

from __future__ import annotations

import argparse
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
TEXTS = {"modern prose": DATA / "modern_prose.txt", "Bierce 1911": DATA / "bierce_1911.txt"}
PLANS = (("state", None, 0.02, "units"), ("state", None, 0.05, "units"), ("flops", None, 0.10, "units"),
         ("params", None, 0.05, "unstructured"), ("params", 0.2, 0.05, "unstructured"))


def main() -> None:
    import torch
    from promise_grid import run_for
    from ssm_profile.calibration.data import batch_losses, text_windows
    from ssm_profile.criteria.masks import MaskApplier
    from ssm_profile.plan import PlanRequest, make_plan
    from ssm_profile.plan.measure import Measurer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-mamba")
    parser.add_argument("--out", default="runs/promise", help="where the profile is kept (promise_grid's)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    run_dir, result, loaded = run_for(args.model, Path(args.out))
    m = Measurer(result, loaded, lambda *a: None)
    seqlen, batch = m.recipe.data.seqlen, m.recipe.batch_size
    sets = {"search windows": m.dataset.evaluation}
    sets.update({name: text_windows(loaded.tokenizer, str(path), 40, seqlen) for name, path in TEXTS.items()})  # the first 40
    with m.recipe.installed(m.model):
        dense = {name: batch_losses(m.model, w, batch) for name, w in sets.items()}
    print(f"{args.model}: dense loss " + ", ".join(f"{n} {d.mean():.2f} ({len(d)} windows)" for n, d in dense.items()))
    print("ΔL: mean loss change per window [95% t interval over the windows] (ratio to the search windows' mean)")
    print("| plan | cuts | " + " | ".join(f"ΔL {n}" for n in sets) + " |")
    print("|---|---|" + "---|" * len(sets))
    for metric, ratio, tol, structures in PLANS:
        request = PlanRequest(metric=metric, ratio=ratio, max_ppl_increase=tol, structures=structures)
        plan = make_plan(result, request, run_path=run_dir, loaded=loaded, measurer=m)
        cut = m.cut(plan.actions)
        with m.recipe.installed(m.model), MaskApplier(m.model) as applier, m.skipping(plan.actions):
            applier.apply(cut.mask, cut.values, cut.norm_eps)
            diffs = {n: batch_losses(m.model, w, batch) - dense[n] for n, w in sets.items()}
        base = float(diffs["search windows"].mean())
        cells = [_with_interval(d) + ("" if n == "search windows" else f" ({float(d.mean()) / base:.1f}x)")
                 for n, d in diffs.items()]
        cuts = ", ".join(f"{a.target} {a.sparsity:.0%}" for a in plan.actions)
        print(f"| {metric} {ratio or 'max'} at {tol:.0%} ({structures}) | {cuts} | " + " | ".join(cells) + " |")


def _with_interval(diffs) -> str:
    """Mean paired loss change per window with its 95% t interval over the windows."""
    from scipy.stats import t

    n, mean = len(diffs), float(diffs.mean())
    half = float(t.ppf(0.975, n - 1)) * float(diffs.std(unbiased=True)) / n ** 0.5
    return f"{mean:+.4f} [{mean - half:+.4f}, {mean + half:+.4f}]"


if __name__ == "__main__":
    main()
