"""Issue 14's recovery goal, measured on the embedded models.

For tiny-mamba and tiny-mamba2: a handcrafted structured plan (50% of the states and 25% of the
channels (Mamba-1) or heads (Mamba-2) of every layer, lowest magnitude first, sliced) that costs at
least +15% perplexity on the verification windows; then ``ssm-profile recover`` with its default
budget. The goal: recovery removes at least half of the perplexity increase on the verification
windows and keeps the offline task accuracy the pruned model had. Run from the repository root:

    python examples/recover_goal.py [OUT_DIR]

It prints one table row per model and writes OUT_DIR/recover_goal.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CUTS = {"tiny-mamba": {"state": 0.5, "channel": 0.25}, "tiny-mamba2": {"state": 0.5, "head": 0.25}}


def lowest_magnitude(model, kind: str, fraction: float) -> dict[str, list[int]]:
    from ssm_profile.model.arch import find_mixers
    from ssm_profile.criteria import CalibrationStats, ScoringContext, get
    from ssm_profile.criteria.masks import select_units

    crit, ctx = get("magnitude"), ScoringContext(model=model, stats=CalibrationStats())
    out = {}
    for m in find_mixers(model):
        family = m.unit_family(kind)
        out[str(m.layer)] = select_units(crit.unit_scores(ctx, m, family), family, fraction).tolist()
    return out


def handcrafted_plan(name: str) -> dict:
    """A schema-valid plan for the embedded model ``name`` with the CUTS above (execution: slice)."""
    from ssm_profile.model.arch import find_mixers
    from ssm_profile.model.resolve import load_model

    loaded = load_model(name)
    model = loaded.model
    layers = [m.layer for m in find_mixers(model)]
    actions = []
    for kind, fraction in CUTS[name].items():
        actions.append({"target": f"unit:{kind}", "layers": layers, "structure": "units", "criterion": "magnitude",
                        "sparsity": fraction, "unit_kind": kind,
                        "unit_indices": lowest_magnitude(model, kind, fraction), "params_removed": 0,
                        "flops_removed": 0, "state_bytes_removed": 0, "predicted_delta_loss": 0.0,
                        "execution": "slice", "note": "handcrafted (examples/recover_goal.py)"})
    return {
        "schema_version": 1, "kind": "ssm-profile-plan", "created": "2026-01-01T00:00:00+00:00",
        "tool_version": "0.1.0",
        "model": {"name": name, "source": {"name": name, "kind": loaded.source.kind,
                                           "location": loaded.source.location, "alias": None},
                  "fingerprint": loaded.fingerprint, "architecture": model.config.model_type,
                  "class": type(model).__name__},
        "run": {"path": "", "created": ""},
        "data": {"calibration": None, "evaluation": None, "nsamples": 32, "eval_samples": 16, "seqlen": 256,
                 "seed": 0},
        "objective": {"target": "params", "ratio": None, "absolute": None, "max_ppl_increase": 0.15},
        "dense": {"loss": 0.0, "perplexity": 1.0, "parameters": 1, "flops_per_token": 1,
                  "state_bytes_per_sequence": 1},
        "actions": actions,
        "predicted": {"delta_loss": 0.0, "rel_ppl_increase": 0.0, "params_removed": 0, "flops_removed": 0,
                      "state_bytes_removed": 0, "reduction_ratio": 0.0},
        "measured": None, "notes": ["handcrafted for the recovery goal"],
    }


def ssm_profile(*args: str) -> None:
    exe = Path(sys.executable).with_name("ssm-profile")
    subprocess.run([str(exe), *args], check=True)


def run(name: str, root: Path) -> dict:
    from ssm_profile.documents import load_recovery

    plan_file, pruned, recovered = root / f"{name}.plan.json", root / f"{name}-pruned", root / f"{name}-recovered"
    plan_file.write_text(json.dumps(handcrafted_plan(name), indent=2))
    ssm_profile("apply", name, str(plan_file), "-o", str(pruned), "--overwrite")
    started = time.perf_counter()
    ssm_profile("recover", str(pruned), "-o", str(recovered), "--overwrite", "--quiet")
    seconds = time.perf_counter() - started
    record = load_recovery(recovered / "recovery.json")
    before, after = record.before.verification, record.after.verification
    tasks_before, tasks_after = record.before.lm_eval or {}, record.after.lm_eval or {}
    accuracy = {task: (tasks_before[task].get("acc"), tasks_after[task].get("acc"))
                for task in tasks_before if "acc" in tasks_before[task]}
    return {"model": name, "cut": CUTS[name], "increase_before": before.rel_ppl_increase,
            "interval_before": before.interval, "increase_after": after.rel_ppl_increase,
            "interval_after": after.interval, "recovered_fraction": record.recovered_fraction(),
            "accuracy_before_after": accuracy, "steps": record.progress["steps_done"],
            "train_seconds": record.progress["train_seconds"],
            "train_cpu_seconds": record.progress.get("train_cpu_seconds"), "wall_seconds": round(seconds, 1),
            "goal_ppl": before.rel_ppl_increase >= 0.15 and record.recovered_fraction() >= 0.5,
            "goal_tasks": all(a is not None and b is not None and a >= b for b, a in accuracy.values())}


def main() -> int:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="recover-goal-"))
    root.mkdir(parents=True, exist_ok=True)
    rows = [run(name, root) for name in CUTS]
    print(f"{'model':12} {'ppl before':>11} {'ppl after':>10} {'recovered':>9} {'tasks (acc before -> after)':>30} "
          f"{'steps':>5} {'train s':>7} {'cpu s':>6} {'wall s':>6}")
    for r in rows:
        tasks = ", ".join(f"{t} {b:.3f}->{a:.3f}" for t, (b, a) in r["accuracy_before_after"].items())
        print(f"{r['model']:12} {r['increase_before']:+11.1%} {r['increase_after']:+10.1%} "
              f"{r['recovered_fraction']:9.0%} {tasks:>30} {r['steps']:5d} {r['train_seconds']:7.0f} "
              f"{r['train_cpu_seconds'] or 0:6.0f} {r['wall_seconds']:6.0f}")
    (root / "recover_goal.json").write_text(json.dumps(rows, indent=2))
    print(f"results: {root / 'recover_goal.json'}")
    return 0 if all(r["goal_ppl"] and r["goal_tasks"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
