"""Adaptive vs grid sweep on both embedded models, in one run: what the adaptive default saves and keeps.

For each embedded model: a default profile with ``--sweep grid`` and one with the default adaptive
sweep (both cached under ``--out``), then:

* evaluated window-tokens (and trial seconds) grid / adaptive (goal: >= 4x);
* Kendall tau between the two module rankings (``ProfileResult.ranking()``; goal: >= 0.9);
* targets whose largest safe sparsity is within one grid step (0.1) of the grid's (goal: >= 90%);
* ``plan --ratio 0.3`` from each run: kept its promise on the verification windows?
* the adaptive schedule replayed at 24 layers (mamba-130m's depth) on the grid's measurements:
  full-trial equivalents it spends (windows evaluated / windows, layer trials weighted by the share
  of layers the incremental evaluator recomputes), and the minutes that means at mamba-130m's costs
  (7.3 s per full trial, 114 s for calibration, caching and the dense evaluation).

    python examples/adaptive_vs_grid.py [--out runs/adaptive_vs_grid]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from scipy.stats import kendalltau

from ssm_profile.profiling.adaptive import AdaptiveSchedule
from ssm_profile.profiling.earlystop import CHUNK_WINDOWS, StopRule
from ssm_profile.base.errors import PlanError
from ssm_profile.plan import PlanRequest, make_plan
from ssm_profile.profiling.record import ProfileSettings
from ssm_profile.profiling.profile import profile_model
from ssm_profile.model.resolve import load_model
from ssm_profile.profiling.results import ProfileResult
from ssm_profile.profiling.schedule import run_schedule
from ssm_profile.profiling.sensitivity import Trial, TrialSpec

MODELS = ("tiny-mamba", "tiny-mamba2")
DEEP_LAYERS = 24
FULL_TRIAL_S, SETUP_S = 7.3, 114.0  # mamba-130m on this 2-core machine (16 windows x 256 tokens)


def run_for(loaded, run_dir: Path, sweep: str) -> ProfileResult:
    if not (run_dir / "run.json").exists() or ProfileResult.load(run_dir).meta.get("status") != "complete":
        profile_model(loaded, settings=ProfileSettings(sweep=sweep), run_dir=run_dir, resume=True)
    return ProfileResult.load(run_dir)


def window_tokens(result: ProfileResult) -> int:
    seqlen = int(result.meta["data"]["seqlen"]) if "seqlen" in result.meta.get("data", {}) else 1
    return sum(t.windows_evaluated for t in result.trials) * seqlen


def compare(grid: ProfileResult, adaptive: ProfileResult) -> tuple[float, float, float]:
    g = {r.target: r for r in grid.ranking()}
    a = {r.target: r for r in adaptive.ranking()}
    common = [t for t in g if t in a]
    tau = float(kendalltau([g[t].rank for t in common], [a[t].rank for t in common]).statistic)
    within = sum(abs(g[t].max_safe_sparsity - a[t].max_safe_sparsity) <= 0.1 + 1e-9 for t in common) / len(common)
    for t in common:
        print(f"    {t:14} grid #{g[t].rank:<2} safe {g[t].max_safe_sparsity:.1f} ({g[t].best_criterion:11}) | "
              f"adaptive #{a[t].rank:<2} safe {a[t].max_safe_sparsity:.1f} ({a[t].best_criterion})")
    return window_tokens(grid) / max(window_tokens(adaptive), 1), tau, within


def plan_text(result: ProfileResult, loaded) -> str:
    try:
        plan = make_plan(result, PlanRequest(ratio=0.3), loaded=loaded)
    except PlanError as err:
        return f"infeasible ({err})"
    v = plan.verification
    return (f"search {plan.measured.rel_ppl_increase:+.2%}, verification {v.rel_ppl_increase:+.2%} "
            f"[{v.interval[0]:+.2%}, {v.interval[1]:+.2%}] -> {'kept' if v.kept else 'NOT KEPT'}")


class Replay:
    """A runner answering from a grid run: model-wide trials are its measurements, stopped as the
    adaptive run would (:class:`StopRule` on their window losses); a block of the ``DEEP_LAYERS``
    layers gets the ΔL of the grid's layers it maps onto, shared evenly (never stopped: errs long)."""

    def __init__(self, grid: ProfileResult):
        self.grid = grid
        self.windows = len(grid.dense_window_losses)
        self.rule = StopRule(grid.tolerance, self.windows, CHUNK_WINDOWS)
        self.shallow = sorted({t.layer for t in grid.layer_trials})
        self.equivalents = 0.0

    def trial(self, spec: TrialSpec) -> Trial:
        if spec.layer is None:
            t = self.grid.trial(spec.target, spec.criterion, spec.sparsity)
            paired = [w - d for w, d in zip(t.window_losses, self.grid.dense_window_losses)]
            used = spec.screen or next((n for n in range(CHUNK_WINDOWS, self.windows, CHUNK_WINDOWS)
                                        if self.rule.should_stop(paired[:n])), self.windows)
            delta = sum(paired[:used]) / used
            self.equivalents += used / self.windows
            return Trial(spec.target, spec.criterion, spec.sparsity, None, t.loss, delta, t.perplexity,
                         math.expm1(delta), t.pruned_params, t.predicted_delta, 1.0, t.window_losses[:used],
                         stopped=not spec.screen and used < self.windows, screen=spec.screen)
        per = len(self.shallow) / DEEP_LAYERS
        delta = sum((self.grid.trial(spec.target, spec.criterion, spec.sparsity,
                                     self.shallow[int(layer * per)]) or _nothing()).delta_loss * per
                    for layer in range(spec.layer, spec.layer + spec.span))
        self.equivalents += (DEEP_LAYERS - spec.layer) / DEEP_LAYERS
        return Trial(spec.target, spec.criterion, spec.sparsity, spec.layer, 0.0, delta, 1.0, math.expm1(delta), 0,
                     None, 1.0, [], span=spec.span)

    def run(self, specs, on_start, on_trial):
        out = [self.trial(s) for s in specs]
        for trial in out:
            on_trial(trial)
        return out


def _nothing():
    return Trial("", "", 0.0, None, 0.0, 0.0, 1.0, 0.0, 0, None, 0.0)


def deep_equivalents(grid: ProfileResult) -> tuple[float, int]:
    pairs = list(dict.fromkeys((t.target, t.criterion) for t in grid.model_trials))
    settings = grid.meta["settings"]
    layer_targets = list(dict.fromkeys(t.target for t in grid.layer_trials))
    schedule = AdaptiveSchedule(pairs, settings["sparsities"], settings["probe_sparsity"], grid.tolerance,
                                layer_targets, range(DEEP_LAYERS), settings["layer_criterion"], screen=CHUNK_WINDOWS,
                                dense_losses=grid.dense_window_losses)
    runner = Replay(grid)
    finished: dict[str, Trial] = {}
    run_schedule(schedule, runner, finished, None, lambda *a: None)
    return runner.equivalents, len(finished)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/adaptive_vs_grid", help="where the profiles are cached")
    args = parser.parse_args()
    summary = []
    for model in MODELS:
        loaded = load_model(model)
        grid = run_for(loaded, Path(args.out) / model / "grid", "grid")
        adaptive = run_for(loaded, Path(args.out) / model / "adaptive", "adaptive")
        print(f"{model}: grid {len(grid.trials)} trials, adaptive {len(adaptive.trials)} trials "
              f"({sum(t.stopped for t in adaptive.trials)} stopped early)")
        ratio, tau, within = compare(grid, adaptive)
        seconds = sum(t.seconds for t in grid.trials) / max(sum(t.seconds for t in adaptive.trials), 1e-9)
        print(f"  window-tokens grid/adaptive {ratio:.1f}x (trial seconds {seconds:.1f}x, noisy); "
              f"ranking Kendall tau {tau:.2f}; safe sparsity within 0.1 for {within:.0%} of targets")
        print(f"  plan --ratio 0.3 from grid:     {plan_text(grid, loaded)}")
        print(f"  plan --ratio 0.3 from adaptive: {plan_text(adaptive, loaded)}")
        equivalents, trials = deep_equivalents(grid)
        print(f"  replayed at {DEEP_LAYERS} layers: {trials} trials, {equivalents:.1f} full-trial equivalents -> "
              f"about {(SETUP_S + equivalents * FULL_TRIAL_S) / 60:.1f} min at mamba-130m's costs")
        summary.append((model, ratio, tau, within))
    print("\n" + "; ".join(f"{m}: {r:.1f}x fewer window-tokens, tau {t:.2f}, {w:.0%} within a step"
                           for m, r, t, w in summary))


if __name__ == "__main__":
    main()
