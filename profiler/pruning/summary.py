"""What a plan will physically change, in words every front-end shows first (torch-free).

Only actions executed as ``slice`` (or ``remove``, a whole layer) change shapes: fewer parameters, smaller weights on disk, fewer
FLOPs per token, less recurrent state. Actions executed as ``zero`` only set weights to 0: the model
keeps its size and speed. :func:`plan_summary_lines` leads with the physical change (or warns that
there is none) and then gives the predicted reduction, each percentage naming its total
(:mod:`ssm_profile.base.fmt`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..base.fmt import amount, human_count, percent_of, scope_name, share

if TYPE_CHECKING:
    from ..documents import Plan

METRICS = ("params", "flops", "state")
UNITS_HINT = "To shrink the model, plan with `--structures units` (whole channels, heads or states sliced out)"


def physical_change(plan: Plan) -> dict[str, int]:
    """Params, FLOPs/token and state bytes/sequence that sliced actions remove (zeros remove none).

    The plan's own count of what its sliced cuts remove together, overlaps counted once; older plans
    without it: the sum over sliced actions, capped by the predicted totals."""
    sliced = [a for a in plan.actions if a.execution in ("slice", "remove")]  # whole layers go too
    change = {m: min(sum(a.removed(m) for a in sliced), plan.predicted.removed(m)) for m in METRICS}
    if plan.predicted.params_sliced is not None:
        change["params"] = plan.predicted.params_sliced
    return change


def changes_nothing(plan: Plan) -> bool:
    """True when the plan has actions but none of them changes a shape (all are executed as zeros)."""
    return bool(plan.actions) and not any(physical_change(plan).values())


def plan_summary_lines(plan: Plan) -> list[str]:
    """Plain-text lines: the physical change (or the warning that there is none), then the zeros and
    the predicted reduction of the objective, each percentage naming its total."""
    if not plan.actions:
        return ["no actions: the model stays as it is"]
    dense, pred, obj = plan.dense, plan.predicted, plan.objective
    physical = physical_change(plan)
    zeroed = pred.params_removed - physical["params"]
    layers = [layer for a in plan.actions if a.execution == "remove" for layer in a.layers]
    lines = []
    if any(physical.values()):
        parts = [f"{amount(m, physical[m])} ({share(physical[m], dense.total(m), scope_name('model', m))})"
                 for m in METRICS if physical[m]]
        how = "sliced" + (f", {len(layers)} whole layer(s) removed" if layers else "") if any(
            a.execution == "slice" for a in plan.actions) else f"{len(layers)} whole layer(s) removed"
        lines.append(f"physically removed ({how}): " + ", ".join(parts) + "; weights on disk shrink with the params")
        if zeroed > 0:
            lines.append(f"also set to zero (no size or speed change): {human_count(zeroed)} params")
    else:
        lines.append(f"WARNING: this plan changes no shapes. Every action is executed as zeros, so the parameter "
                     f"count, weights on disk, FLOPs/token and state stay the same; only {human_count(zeroed)} "
                     f"params become 0 ({share(zeroed, dense.parameters, scope_name('model'))}). {UNITS_HINT}")
    of = pred.reduction_of or scope_name(obj.scope, obj.metric)
    model_ratio = pred.reduction_ratio_model
    also = "" if model_ratio is None or obj.scope in (None, "model") else \
        f" = {percent_of(model_ratio, pred.reduction_model_of or scope_name('model', obj.metric))}"
    lines.append(f"predicted reduction: {percent_of(pred.reduction_ratio, of)}{also}"
                 f"{' (zeros included)' if zeroed > 0 and obj.metric == 'params' else ''}, "
                 f"perplexity {pred.rel_ppl_increase:+.1%} of dense")
    return lines
