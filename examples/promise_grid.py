"""Do plans keep their promise out of sample? A grid of plans on the embedded models, measured on unseen text.

For each embedded model: one default profile (cached under ``OUT/<model>``) and one measurer shared
by every plan of it; then a plan for every metric (params / flops / state) x ratio (0.1 ... 0.6 and
"as much as possible") x tolerance (2 / 5 / 10 / 20%) x structures (element zeros: ``unstructured``;
``units``; FLOPs and state are removed by unit cuts only, so those metrics run with ``units``).
Each feasible plan is measured on four sets of text no step of the plan saw:

* the plan's verification windows (the held-out tail of the embedded evaluation text);
* modern prose (``tests/data/modern_prose.txt``: the Python language reference, another domain);
* the unused stretch of the embedded evaluation text between the search and verification windows;
* Bierce's *The Devil's Dictionary* (1911; ``tests/data/bierce_1911.txt``): a third domain, never
  named to the plan even under ``--also-on-prose``.

``--also-on-prose`` certifies every plan on the modern prose too (``plan --also-on``: its first windows
take part in the decision); its "prose" figures are then measured on the prose's held-out last windows
only, which no step saw (rows in ``OUT/grid-also-on.jsonl``).

The verification figure is the planner's own (equal to ``validate``'s to 1e-6 on these models); the
other two are measured with the plan's masks and rewritten values on the planner's model. ``--apply``
also applies (``apply_plan``) and validates (``validate``) every plan, as a user would, into
``applied`` (slow on CPU: transformers' reference kernels, ~3 minutes a plan on a shared machine).

Every plan is one JSON line in ``OUT/grid.jsonl``, written as soon as it is measured; a rerun skips
the lines already there (resumable). The summary counts, per measurement set, the feasible plans
within their tolerance and the worst increase / tolerance (goal: >= 95% within, worst <= 1.5x on
verification; worst <= 2x on the other domain).

    python examples/promise_grid.py [--out runs/promise] [--quick] [--models tiny-mamba,...] [--also-on-prose]
    python examples/promise_grid.py --summary-only
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

MODELS = ("tiny-mamba", "tiny-mamba2", "tiny-deltanet")
METRICS = ("params", "flops", "state")
RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, None)  # None: as much as the tolerance allows
TOLERANCES = (0.02, 0.05, 0.10, 0.20)
STRUCTURES = ("unstructured", "units")
QUICK = {"ratios": (0.2, 0.4, None), "tolerances": (0.05, 0.10)}
PROSE = Path(__file__).resolve().parent.parent / "tests" / "data" / "modern_prose.txt"
SETS = (("verification", "the plan's verification windows"), ("prose", "modern prose (another domain)"),
        ("stretch", "unused stretch of the evaluation text"),
        ("bierce", "Bierce's 1911 prose (a third domain, never named to the plan)"))
BIERCE = PROSE.parent / "bierce_1911.txt"


def grid(quick: bool) -> list[tuple[str, float | None, float, str]]:
    """The configurations, the quick subset first (an interrupted full grid still covers it)."""
    configs = [(metric, ratio, tol, structures) for metric in METRICS for structures in STRUCTURES
               for ratio in RATIOS for tol in TOLERANCES if metric == "params" or structures == "units"]
    in_quick = [c for c in configs if c[1] in QUICK["ratios"] and c[2] in QUICK["tolerances"]]
    return in_quick if quick else in_quick + [c for c in configs if c not in in_quick]


def key_of(model: str, metric: str, ratio: float | None, tol: float, structures: str) -> str:
    return f"{model}|{metric}|{ratio}|{tol}|{structures}"


def run_for(model: str, out: Path):
    from ssm_profile.model.resolve import load_model
    from ssm_profile.profiling.profile import profile_model
    from ssm_profile.profiling.results import ProfileResult

    loaded = load_model(model)
    run_dir = out / model
    if not (run_dir / "run.json").exists():
        profile_model(loaded, run_dir=run_dir)
    return run_dir, ProfileResult.load(run_dir), loaded


def unused_stretch(loaded, result, path: Path):
    """The evaluation text's windows between the search windows and the verification tail (a tensor),
    also written to ``path`` as text for ``validate --evaluation``."""
    import torch
    from ssm_profile.calibration.data import load_dataset

    spec = result.record.data_spec()
    drawn = spec.search_windows is not None and list(spec.search_windows) != list(range(len(spec.search_windows)))
    if spec.seed != 0 or drawn:  # another seed draws the search windows from the whole pool
        raise SystemExit("the unused stretch is the windows after the first search windows: profile with seed 0")
    data = load_dataset(loaded.tokenizer, spec)
    ids = loaded.tokenizer(_evaluation_text(), add_special_tokens=False)["input_ids"]
    windows = len(ids) // spec.seqlen
    first, stop = data.evaluation.shape[0], windows - data.verification.shape[0]
    if stop <= first:
        raise SystemExit("the evaluation text has no unused stretch between search and verification")
    stretch = ids[first * spec.seqlen: stop * spec.seqlen]
    path.write_text(loaded.tokenizer.decode(stretch), encoding="utf-8")
    return torch.tensor(stretch, dtype=torch.long).view(stop - first, spec.seqlen)


def _evaluation_text() -> str:
    from ssm_profile.model.resolve import embedded_data

    return embedded_data("evaluation.txt").read_text(encoding="utf-8")


def measure_plan(model: str, plan, extra: list[Path]) -> dict:
    """Apply ``plan`` to a fresh copy of ``model`` and validate it: verification and the extra texts
    (``--apply``: what a user runs; slow on CPU, transformers' reference kernels)."""
    from ssm_profile.model.resolve import load_model
    from ssm_profile.pruning.apply import apply_plan
    from ssm_profile.validation.check import ValidationOptions

    options = ValidationOptions(tasks=(), evaluations=[str(p) for p in extra], speed_repeats=1, speed_batch=(1, 16))
    tmp = Path(tempfile.mkdtemp(prefix="promise-"))
    try:
        # every feasible plan is measured, one whose promise broke at plan time too (apply refuses it by default)
        record = apply_plan(load_model(model), plan, tmp / "pruned", validate=True, validate_options=options,
                            allow_broken_promise=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report = record.validation
    found = {"verification": report.verification}
    found.update(zip(("prose", "stretch", "bierce"), report.evaluations or []))
    return {name: _increase(inc.rel_ppl_increase, inc.interval, inc.windows) for name, inc in found.items()}


def _increase(rel: float, interval: list[float], windows: int) -> dict:
    return {"increase": rel, "interval": interval, "windows": windows}


class HeldOut:
    """The extra windows (prose, unused stretch), measured with the plan's own masks and values on the
    planner's model (the planner's verification equals ``validate``'s to 1e-6 on these models)."""

    def __init__(self, measurer, prose_file: Path, stretch):
        from ssm_profile.calibration.data import batch_losses, text_windows

        self.measurer, recipe = measurer, measurer.recipe
        if str(prose_file) in measurer.domains:  # certified on its first windows: measure its held-out ones only
            prose = measurer.domains[str(prose_file)].verification
        else:
            prose = text_windows(measurer.loaded.tokenizer, str(prose_file), 10_000, recipe.data.seqlen)
        self.files: list[Path] = []
        bierce = text_windows(measurer.loaded.tokenizer, str(BIERCE), 10_000, recipe.data.seqlen)
        self.windows = {"prose": prose, "stretch": stretch, "bierce": bierce}
        with recipe.installed(measurer.model):
            self.dense = {k: batch_losses(measurer.model, w, recipe.batch_size) for k, w in self.windows.items()}

    def measure(self, plan) -> dict:
        from ssm_profile.calibration.data import batch_losses, paired_increase
        from ssm_profile.criteria.masks import MaskApplier

        v = plan.verification
        m, out = self.measurer, {"verification": _increase(v.rel_ppl_increase, v.interval, v.windows)}
        cut = m.cut(plan.actions)  # a plan action names its mask as the option it came from did
        with m.recipe.installed(m.model), MaskApplier(m.model) as applier, m.skipping(plan.actions):
            applier.apply(cut.mask, cut.values, cut.norm_eps)
            for name, windows in self.windows.items():
                pruned = batch_losses(m.model, windows, m.recipe.batch_size)
                p = paired_increase(self.dense[name].tolist(), pruned.tolist())
                out[name] = _increase(p["rel_ppl_increase"], p["interval"], p["windows"])
        return out


def plan_row(model: str, result, run_dir: Path, measurer, config, held_out: HeldOut, apply: bool) -> dict:
    from ssm_profile.base.errors import PlanError
    from ssm_profile.plan import PlanRequest, make_plan
    from ssm_profile.plan.certify import Certifier

    metric, ratio, tol, structures = config
    row = {"key": key_of(model, *config), "model": model, "metric": metric, "ratio": ratio, "tolerance": tol,
           "structures": structures}
    started = time.perf_counter()
    try:
        request = PlanRequest(metric=metric, ratio=ratio, max_ppl_increase=tol, structures=structures,
                              also_on=tuple(measurer.domains))
        plan = make_plan(result, request, run_path=run_dir, loaded=measurer.loaded, measurer=measurer)
    except PlanError as err:
        return {**row, "status": "infeasible", "why": str(err), "seconds": round(time.perf_counter() - started, 1)}
    c = plan.certification
    row.update(status="feasible" if plan.actions else "empty", actions=len(plan.actions),
               reduction=plan.predicted.reduction_ratio, backoff=plan.measured.backoff_steps,
               search=plan.measured.rel_ppl_increase, bound=c.bound if c else None,
               rule=getattr(Certifier, "rule", f"{c.rule} {c.level}"))
    if plan.actions:
        row["sets"] = held_out.measure(plan)
        if apply:
            row["applied"] = measure_plan(model, plan, held_out.files)
    row["seconds"] = round(time.perf_counter() - started, 1)
    return row


def run_model(model: str, out: Path, configs, done: set[str], rows_file: Path, apply: bool,
              also_on: tuple[str, ...] = ()) -> None:
    from ssm_profile.plan.measure import Measurer

    todo = [c for c in configs if key_of(model, *c) not in done]
    if not todo:
        return
    run_dir, result, loaded = run_for(model, out)
    measurer = Measurer(result, loaded, lambda done, total, label: None, domains=also_on)
    stretch_file = out / model / "unused_stretch.txt"
    held_out = HeldOut(measurer, PROSE, unused_stretch(loaded, result, stretch_file))
    held_out.files = [PROSE, stretch_file, BIERCE]
    for config in todo:
        row = plan_row(model, result, run_dir, measurer, config, held_out, apply)
        with rows_file.open("a", encoding="utf-8") as f:  # one flushed line per plan: a rerun resumes here
            f.write(json.dumps(row) + "\n")
        print(_line(row), flush=True)


def _line(row: dict) -> str:
    head = f"{row['model']:13} {row['metric']:6} {row['ratio']!s:4} {row['tolerance']:.2f} {row['structures']:12}"
    if row["status"] != "feasible":
        return f"{head} {row['status']} ({row['seconds']} s)"
    sets = "  ".join(f"{name} {row['sets'][name]['increase']:+.2%}" for name, _ in SETS if name in row["sets"])
    return (f"{head} search {row['search']:+.2%} bound {row['bound']:+.2%} backoff {row['backoff']}  {sets}  "
            f"({row['seconds']} s)")


def summary(rows: list[dict]) -> str:
    feasible = [r for r in rows if r["status"] == "feasible"]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("feasible", "empty", "infeasible")}
    lines = [(f"{len(rows)} plans: {counts['feasible']} feasible (with cuts), {counts['empty']} empty (no cut fits), "
              f"{counts['infeasible']} refused as infeasible"), "",
             "| measured on | within tolerance (of feasible plans) | worst increase ÷ tolerance | median ÷ search |",
             "|---|---|---|---|"]
    for name, words in SETS:
        got = [r for r in feasible if name in r.get("sets", {})]
        if not got:
            continue
        ratios = [r["sets"][name]["increase"] / r["tolerance"] for r in got]
        within = sum(x <= 1 for x in ratios)
        gap = [r["sets"][name]["increase"] / r["search"] for r in got if r["search"] > 0]
        median_gap = f"{statistics.median(gap):.2f}x" if gap else "—"
        lines.append(f"| {words} | {within}/{len(got)} ({within / len(got):.0%}) | {max(ratios):.2f} | "
                     f"{median_gap} |")
    for model in sorted({r["model"] for r in feasible}):
        mine = [r for r in feasible if r["model"] == model]
        worst = max(mine, key=lambda r: r["sets"]["verification"]["increase"] / r["tolerance"])
        lines.append(f"{model}: {len(mine)} feasible; worst on verification {worst['metric']} {worst['ratio']} "
                     f"{worst['structures']} at {worst['tolerance']:.0%}: search {worst['search']:+.2%}, bound "
                     f"{worst['bound']:+.2%}, verification {worst['sets']['verification']['increase']:+.2%}")
    return "\n".join(lines)


def accept_on_the_mean() -> None:
    """The rule before the prediction bound: a plan fits when its mean increase on the search windows does."""
    from ssm_profile.plan.certify import Certifier

    Certifier.bound = lambda self, m: m["rel_ppl_increase"]
    Certifier.rule = "mean"


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/promise", help="where the profiles and grid.jsonl are kept")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated embedded models")
    parser.add_argument("--quick", action="store_true", help=f"a subset: ratios {QUICK['ratios']}, "
                        f"tolerances {QUICK['tolerances']}")
    parser.add_argument("--apply", action="store_true", help="also apply and validate each plan (what a user "
                        "runs; slow: transformers' reference kernels)")
    parser.add_argument("--rule", choices=("bound", "mean"), default="bound",
                        help="bound: the planner's rule; mean: accept on the search windows' mean, as plans did "
                        "before the prediction bound (for comparison; rows in OUT/grid-mean.jsonl)")
    parser.add_argument("--also-on-prose", action="store_true",
                        help="certify every plan on the prose's first windows too (plan --also-on) and measure the "
                        "prose on its held-out last windows only (rows in OUT/grid-also-on.jsonl)")
    parser.add_argument("--summary-only", action="store_true", help="summarise OUT/grid.jsonl, measure nothing")
    args = parser.parse_args()
    if args.apply and args.also_on_prose:
        parser.error("--apply validates on the whole prose, certifying windows included; "
                     "run it without --also-on-prose")
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_file = out / ("grid.jsonl" if args.rule == "bound" else "grid-mean.jsonl")
    if args.also_on_prose:
        rows_file = out / "grid-also-on.jsonl"
    if args.rule == "mean":
        accept_on_the_mean()
    rows = [json.loads(x) for x in rows_file.read_text().splitlines() if x.strip()] if rows_file.exists() else []
    if not args.summary_only:
        configs = grid(args.quick)
        for model in args.models.split(","):
            run_model(model, out, configs, {r["key"] for r in rows}, rows_file, args.apply,
                      (str(PROSE),) if args.also_on_prose else ())
        rows = [json.loads(x) for x in rows_file.read_text().splitlines() if x.strip()]
    wanted = {key_of(m, *c) for m in args.models.split(",") for c in grid(args.quick)}
    unique = {r["key"]: r for r in rows if r["key"] in wanted}  # one row a plan (two processes may both have run it)
    print("\n" + summary(list(unique.values())))


if __name__ == "__main__":
    main()
