"""The report's first section: the answer (what to prune and how much), before any evidence.

With a plan: what it removes, of which total, and what it promises. Without one: the safe sparsity
of every target with the interval the measured sparsities leave open, and the command to run next.
"""

from __future__ import annotations

import shlex

from ssm_profile.base.fmt import amount, human_bytes, human_count, scope_name
from ssm_profile.documents import Objective, Plan, PlanAction, RecoveryRecord, ValidationReport

from .facts import Facts, plan_change_lines
from .html_elements import Cell, chip, crit_chip, num, section, table, txt
from .svg import esc, fmt_pct, group_color
from .values import compact_layers


def share_of(objective: Objective) -> str:
    """What a plan's percentages are a share of: ``"of SSM-mixer params"``, worded by
    :func:`ssm_profile.base.fmt.scope_name` as in the CLI, the TUI and the plan JSON."""
    return f"of {scope_name(objective.scope, objective.metric)}"


def decision_section(facts: Facts, plan: Plan | None, validation: ValidationReport | None = None,
                     recovery: RecoveryRecord | None = None, plan_path: str | None = None) -> str:
    """The answer; with a plan, also what its validation and recovery found, and the next command for
    the files given (``plan_path``: the plan file the user passed)."""
    body = _plan_answer(facts, plan, validation, recovery, plan_path) if plan is not None else _profile_answer(facts)
    return section("decision", "What can I prune, and how much", "", body)


def safe_interval(facts: Facts, row) -> tuple[float, float | None]:
    """(last measured sparsity within tolerance, first one beyond it or None): the true limit lies between."""
    curve = facts.result.curve(row.target, row.best_criterion)
    above = next((t.sparsity for t in curve if t.sparsity > row.max_safe_sparsity + 1e-9), None)
    return row.max_safe_sparsity, above


def _profile_answer(facts: Facts) -> str:
    r = facts.result
    if not facts.ranking:
        return '<p class="answer">No model-wide trials yet: nothing to decide from. Run a profile first.</p>'
    rows = []
    for row in sorted(facts.ranking, key=lambda x: (-x.max_safe_sparsity, x.auc)):
        low, high = safe_interval(facts, row)
        limit = (f"between {fmt_pct(low)} and {fmt_pct(high)}" if high is not None
                 else f"at least {fmt_pct(low)} (largest measured)")
        removable = row.max_safe_sparsity * row.params
        rows.append([Cell(chip(row.target, group_color(row.target)), row.target),
                     num(row.max_safe_sparsity, fmt_pct(row.max_safe_sparsity)), txt(limit),
                     Cell(crit_chip(row.best_criterion, facts.criteria()), row.best_criterion),
                     num(removable, f"{human_count(removable)} of {human_count(row.params)}")])
    best = max(facts.ranking, key=lambda x: x.max_safe_sparsity * x.params)
    best = best if best.max_safe_sparsity > 0 else None
    head = (f"Safe sparsity per target: the largest measured sparsity at which perplexity rises by at most "
            f"{r.tolerance:.0%} (pruning that one target alone, in every layer).")
    if best is not None:
        lead = (f'<p class="answer"><strong>{esc(best.target)}</strong> can be pruned to '
                f"<strong>{fmt_pct(best.max_safe_sparsity)}</strong> with {esc(best.best_criterion)} within the "
                f"{r.tolerance:.0%} perplexity tolerance, the most parameters of any single target "
                f"({human_count(best.max_safe_sparsity * best.params)}). {esc(head)}</p>")
    else:
        lead = (f'<p class="answer">No target stays within the {r.tolerance:.0%} perplexity tolerance at the '
                f"smallest measured sparsity. {esc(head)}</p>")
    cmd = f"ssm-profile plan RUN_DIR --ratio 0.2 --max-ppl-increase {r.tolerance:g}"
    return (lead + table([("target", "", False), ("safe sparsity", "largest measured sparsity within tolerance",
                                                                      True),
                          ("true limit", "between the last measured sparsity within tolerance and the next one",
                           False), ("criterion", "the target's best criterion", False),
                          ("parameters removable", "at the safe sparsity, of the target's parameters", True)],
                         rows, tid="decision-table")
            + _next_step("Next: a plan that combines targets for a budget (RUN_DIR is this run's directory)", cmd))


def _plan_answer(facts: Facts, plan: Plan, validation: ValidationReport | None = None,
                 recovery: RecoveryRecord | None = None, plan_path: str | None = None) -> str:
    objective, predicted, metric = plan.objective, plan.predicted, plan.objective.metric
    parts = []
    total = predicted.scope_total
    of_total = ""  # the bare total: its unit is named by the share that follows
    if total is not None:
        of_total = f" (total {human_bytes(total) if metric == 'state' else human_count(total)})"
    share = f"{fmt_pct(predicted.reduction_ratio, 1)} {share_of(objective)}{of_total}"
    changes = plan_change_lines(plan)
    zeros_only = bool(changes) and changes[0].startswith("WARNING")
    parts.append(f'<p class="answer">This plan {"sets to zero" if zeros_only else "removes"} '
                 f"<strong>{esc(amount(metric, predicted.removed(metric)))}</strong>: <strong>{esc(share)}</strong>.</p>")
    # sliced vs zeroed, in the CLI's words: a zeros-only plan is no size win, and says so up front
    parts += [f'<p class="{"warning" if line.startswith("WARNING") else "answer"}">{esc(line)}</p>'
              for line in changes[:-1]]
    promise = f"perplexity rises by at most {objective.max_ppl_increase:.0%}"
    if plan.verification is not None:
        held = "kept" if plan.verification.kept else "NOT kept"
        parts.append(f'<p class="promise">Promise: {esc(promise)} — {held}: perplexity '
                     f"{esc(plan.verification.phrase('held-out verification windows'))}.</p>")
    if plan.certification is not None:
        parts.append(f'<p class="note">Accepted before verification: {esc(plan.certification.sentence())}.</p>')
    elif plan.measured is not None:
        held = "kept" if plan.measured.within_tolerance else "NOT kept"
        parts.append(f'<p class="promise">Promise: {esc(promise)} — {held}: measured '
                     f"{plan.measured.rel_ppl_increase:+.1%} on the search windows that chose it.</p>")
    else:
        parts.append(f'<p class="promise">Promise: {esc(promise)} — predicted {predicted.rel_ppl_increase:+.1%}'
                     " (not measured yet: validate after applying).</p>")
    if plan.actions:
        items = "".join(f"<li>{chip(a.target, group_color(a.target))} {esc(_amount(a))} "
                        + ("(chosen by its measured loss)" if a.is_layer else f"by {esc(a.criterion)}") + "</li>"
                        for a in plan.actions)
        parts.append(f'<ul class="plan-cuts">{items}</ul>')
    parts += _outcome(validation, recovery)
    parts.append(_plan_next_step(facts, plan, validation, recovery, plan_path))
    return "".join(parts)


def _amount(action: PlanAction) -> str:
    """What an action cuts: the units it removes (a unit cut's trial sparsity may be more than the
    structure lets it take, e.g. one value head must stay under each key head), else its sparsity."""
    if action.is_layer:
        return f"decoder layer {compact_layers(action.layers)} removed whole"
    if action.unit_indices is not None:
        count = sum(len(ids) for ids in action.unit_indices.values())
        return f"{count} {action.unit_kind} units in {len(action.unit_indices)} layers"
    return f"{fmt_pct(action.sparsity)} {action.structure}"


def _outcome(validation: ValidationReport | None, recovery: RecoveryRecord | None) -> list[str]:
    """What happened after the plan: the applied model's validation, and its recovery."""
    parts = []
    if validation is not None and validation.verification is not None:
        verdict = {True: "within the tolerance", False: "ABOVE the tolerance"}.get(validation.within_tolerance,
                                                                                   "no tolerance given")
        parts.append(f'<p class="promise">Validated after applying: perplexity '
                     f"{esc(validation.verification.phrase())}: {verdict}.</p>")
    if recovery is not None:
        parts.append(f'<p class="promise">After recovery by distillation: perplexity '
                     f"{esc(recovery.after.verification.phrase())} against the dense teacher.</p>")
    return parts


def _plan_next_step(facts: Facts, plan: Plan, validation: ValidationReport | None,
                    recovery: RecoveryRecord | None, plan_path: str | None) -> str:
    """The command that follows from what this report was given."""
    if plan.verification is not None and not plan.verification.kept:
        return _next_step("Next: do not apply this plan (its promise broke on the verification windows); plan "
                          "again with a smaller ratio", "ssm-profile plan RUN_DIR --ratio SMALLER -o plan.json")
    if recovery is not None:
        out = "RECOVERED_DIR"  # the record travels with its directory, which may have moved
        return _next_step("Next: the recovered model is a plain transformers checkpoint; validate it against the "
                          "dense model", f"ssm-profile validate {shlex.quote(facts.model_name())} {shlex.quote(out)}")
    if validation is not None:
        pruned = shlex.quote(validation.models["pruned"].directory or "PRUNED_DIR")
        if validation.within_tolerance is False:
            return _next_step("Next: the pruned model broke the tolerance; recover what pruning cost, or plan "
                              "again with a smaller ratio", f"ssm-profile recover {pruned} -o RECOVERED_DIR")
        return _next_step("Next: use the pruned model, or recover what pruning cost by distillation",
                          f"ssm-profile recover {pruned} -o RECOVERED_DIR")
    model = facts.model_name()
    path = shlex.quote(str(plan_path)) if plan_path else "plan.json"
    label = "Next: prune and validate" + ("" if plan_path else " (plan.json is this plan's file)")
    return _next_step(label, f"ssm-profile apply {shlex.quote(model)} {path} -o "
                      f"{shlex.quote('pruned-' + model.replace('/', '--'))} --validate")


def _next_step(label: str, command: str) -> str:
    return f'<p class="next">{esc(label)}:</p><pre class="command"><code>{esc(command)}</code></pre>'
