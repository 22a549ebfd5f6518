"""``make_plan``: solve, measure the combined plan, and back off until the measurement is within tolerance."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..documents import Plan
from ..base.errors import PlanError
from ..profiling.results import ProfileResult
from .assemble import Solution, actions_of, assemble
from .certify import Certifier
from .measure import Measurer, check_run_weights
from .layers import LayerVeto, is_layer, plan_options, plan_overlaps, wants_layers
from .options import METRICS, SCOPES, Option, metric_total, parse_structures, scope_words
from .shapes import shapes_for
from .solver import net_gain, solve_mckp

Progress = Callable[[int, int, str], None]
DEFAULT_MAX_PPL_INCREASE = 0.10
MAX_BACKOFF = 8
BACKOFF_LOSS_FACTOR = 0.7  # each back-off step shrinks the loss budget by this factor


def _fmt_amount(metric: str, value: float) -> str:
    unit = {"params": "params", "flops": "FLOPs/token", "state": "state bytes/sequence"}[metric]
    return f"{round(value):,} {unit}"


def _check_request(metric: str, ratio: float | None, absolute: int | None, max_ppl_increase: float,
                   scope: str) -> None:
    if metric not in METRICS:
        raise PlanError(f"unknown --metric '{metric}'; choose from {', '.join(METRICS)}")
    if ratio is not None and absolute is not None:
        raise PlanError("give either --ratio or --absolute, not both")
    if not (isinstance(max_ppl_increase, (int, float)) and 0 < max_ppl_increase and math.isfinite(max_ppl_increase)):
        raise PlanError(f"--max-ppl-increase must be a positive number such as 0.10, got {max_ppl_increase}")
    if scope not in SCOPES:
        raise PlanError(f"unknown --scope '{scope}'; choose from {', '.join(SCOPES)}")


def _budget(metric: str, ratio: float | None, absolute: int | None, scope: str, total: int) -> float | None:
    """The reduction to reach (None: as much as the loss budget allows)."""
    if total <= 0:
        raise PlanError(f"the run's analysis has no total for {metric}; profile the model again")
    if ratio is not None:
        if not 0 < ratio < 1:
            raise PlanError(f"--ratio must be in (0, 1) (a fraction of {scope_words(metric, scope)}), got {ratio}")
        return ratio * total
    if absolute is not None:
        if int(absolute) <= 0:
            raise PlanError(f"--absolute must be positive, got {absolute}")
        if int(absolute) > total:
            raise PlanError(f"--absolute {int(absolute):,} exceeds the total of {scope_words(metric, scope)}, "
                            f"{_fmt_amount(metric, total)}")
        return float(int(absolute))
    return None


class _Search:
    """The knapsack instance of one request, with what measurements teach it (costs, cuts, exact overlaps)."""

    def __init__(self, options: list[list[Option]], overlaps: dict[str, dict], metric: str, budget: float | None,
                 max_ppl_increase: float, total: int, scope: str):
        self.options, self.overlaps, self.metric, self.budget = options, overlaps, metric, budget
        self.tol, self.total, self.scope = max_ppl_increase, total, scope
        self.gains = [[o.gain(metric) for o in levels] for levels in options]
        self.costs = [[o.cost for o in levels] for levels in options]
        self.risks = [[o.risk for o in levels] for levels in options]
        self.cap0 = self.cap = math.log1p(max_ppl_increase)
        self.cuts: list[dict[int, int]] = []
        self.learned = 0
        self.veto: Callable[[Sequence[int]], dict[int, int] | None] | None = None  # combinations that cannot be applied

    def solve(self) -> list[int] | None:
        while True:
            choice = solve_mckp(self.gains, self.costs, cap=self.cap, budget=self.budget,
                                overlaps=self.overlaps[self.metric], cuts=self.cuts, risks=self.risks)
            cut = None if choice is None or self.veto is None else self.veto(choice)
            if cut is None:
                return choice
            self.cuts.append(cut)

    def gain(self, choice: Sequence[int]) -> float:
        return net_gain(choice, self.gains, self.overlaps[self.metric])

    def infeasible(self) -> PlanError:
        metric, budget, total = self.metric, self.budget, self.total
        best = solve_mckp(self.gains, self.costs, cap=self.cap0, overlaps=self.overlaps[metric], risks=self.risks)
        assert best is not None  # every target at level 0 is always feasible
        value = self.gain(best)
        predicted = sum(self.costs[t][l] for t, l in enumerate(best))
        return PlanError(f"cannot remove {_fmt_amount(metric, budget)} ({budget / total:.1%} of "
                         f"{scope_words(metric, self.scope)}) within "
                         f"+{self.tol:.0%} perplexity: the best reachable point is {value / total:.1%} "
                         f"({_fmt_amount(metric, value)}) at a predicted +{math.expm1(predicted):.1%} perplexity; "
                         "lower --ratio/--absolute or raise --max-ppl-increase")

    def learn(self, t: int, level: int, marginal: float, count: bool = True) -> None:
        """Raise the cost of target ``t`` at ``level`` and its more aggressive levels to ``marginal``."""
        for l2 in range(level, len(self.costs[t])):
            if marginal > self.costs[t][l2]:
                self.costs[t][l2] = marginal
                self.learned += count


def make_plan(result: ProfileResult, metric: str = "params", ratio: float | None = None,
              absolute: int | None = None, max_ppl_increase: float = DEFAULT_MAX_PPL_INCREASE,
              criterion: str | None = None, structures: str | Sequence[str] | None = None, measure: bool = True,
              loaded: Any = None, progress: Progress | None = None, *, run_path: str | Path | None = None,
              device: str = "cpu", scope: str = "ssm", world: Any = None,
              measurer: Measurer | None = None) -> Plan:
    """Build a :class:`Plan` from a profile result; see :mod:`ssm_profile.plan`.

    ``metric``: what to reduce (params | flops | state); ``ratio`` (of ``scope``'s total) or
    ``absolute``: the reduction to reach (neither: as much as ``max_ppl_increase`` allows).
    ``world`` (:class:`ssm_profile.profiling.distributed.World`, under torchrun): every rank runs the same
    search and the back-off's leave-one-out measurements are shared out among the ranks.
    ``measurer``: a :class:`Measurer` of this run to reuse (several plans of one run share its model,
    statistics and masks).
    """
    note = progress or (lambda done, total, label: None)
    _check_request(metric, ratio, absolute, max_ppl_increase, scope)
    total = metric_total(result, metric, scope)
    budget = _budget(metric, ratio, absolute, scope, total)
    structures = parse_structures(structures)

    note(0, 1, "options")
    if loaded is not None:
        check_run_weights(result, loaded)
    shapes = shapes_for(result, loaded)
    # whole layers are costed by measuring them: the measurer loads before the options then
    layer_measurer = None
    if measure and wants_layers(structures):
        layer_measurer = measurer = measurer or Measurer(result, loaded, note, device=device, world=world)
    options, notes = plan_options(result, metric, criterion, structures, shapes, layer_measurer)
    search = _Search(options, plan_overlaps(options, shapes), metric, budget, max_ppl_increase, total, scope)
    if layer_measurer is not None:
        search.veto = LayerVeto(options, layer_measurer, shapes)

    note(0, 1, "solving")
    choice = search.solve()
    if choice is None:
        raise search.infeasible()
    solution = Solution(result=result, metric=metric, ratio=ratio, absolute=absolute,
                        max_ppl_increase=max_ppl_increase, scope=scope, options=options, choice=choice,
                        overlaps=search.overlaps, shapes=shapes, run_path=run_path, notes=notes)
    if measure:
        measurer = measurer or Measurer(result, loaded, note, device=device, world=world)
        certifier = measurer.certifier(max_ppl_increase)
        _measure_and_back_off(search, solution, measurer, certifier, note)
        solution.certification = certifier.document(solution.measured)
        note(0, 1, "verifying on held-out windows")
        solution.verification = measurer.verify(solution.actions, max_ppl_increase)
    if isinstance(search.veto, LayerVeto):
        solution.notes += search.veto.notes
    return assemble(solution)


def _measure_and_back_off(search: _Search, s: Solution, measurer: Measurer, certifier: Certifier,
                          note: Progress) -> None:
    """Measure ``s.choice``; unless ``certifier`` accepts it (its bound within tolerance), back off
    (see :mod:`ssm_profile.plan`). Updates ``s``."""
    options, result = search.options, s.result
    measurer.expected_criteria = {o.criterion for levels in options for o in levels[1:]
                                  if not o.unit_kind and not is_layer(o)}
    if abs(measurer.dense_loss - result.dense_loss) > 1e-3:
        s.notes.append(f"dense loss re-measured as {measurer.dense_loss:.4f} (run: {result.dense_loss:.4f}); "
                       "measured changes are against the re-measured value")
    attempts: list[tuple[list[int], dict[str, Any], float]] = []  # (choice, measurement, reduction)
    exact: set = set()
    refinements = backoff = 0
    choice = list(s.choice)
    while True:
        # Overlaps of the chosen actions, counted exactly from their masks; re-solve if they moved.
        if _refine_overlaps(options, choice, search.overlaps["params"], exact, measurer) \
                and search.metric == "params" and refinements < 4 * len(options):
            refinements += 1
            again = search.solve()
            if again is None:
                if not backoff:
                    raise search.infeasible()
                break
            if again != choice:
                choice = again
                continue
        note(backoff, MAX_BACKOFF + 1, f"measuring plan (step {backoff + 1})")
        m = measurer.measure(actions_of(options, choice))
        attempts.append((list(choice), m, search.gain(choice)))
        if certifier.accepts(m) or backoff >= MAX_BACKOFF:
            break
        backoff += 1
        _learn_marginals(search, measurer, choice, m, attempts, backoff, note)
        again = search.solve()
        if again is None:
            break
        choice = again
    _choose_measured(search, s, attempts, backoff, bool(exact), certifier)
    note(MAX_BACKOFF + 1, MAX_BACKOFF + 1, "measured")


def _learn_marginals(search: _Search, measurer: Measurer, choice: list[int], m: dict[str, Any],
                     attempts: list, backoff: int, note: Progress) -> None:
    """One back-off step: learn each chosen action's marginal loss in this combination (leave one out),
    raise its cost (and its more aggressive levels') to that, shrink the loss budget, and exclude this
    plan and every plan at least as aggressive in all of its targets."""
    options = search.options
    chosen = [(t, l) for t, l in enumerate(choice) if l > 0]
    leave_one_out = chosen if len(chosen) > 1 else []
    withouts = [[lv if i != t else 0 for i, lv in enumerate(choice)] for t, _ in leave_one_out]
    note(backoff, MAX_BACKOFF + 1, f"back-off {backoff}: {len(withouts)} plans, each without one action")
    measured = measurer.measure_many([actions_of(options, without) for without in withouts])
    for (t, l), without, mw in zip(leave_one_out, withouts, measured):
        attempts.append((without, mw, search.gain(without)))
        search.learn(t, l, m["delta_loss"] - mw["delta_loss"])
    if len(chosen) == 1:
        t, l = chosen[0]
        search.learn(t, l, m["delta_loss"], count=False)
    search.cap *= BACKOFF_LOSS_FACTOR
    search.cuts.append(dict(chosen))


def _choose_measured(search: _Search, s: Solution, attempts: list, backoff: int, exact: bool,
                     certifier: Certifier) -> None:
    """The answer: the best certified plan (and within budget): the last solve's, or a leave-one-out
    plan measured on the way if that is better."""
    budget = search.budget
    ok = [a for a in attempts if certifier.accepts(a[1]) and (budget is None or a[2] >= budget * (1 - 1e-9))]
    if not ok:
        raise PlanError(_backoff_message(attempts, search, backoff, certifier))
    if budget is None:
        s.choice, s.measured, _ = max(ok, key=lambda a: (a[2], -a[1]["delta_loss"]))
    else:
        s.choice, s.measured, _ = min(ok, key=lambda a: (a[1]["delta_loss"], -a[2]))
    s.backoff = backoff
    if backoff:
        s.notes.append(f"the first solution was not certified; {backoff} back-off step(s): leave-one-out "
                       f"marginal losses replaced {search.learned} single-target cost(s), loss budget "
                       f"x{BACKOFF_LOSS_FACTOR} per step, failed plans and more aggressive ones excluded")
    if exact:
        s.notes.append("overlaps between the chosen actions are counted exactly from their masks")


def _refine_overlaps(options: list[list[Option]], choice: Sequence[int], overlaps: dict, exact: set,
                     measurer: Measurer) -> bool:
    """Replace estimated parameter overlaps of the chosen pairs by exact counts; True if any changed."""
    chosen = [(t, l) for t, l in enumerate(choice) if l > 0]
    changed = False
    for i, a in enumerate(chosen):
        for b in chosen[i + 1:]:
            key = (a, b)
            if key in exact:
                continue
            exact.add(key)
            value = float(measurer.exact_overlap(options[a[0]][a[1]], options[b[0]][b[1]]))
            if abs(value - overlaps.get(key, 0.0)) > 0.5:
                changed = True
            if value:
                overlaps[key] = value
            else:
                overlaps.pop(key, None)
    return changed


def _backoff_message(attempts: list, search: _Search, steps: int, certifier: Certifier) -> str:
    metric, total, tol, budget = search.metric, search.total, search.tol, search.budget
    safe = [a for a in attempts if certifier.accepts(a[1])]
    _, m, value = max(safe, key=lambda a: a[2]) if safe else min(attempts, key=lambda a: certifier.bound(a[1]))
    what = (f"--ratio/--absolute ({_fmt_amount(metric, budget)}, {budget / total:.1%}) cannot be met"
            if budget is not None else "no plan certified")
    return (f"{what} within +{tol:.0%} perplexity after {steps} back-off step(s): the best measured point removes "
            f"{value / total:.1%} of {metric} in scope ({_fmt_amount(metric, value)}) at "
            f"{m['rel_ppl_increase']:+.1%} perplexity on {len(certifier.dense)} search windows (one-sided "
            f"{certifier.level:.0%} bound for {certifier.unseen} unseen windows {certifier.bound(m):+.1%}); "
            "lower the budget or raise --max-ppl-increase")
