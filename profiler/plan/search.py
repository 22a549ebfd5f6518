"""``make_plan``: solve, measure the combined plan, and back off until the measurement is within tolerance."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..documents import Plan
from ..base.errors import PlanError
from ..profiling.results import ProfileResult
from .assemble import Solution, actions_of, assemble
from .certify import Certifier
from .measure import Measurer, check_run_weights
from .layers import LayerVeto, is_layer, plan_options, plan_overlaps, wants_layers
from .options import Option, metric_total, scope_words
from .request import PlanRequest
from .shapes import shapes_for
from .solver import net_gain, solve_mckp

if TYPE_CHECKING:
    from ..model.resolve import LoadedModel
    from ..profiling.distributed import World

Progress = Callable[[int, int, str], None]
MAX_BACKOFF = 8
BACKOFF_LOSS_FACTOR = 0.7  # each back-off step shrinks the loss budget by this factor


def _fmt_amount(metric: str, value: float) -> str:
    unit = {"params": "params", "flops": "FLOPs/token", "state": "state bytes/sequence"}[metric]
    return f"{round(value):,} {unit}"


def _budget(request: PlanRequest, total: int) -> float | None:
    """The reduction to reach (None: as much as the loss budget allows); the request's own checks are done."""
    metric = request.metric
    if total <= 0:
        raise PlanError(f"the run's analysis has no total for {metric}; profile the model again")
    if request.ratio is not None:
        return request.ratio * total
    if request.absolute is not None:
        if int(request.absolute) > total:
            raise PlanError(f"--absolute {int(request.absolute):,} exceeds the total of "
                            f"{scope_words(metric, request.scope)}, {_fmt_amount(metric, total)}")
        return float(int(request.absolute))
    return None


class _Search:
    """The knapsack instance of one request, with what measurements teach it (costs, cuts, exact overlaps)."""

    def __init__(self, options: list[list[Option]], overlaps: dict[str, dict], request: PlanRequest,
                 budget: float | None, total: int):
        self.options, self.overlaps, self.metric, self.budget = options, overlaps, request.metric, budget
        self.tol, self.total, self.scope = request.max_ppl_increase, total, request.scope
        self.gains = [[o.gain(self.metric) for o in levels] for levels in options]
        self.costs = [[o.cost for o in levels] for levels in options]
        self.risks = [[o.risk for o in levels] for levels in options]
        self.cap0 = self.cap = math.log1p(self.tol)
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


def make_plan(result: ProfileResult, request: PlanRequest | None = None, *, loaded: LoadedModel | None = None,
              progress: Progress | None = None, run_path: str | Path | None = None, device: str = "cpu",
              world: World | None = None, measurer: Measurer | None = None) -> Plan:
    """Build a :class:`Plan` from a profile result for ``request`` (default: :class:`PlanRequest`'s
    defaults); see :mod:`ssm_profile.plan`.

    The rest is where and how to run it: ``loaded``, the run's model already loaded (else loaded to
    measure); ``progress(done, total, label)``; ``run_path``, the run directory the plan names;
    ``device``, where to measure; ``world`` (:class:`ssm_profile.profiling.distributed.World`, under
    torchrun): every rank runs the same search and the back-off's leave-one-out measurements are
    shared out among the ranks; ``measurer``: a :class:`Measurer` of this run to reuse (several plans
    of one run share its model, statistics and masks).
    """
    request = request or PlanRequest()
    if measurer is not None and tuple(measurer.domains) != request.also_on:
        raise ValueError(f"the measurer certifies on {tuple(measurer.domains)}, the request on {request.also_on}")
    note = progress or (lambda done, total, label: None)
    total = metric_total(result, request.metric, request.scope)
    budget = _budget(request, total)

    note(0, 1, "options")
    if loaded is not None:
        check_run_weights(result, loaded)
    shapes = shapes_for(result, loaded)
    # whole layers are costed by measuring them: the measurer loads before the options then
    layer_measurer = None
    if request.measure and wants_layers(request.structures):
        layer_measurer = measurer = measurer or Measurer(result, loaded, note, device=device, world=world,
                                                         domains=request.also_on)
    options, notes = plan_options(result, request.metric, request.criterion, request.structures, shapes,
                                  layer_measurer)
    search = _Search(options, plan_overlaps(options, shapes), request, budget, total)
    if layer_measurer is not None:
        search.veto = LayerVeto(options, layer_measurer, shapes)

    note(0, 1, "solving")
    choice = search.solve()
    if choice is None:
        raise search.infeasible()
    solution = Solution(result=result, request=request, options=options, choice=choice, overlaps=search.overlaps,
                        shapes=shapes, run_path=run_path, notes=notes)
    if request.measure:
        measurer = measurer or Measurer(result, loaded, note, device=device, world=world, domains=request.also_on)
        certifier = measurer.certifier(request.max_ppl_increase)
        _measure_and_back_off(search, solution, measurer, certifier, note)
        solution.certification = certifier.document(solution.measured)
        note(0, 1, "verifying on held-out windows")
        solution.verification = measurer.verify(solution.actions, request.max_ppl_increase)
        solution.domains = measurer.domain_checks(solution.actions, solution.measured, certifier,
                                                  request.max_ppl_increase)
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
        _learn_marginals(search, measurer, choice, m, attempts, backoff, note, certifier)
        again = search.solve()
        if again is None:
            break
        choice = again
    _choose_measured(search, s, attempts, backoff, bool(exact), certifier)
    note(MAX_BACKOFF + 1, MAX_BACKOFF + 1, "measured")


def _learn_marginals(search: _Search, measurer: Measurer, choice: list[int], m: dict[str, Any],
                     attempts: list, backoff: int, note: Progress, certifier: Certifier) -> None:
    """One back-off step: learn each chosen action's marginal loss in this combination (leave one out),
    raise its cost (and its more aggressive levels') to that, shrink the loss budget, and exclude this
    plan and every plan at least as aggressive in all of its targets. With ``--also-on`` texts a
    marginal is the largest over the strata, each measured on its own windows (:meth:`Certifier.marginal`)."""
    options = search.options
    chosen = [(t, l) for t, l in enumerate(choice) if l > 0]
    leave_one_out = chosen if len(chosen) > 1 else []
    withouts = [[lv if i != t else 0 for i, lv in enumerate(choice)] for t, _ in leave_one_out]
    note(backoff, MAX_BACKOFF + 1, f"back-off {backoff}: {len(withouts)} plans, each without one action")
    measured = measurer.measure_many([actions_of(options, without) for without in withouts])
    for (t, l), without, mw in zip(leave_one_out, withouts, measured):
        attempts.append((without, mw, search.gain(without)))
        search.learn(t, l, certifier.marginal(m, mw))
    if len(chosen) == 1:
        t, l = chosen[0]
        search.learn(t, l, certifier.marginal(m), count=False)
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
            f"{certifier.level:.0%} bound for {certifier.unseen} unseen windows {certifier.search_bound(m):+.1%}"
            f"{_domain_bounds(certifier, m)}); "
            "lower the budget or raise --max-ppl-increase")


def _domain_bounds(certifier: Certifier, m: dict[str, Any]) -> str:
    return "".join(f"; on {name} {certifier.domain_bound(m, name):+.1%}" for name in certifier.domains)
