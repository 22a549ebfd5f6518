"""Pruning plans: from a profile run to the cheapest set of cuts that meets a budget, measured.

``make_plan(result, PlanRequest(metric=..., ratio=...))`` turns a
:class:`ssm_profile.profiling.results.ProfileResult` into a :class:`ssm_profile.documents.Plan` (``plan.json``,
schema ``profiler/schemas/plan.schema.json``); :class:`PlanRequest` is what the user asks, checked when made.
The *metric* is what the plan reduces (params | flops | state); a *target* is what a cut acts on
(a parameter group or a unit kind), as in the profile.

1. **Options.** For every target of the run's model-wide sweep (a parameter group such as
   ``in_proj`` or a unit kind such as ``unit:state``): level 0 (untouched) and each measured
   sparsity, with the best criterion at that level (lowest measured ΔL; ``random`` only when
   asked for by name) or the user's criterion where it was measured. Cost = the measured
   single-target ΔL, negatives clipped to 0. Gain = what the cut removes of the chosen metric:

   * ``params``: zeroed elements (unstructured, N:M) or ``params_per_unit x units x layers``;
   * ``flops`` (dense FLOPs per token, :mod:`ssm_profile.model.analysis` conventions): structured cuts
     only, measured by slicing the units out of a shape-only (meta-device) copy of the model;
     unstructured and N:M zeros give 0;
   * ``state`` (recurrent-state bytes per sequence): state/head/channel unit cuts only, likewise.

   * with ``structures`` listing ``layers``: every removable SSM layer is one more target of one level,
     removed whole, its ΔL measured by the plan itself (:mod:`.layers`).

   Two targets may cut the same tensors (``in_proj`` zeros and ``unit:channel`` rows); their
   joint gain is less than the sum. The overlap of every pair of options is estimated (exactly
   for two unit cuts, by slicing both on the meta model; for zeros vs units assuming the zeros
   fall independently of the units) and enters the MILP below through pair variables.
2. **Solve** a multiple-choice knapsack exactly (``scipy.optimize.milp``): binary ``x[t,l]``,
   one level per target. Without a budget: maximise the reduction s.t. ``Σ cost <= ln(1 + tol)``.
   With ``ratio``/``absolute``: minimise ``Σ cost`` s.t. reduction >= budget and
   ``Σ cost <= ln(1 + tol)``; infeasible -> :class:`PlanError` naming the best reachable point.
   Among equally good solutions a second solve picks the least risky one (least sum of the upper
   95% bootstrap bounds of ΔL): clipped noise-level costs are often all 0. Predicted additivity of ΔL is an approximation, hence step 3.
3. **Measure** (unless ``measure=False``): load the run's model (same weights fingerprint), build
   the combined masks exactly as the profile did (same data spec, calibration statistics and
   evaluation windows; unit indices from the run's stored unit scores) and measure held-out loss
   against the dense model. Parameter overlaps of the chosen actions are first counted exactly
   from their masks (re-solving if that changes the choice; pairwise inclusion-exclusion is then a
   lower bound of what the plan removes). A measurement is *certified* (:mod:`.certify`) when the
   one-sided 95% t prediction bound of its increase on as many unseen windows as verification holds,
   from the search windows' paired per-window differences, is within tolerance, not merely its mean:
   the most pruning that fits on the search windows is the plan those windows flatter most (the
   winner's curse). Not certified: back off up to ``MAX_BACKOFF`` steps:
   measure the plan without each of its actions, raise each action's cost to its marginal loss in
   the combination, shrink the loss budget (x0.7), exclude the failed plan and every plan at least
   as aggressive in all of its targets, re-solve and measure again. The answer is the best certified
   plan (within budget); none -> :class:`PlanError` with the best measured point. The plan records
   the rule, the bound and why (``certification``); then verification checks the promise on
   windows no step saw.

Modules: :mod:`.options` (options, overlaps), :mod:`.layers` (whole layers as options), :mod:`.shapes` (shape
accounting on a meta-device model), :mod:`.solver` (the MILP, scipy only), :mod:`.certify` (the acceptance rule),
:mod:`.measure` (the measurer, masks rebuilt through :class:`ssm_profile.profiling.recipe.RunRecipe`),
:mod:`.request` (:class:`PlanRequest`), :mod:`.search` (make_plan and the back-off), :mod:`.assemble` (the
plan document). The plan document (:class:`Plan`, ``load_plan``, ``write_plan``) lives in
:mod:`ssm_profile.documents`; ``Plan.check_model`` refuses other weights.

The public face (``__all__``) is what the CLI, the TUI and users need; the other modules are the wing's own.
"""

from __future__ import annotations

from ..base.face import lazy_face

__all__, __getattr__ = lazy_face(__name__, {
    ".request": ("PlanRequest", "METRICS", "SCOPES", "DEFAULT_MAX_PPL_INCREASE"),
    ".search": ("make_plan",),
    ".measure": ("load_run_model",),
})
