"""From a chosen solution to the :class:`ssm_profile.documents.Plan` document."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..documents import (Certification, DomainCheck, Dense, Measured, Objective, Plan, PlanAction, PlanData, PlanModel, PlanRun, Predicted,
                         Verification, one_line)
from ..base.fmt import scope_name
from ..profiling.results import ProfileResult
from .layers import is_layer, layer_totals
from .options import Option, metric_total
from .request import METRICS, PlanRequest
from .shapes import Shapes
from .solver import net_gain


@dataclass
class Solution:
    """Everything a plan document is made of: the request, the options, the choice and its measurement."""

    result: ProfileResult
    request: PlanRequest
    options: list[list[Option]]
    choice: Sequence[int]
    overlaps: dict[str, dict]
    shapes: Shapes
    run_path: str | Path | None = None
    measured: dict[str, Any] | None = None  # the chosen plan's measurement (None: not measured)
    backoff: int = 0
    notes: list[str] = field(default_factory=list)
    verification: Verification | None = None  # the promise on the held-out windows (None: not measured)
    certification: Certification | None = None  # how the measured plan was accepted (None: not measured)
    domains: list[DomainCheck] | None = None  # the `--also-on` texts' certification and verification

    @property
    def actions(self) -> list[Option]:
        return actions_of(self.options, self.choice)


def actions_of(options: list[list[Option]], choice: Sequence[int]) -> list[Option]:
    return [options[t][l] for t, l in enumerate(choice) if l > 0]


def _execution(actions: list[Option], shapes: Shapes) -> dict[int, tuple[str, str]]:
    """id(action) -> (execution, note). Unit cuts are sliced where :meth:`Shapes.execution` (the
    slicing apply runs, asked for all unit cuts together) slices them, else applied as zeros."""
    out: dict[int, tuple[str, str]] = {}
    together = shapes.execution({a.unit_kind: a.sparsity for a in actions if a.unit_kind})
    for a in actions:
        if is_layer(a):
            out[id(a)] = ("remove", (f"decoder layer {a.layers[0]} removed whole (removed last by apply: the other "
                                     "actions keep this numbering); the config lists one layer fewer"))
        elif not a.unit_kind:
            kind = "N:M semi-structured" if a.structure != "unstructured" else "unstructured"
            extra = " or N:M sparse kernels" if a.structure != "unstructured" else ""
            out[id(a)] = ("zero", (f"{kind} zeros: shapes and dense FLOPs unchanged; saving memory needs a sparse "
                                  f"format{extra}"))
        elif not together[a.unit_kind]:
            out[id(a)] = ("slice", (f"uniform cut ({_per_block_text(a)}) in every layer; the stock config expresses "
                          "the sliced shapes"))
        else:
            why = together[a.unit_kind]
            if not shapes.execution({a.unit_kind: a.sparsity})[a.unit_kind]:
                why = f"sliceable alone, not with the other unit cuts: {why}"
            out[id(a)] = ("zero", one_line(f"applied as zeros ({why}); removes parameters (nonzeros) only, "
                                           "no FLOPs or state", 300))
    return out


def _per_block_text(a: Option) -> str:
    counts = sorted(set(a.per_block.values()))
    return f"{'/'.join(str(c) for c in counts)} {a.unit_kind} unit(s) removed per block"


def _plan_action(a: Option, execution: tuple[str, str]) -> PlanAction:
    how, why = execution
    sliced = how in ("slice", "remove")  # zeros remove no FLOPs nor state
    return PlanAction(target=a.target, layers=list(a.layers), structure=a.structure, criterion=a.criterion,
                      sparsity=float(a.sparsity), unit_kind=a.unit_kind,
                      unit_indices=a.unit_indices if a.unit_kind else None, params_removed=int(a.params),
                      flops_removed=int(a.flops) if sliced else 0, state_bytes_removed=int(a.state) if sliced else 0,
                      predicted_delta_loss=float(a.delta_loss), execution=how, note=why)


def _totals(s: Solution, execution: dict[int, tuple[str, str]]) -> dict[str, float]:
    """Params: every zeroed or removed parameter (overlaps counted once); FLOPs and state: exactly
    what the sliced unit cuts remove together (zeros remove none)."""
    totals = {"params": net_gain(s.choice, [[o.gain("params") for o in levels] for levels in s.options],
                                 s.overlaps["params"]), "flops": 0, "state": 0, "params_sliced": 0}
    sliced = {a.unit_kind: a.sparsity for a in s.actions if a.unit_kind and execution[id(a)][0] == "slice"}
    combined = s.shapes.effect(sliced) if sliced else None
    if combined is not None:
        totals["flops"], totals["state"] = combined["flops"], combined["state"]
        totals["params_sliced"] = combined["params"]
    if any(is_layer(a) for a in s.actions):
        sliced_actions = [a for a in s.actions if is_layer(a) or execution[id(a)][0] == "slice"]
        totals.update(layer_totals(sliced_actions, combined))
    return totals


def _notes(s: Solution, totals: dict[str, float]) -> list[str]:
    notes, actions = list(s.notes), s.actions
    overlap_total = sum(a.params for a in actions) - totals["params"]
    if overlap_total > 0:
        notes.append(f"actions overlap on about {round(overlap_total):,} parameters (counted once in the "
                     "predicted totals)")
    if any(a.delta_loss < 0 for a in actions):
        notes.append("negative single-target loss changes (evaluation noise) count as 0 in the predicted total")
    if len(actions) > 1:
        notes.append("the predicted loss change adds single-target measurements; interactions make it an "
                     "approximation" + ("" if s.measured else " (not measured: --no-measure)"))
    if s.shapes.model is None:
        notes.append(f"FLOPs/state of unit cuts are estimates: {s.shapes.problem}")
    if not actions:
        notes.append("no cut fits the loss budget; the plan leaves the model unchanged")
    outside = sum(a.params - sum(v for p, v in a.removed.items() if p in s.shapes.numel) for a in actions
                  if is_layer(a))
    if outside > 0 and s.request.scope == "ssm":
        notes.append(f"the removed layers also take {round(outside):,} parameters outside the SSM mixers (norms, "
                     "MLPs), counted in the predicted reduction")
    return notes


def _model(result: ProfileResult) -> PlanModel:
    model = result.record.model
    return PlanModel(name=model.name, source=model.source, fingerprint=model.fingerprint,
                     architecture=result.analysis.model.architecture,
                     class_name=model.class_name or result.analysis.model.class_name)


def _run(result: ProfileResult, run_path: str | Path | None) -> PlanRun:
    settings = result.record.settings
    # how the profile scored (kernels, statistics batch size): apply rebuilds element masks the same way
    return PlanRun(path=str(Path(run_path).resolve()) if run_path is not None else "",
                   created=result.record.created, fast_kernels=bool(settings.fast_scan),
                   batch_size=int(settings.batch_size))


def _data(result: ProfileResult) -> PlanData:
    spec = result.record.data_spec()
    return PlanData(calibration=spec.calibration, evaluation=spec.evaluation, nsamples=spec.nsamples,
                    eval_samples=spec.eval_samples, seqlen=spec.seqlen, seed=spec.seed,
                    verify_samples=spec.verify_samples)


def _measured(s: Solution) -> Measured | None:
    m = s.measured
    if m is None:
        return None
    return Measured(loss=float(m["loss"]), delta_loss=float(m["delta_loss"]),
                    rel_ppl_increase=float(m["rel_ppl_increase"]),
                    within_tolerance=bool(m["rel_ppl_increase"] <= s.request.max_ppl_increase),
                    backoff_steps=int(s.backoff),
                    params_removed=int(m["params_removed"]))


def assemble(s: Solution) -> Plan:
    """The plan document of solution ``s``, checked against the schema."""
    result, request, metric = s.result, s.request, s.request.metric
    actions = s.actions
    execution = _execution(actions, s.shapes)
    totals = _totals(s, execution)
    notes = _notes(s, totals)
    delta = sum(o.cost for o in actions)
    dense_total = {m: metric_total(result, m) for m in METRICS}
    scope_total = metric_total(result, metric, request.scope)
    plan = Plan(
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        model=_model(result), run=_run(result, s.run_path), data=_data(result),
        objective=Objective(metric=metric, ratio=None if request.ratio is None else float(request.ratio),
                            absolute=None if request.absolute is None else int(request.absolute),
                            max_ppl_increase=float(request.max_ppl_increase), scope=request.scope),
        dense=Dense(loss=result.dense_loss, perplexity=result.dense_perplexity, parameters=dense_total["params"],
                    flops_per_token=dense_total["flops"], state_bytes_per_sequence=dense_total["state"]),
        actions=[_plan_action(a, execution[id(a)]) for a in actions],
        predicted=Predicted(delta_loss=float(delta), rel_ppl_increase=math.expm1(delta),
                            params_removed=round(totals["params"]), flops_removed=round(totals["flops"]),
                            state_bytes_removed=round(totals["state"]), scope_total=scope_total,
                            reduction_ratio=float(totals[metric] / max(1, scope_total)),
                            reduction_ratio_model=float(totals[metric] / max(1, dense_total[metric])),
                            reduction_of=scope_name(request.scope, metric),
                            reduction_model_of=scope_name("model", metric),
                            params_sliced=round(totals["params_sliced"])),
        measured=_measured(s), notes=notes, verification=s.verification, certification=s.certification,
        domains=s.domains)
    return plan.validated("the new plan")
