"""Options: for every target of the run's model-wide sweep, level 0 and each measured level, with
what it costs (measured ΔL) and removes; and the pairwise overlaps of options.

Choosing and estimating on different windows (cross-fitting). At each level the criterion is
the one with the lowest ΔL, and the minimum of several noisy ΔL is biased low (the winner's
curse): the plan would promise less loss than it delivers. So the level's cost is estimated on
windows that did not choose its criterion: the run's search windows are split in two folds
(even and odd windows); the criterion chosen on fold A is costed on fold B and the one chosen on
B is costed on A; the cost is the average of the two. When both folds choose the same criterion
that average is its ΔL over all windows (the folds are of equal size), which is used as measured.
The action keeps the criterion chosen on all windows. With one candidate (a single criterion, or
``--criterion`` where it was measured) nothing is chosen and the cost is its measured ΔL. Trials
without per-window losses fall back to the minimum.

Two targets may cut the same tensors (``in_proj`` zeros and ``unit:channel`` rows); their joint
gain is less than the sum. Overlaps are exact for two unit cuts (both sliced on the meta model)
and, for zeros vs units, estimated assuming the zeros fall independently of the units.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..base.errors import PlanError
from ..base.fmt import scope_name
from ..profiling.results import ProfileResult
from .request import METRICS, NM_PATTERN
from .shapes import Shapes, removed_per_block


@dataclass
class Option:
    """One level of one target: what it costs (measured ΔL) and removes."""

    target: str
    sparsity: float
    structure: str  # "unstructured" | "N:M" | "units" ("none" for level 0)
    criterion: str | None
    delta_loss: float  # measured single-target ΔL (may be negative: noise)
    rel_ppl_increase: float
    risk: float = 0.0  # upper end of the 95% bootstrap interval of ΔL, clipped at 0 (tie-breaker)
    params: int = 0
    flops: int = 0
    state: int = 0
    removed: dict[str, float] = field(default_factory=dict)  # full param name -> elements removed
    unit_kind: str | None = None
    per_block: dict[int, int] = field(default_factory=dict)  # layer -> units removed per block
    unit_indices: dict[str, list[int]] | None = None
    layers: list[int] = field(default_factory=list)

    @property
    def cost(self) -> float:
        return max(0.0, self.delta_loss)

    def gain(self, metric: str) -> int:
        return {"params": self.params, "flops": self.flops, "state": self.state}[metric]


def metric_total(result: ProfileResult, metric: str, scope: str = "model") -> int:
    """The metric's total over the whole model, or over the SSM mixers (what plans can cut).

    ``scope="ssm"`` matches how the literature states sparsity ("50% of the SSM module") and keeps
    ratios meaningful on small models whose embeddings dominate the parameter count."""
    t = result.analysis.totals
    whole, ssm = {"params": (t.parameters, t.ssm_parameters), "flops": (t.flops_per_token, t.ssm_flops_per_token),
                  "state": (t.state_bytes_per_sequence, t.state_bytes_per_sequence)}[metric]
    return int(ssm if scope == "ssm" else whole)


def scope_words(metric: str, scope: str) -> str:
    return scope_name(scope, metric)  # the one wording of every front-end


def _unit_indices(result: ProfileResult, criterion: str, kind: str, families: Mapping[int, Any],
                  sparsity: float) -> dict[str, list[int]] | None:
    import torch

    from ..criteria.masks import select_units

    scores = result.unit_scores.get(criterion, {})
    out = {}
    for layer, family in sorted(families.items()):
        values = scores.get(str(layer), {}).get(kind)
        if values is None or len(values) != family.count:
            return None
        out[str(layer)] = [int(u) for u in select_units(torch.tensor(values, dtype=torch.float64), family, sparsity)]
    return out


def crossfit_delta(trials: Sequence[Any], dense: Sequence[float]) -> float:
    """ΔL of "the criterion with the lowest ΔL", estimated on windows that did not choose it
    (see the module docstring); ``dense``: the dense model's loss on each search window."""
    import numpy as np

    n = len(dense)
    if len(trials) == 1 or n < 2 or any(len(t.window_losses) != n for t in trials):
        return float(min(t.delta_loss for t in trials))
    base = np.asarray(dense, dtype=np.float64)
    losses = {t.criterion: np.asarray(t.window_losses, dtype=np.float64) - base for t in trials}
    folds = (np.arange(0, n, 2), np.arange(1, n, 2))
    chosen = [min(sorted(losses), key=lambda c: float(losses[c][fold].mean())) for fold in folds]
    if chosen[0] == chosen[1]:
        return float(next(t.delta_loss for t in trials if t.criterion == chosen[0]))
    return float((losses[chosen[0]][folds[1]].mean() + losses[chosen[1]][folds[0]].mean()) / 2)


def build_options(result: ProfileResult, metric: str, criterion: str | None = None,
                  structures: Sequence[str] | None = None, shapes: Shapes | None = None,
                  ) -> tuple[list[list[Option]], list[str]]:
    """Per target: level 0 and every measured level that reduces ``metric``; plus notes."""
    if metric not in METRICS:
        raise PlanError(f"unknown --metric '{metric}'; choose from {', '.join(METRICS)}")
    shapes = shapes or Shapes(result)
    notes: list[str] = []
    run_structure = result.record.settings.structure
    measured = result.criteria()
    if criterion is not None and criterion not in measured:
        raise PlanError(f"criterion '{criterion}' was not measured in this run; measured: {', '.join(measured)}")
    allowed = None if structures is None else set(structures)
    if allowed is not None and run_structure not in allowed and any(not t.startswith("unit:") for t in result.targets()):
        notes.append(f"parameter groups were swept as {run_structure} in this run, which --structures excludes; "
                     "only unit cuts are considered" if "units" in allowed else
                     f"parameter groups were swept as {run_structure} in this run, which --structures excludes")
    if allowed is not None:
        for s in sorted(allowed - {"units", "unstructured", run_structure}):
            notes.append(f"{s} was not measured in this run (it swept {run_structure}); profile that structure to plan it")
    nm = NM_PATTERN.match(run_structure)
    layers_of_group: dict[str, list[int]] = {}
    params_of_group: dict[str, list[str]] = {}
    for g in result.analysis.mixer_groups():
        layers_of_group.setdefault(g.group, []).append(g.layer)
        params_of_group.setdefault(g.group, []).extend(p for p in g.params if not p.endswith(".bias"))
    fallback: list[str] = []
    zero_executed: set[str] = set()

    out: list[list[Option]] = []
    for target in dict.fromkeys(t.target for t in result.model_trials):
        is_unit = target.startswith("unit:")
        structure = "units" if is_unit else run_structure
        if allowed is not None and structure not in allowed:
            continue
        kind = target[5:] if is_unit else None
        families = shapes.families(kind) if is_unit else {}
        by_level: dict[float, list] = {}
        for t in result.model_trials:
            if t.target != target or t.partial or not math.isfinite(t.delta_loss):
                continue  # stopped early (far outside tolerance) or a screen (a few windows): never an option
            if t.criterion == "random" and criterion != "random":
                continue  # a baseline, not a method: only when asked for by name
            if is_unit and _unit_indices(result, t.criterion, kind, families, t.sparsity) is None:
                continue  # no stored unit scores: the plan could not name the units
            level = round(1.0 - int(nm.group(1)) / int(nm.group(2)), 6) if (nm and not is_unit) else round(t.sparsity, 6)
            by_level.setdefault(level, []).append(t)
        levels = [Option(target, 0.0, "none", None, 0.0, 0.0, layers=[])]
        for sparsity in sorted(by_level):
            trials = by_level[sparsity]
            mine = [t for t in trials if t.criterion == criterion]
            if criterion is not None and not mine and target not in fallback:
                fallback.append(target)
            best = min(mine or trials, key=lambda t: (t.delta_loss, t.criterion))
            cost = crossfit_delta(mine or trials, result.dense_window_losses)
            opt = Option(target, sparsity, structure, best.criterion, cost, math.expm1(min(cost, 700.0)),
                         risk=max(0.0, float(result.delta_ci(best)[1])))
            if is_unit:
                eff = shapes.effect({kind: best.sparsity})
                opt.params, opt.flops, opt.state = int(eff["params"]), int(eff["flops"]), int(eff["state"])
                if shapes.execution({kind: best.sparsity}).get(kind, ""):
                    opt.flops = opt.state = 0  # executed as zeros: only the zeroed params count
                    zero_executed.add(target)
                opt.removed = dict(eff["removed"])
                opt.unit_kind = kind
                opt.per_block = {layer: removed_per_block(f, best.sparsity) for layer, f in families.items()}
                opt.unit_indices = _unit_indices(result, best.criterion, kind, families, best.sparsity)
                opt.layers = sorted(families)
                opt.sparsity = round(best.sparsity, 6)
                if not any(opt.per_block.values()):
                    continue  # rounds to zero units everywhere
            else:
                opt.params = int(best.pruned_params)
                opt.layers = sorted(l for l in layers_of_group.get(target, []) if l is not None)
                prunable = {p: shapes.numel[p] for p in params_of_group.get(target, [])}
                total = sum(prunable.values())
                frac = opt.params / total if total else 0.0
                opt.removed = {p: frac * n for p, n in prunable.items()}
            if opt.gain(metric) > 0:
                levels.append(opt)
        if len(levels) > 1:
            out.append(levels)
    if not out:
        what = {"params": "parameters", "flops": "dense FLOPs (only structured unit cuts do)",
                "state": "recurrent state (only state/head/channel unit cuts do)"}[metric]
        zeros = (f"; {', '.join(sorted(zero_executed))} would be applied as zeros on this model, which "
                 "removes parameters (nonzeros) only") if zero_executed and metric != "params" else ""
        advice = ("choose --metric params, or a model whose config can express these cuts" if zeros else
                  "profile unit targets (e.g. --targets unit:state) or choose another --metric")
        raise PlanError(f"nothing measured in this run reduces {what}{zeros}; {advice}")
    if fallback:
        notes.append(f"{criterion} was not measured for {', '.join(fallback)}; the best measured criterion is used there")
    if "random" in measured and criterion != "random":
        notes.append("the random baseline is never chosen unless asked for (--criterion random)")
    return out, notes


def overlaps(options: list[list[Option]], shapes: Shapes) -> dict[str, dict]:
    """Pairwise double-counted reduction per metric: {metric: {((t1, l1), (t2, l2)): amount}}."""
    out: dict[str, dict] = {m: {} for m in METRICS}
    flat = [(t, l, o) for t, levels in enumerate(options) for l, o in enumerate(levels) if l > 0]
    for i, (t1, l1, a) in enumerate(flat):
        for t2, l2, b in flat[i + 1:]:
            if t2 == t1:
                continue
            key = ((t1, l1), (t2, l2))
            if a.unit_kind and b.unit_kind and shapes.model is not None and a.unit_kind != b.unit_kind:
                both = shapes.effect({a.unit_kind: a.sparsity, b.unit_kind: b.sparsity})
                for metric in METRICS:
                    value = a.gain(metric) + b.gain(metric) - int(both[metric])
                    if value > 0:
                        out[metric][key] = float(value)
                continue
            shared = set(a.removed) & set(b.removed)
            value = sum(a.removed[p] * b.removed[p] / shapes.numel[p] for p in shared if shapes.numel.get(p))
            if value > 0:
                out["params"][key] = min(value, float(min(a.params, b.params)))
    return out
