"""The report's answer in words (what to prune and how much, what the plan promises and what came of
it, the command to run next), as plain text from the typed documents: the HTML answer panel
(:mod:`.decision`) and the Markdown report (:mod:`.markdown`) render the same sentences.

With a plan: what it removes, of which total, and what it promises. Without one: the safe sparsity
of every target with the interval the measured sparsities leave open, and the command to run next.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from ssm_profile.base.fmt import amount, human_bytes, human_count, scope_name
from ssm_profile.documents import DomainCheck, Objective, Plan, PlanAction, RecoveryRecord, ValidationReport

from .facts import Facts, plan_change_lines
from .svg import fmt_pct
from .values import compact_layers


def share_of(objective: Objective) -> str:
    """What a plan's percentages are a share of: ``"of SSM-mixer params"``, worded by
    :func:`ssm_profile.base.fmt.scope_name` as in the CLI, the TUI and the plan JSON."""
    return f"of {scope_name(objective.scope, objective.metric)}"


@dataclass
class Sentence:
    """One paragraph: ``parts`` are (text, emphasised) runs; ``kind``: answer, warning or promise."""

    parts: list[tuple[str, bool]]
    kind: str = "answer"

    @property
    def text(self) -> str:
        return "".join(text for text, _ in self.parts)


def _plain(text: str, kind: str = "answer") -> Sentence:
    return Sentence([(text, False)], kind)


@dataclass
class SafeRow:
    """A target's safe sparsity, the interval the measured sparsities leave open, and what it frees."""

    target: str
    safe: float
    limit: str
    criterion: str
    removable: float
    params: int

    @property
    def removable_text(self) -> str:
        return f"{human_count(self.removable)} of {human_count(self.params)}"


SAFE_COLUMNS = [("target", ""), ("safe sparsity", "largest measured sparsity within tolerance"),
                ("true limit", "between the last measured sparsity within tolerance and the next one"),
                ("criterion", "the target's best criterion"),
                ("parameters removable", "at the safe sparsity, of the target's parameters")]


@dataclass
class Answer:
    lead: list[Sentence]
    cuts: list[tuple[str, str]] = field(default_factory=list)  # (target, what it cuts and by which criterion)
    outcome: list[Sentence] = field(default_factory=list)  # what validation and recovery found
    safe_rows: list[SafeRow] = field(default_factory=list)
    next_label: str = ""
    next_command: str = ""


def answer(facts: Facts, plan: Plan | None, validation: ValidationReport | None = None,
           recovery: RecoveryRecord | None = None, plan_path: str | None = None) -> Answer:
    """The answer; with a plan, also what its validation and recovery found, and the next command for
    the files given (``plan_path``: the plan file the user passed)."""
    if plan is None:
        return _profile_answer(facts)
    return _plan_answer(facts, plan, validation, recovery, plan_path)


def safe_interval(facts: Facts, row) -> tuple[float, float | None]:
    """(last measured sparsity within tolerance, first one beyond it or None): the true limit lies between."""
    curve = facts.result.curve(row.target, row.best_criterion)
    above = next((t.sparsity for t in curve if t.sparsity > row.max_safe_sparsity + 1e-9), None)
    return row.max_safe_sparsity, above


def _profile_answer(facts: Facts) -> Answer:
    tolerance = facts.result.tolerance
    if not facts.ranking:
        return Answer([_plain("No model-wide trials yet: nothing to decide from. Run a profile first.")])
    rows = []
    for row in sorted(facts.ranking, key=lambda x: (-x.max_safe_sparsity, x.auc)):
        low, high = safe_interval(facts, row)
        limit = (f"between {fmt_pct(low)} and {fmt_pct(high)}" if high is not None
                 else f"at least {fmt_pct(low)} (largest measured)")
        rows.append(SafeRow(row.target, row.max_safe_sparsity, limit, row.best_criterion,
                            row.max_safe_sparsity * row.params, row.params))
    best = max(facts.ranking, key=lambda x: x.max_safe_sparsity * x.params)
    head = (f" Safe sparsity per target: the largest measured sparsity at which perplexity rises by at most "
            f"{tolerance:.0%} (pruning that one target alone, in every layer).")
    if best.max_safe_sparsity > 0:
        lead = Sentence([(best.target, True), (" can be pruned to ", False), (fmt_pct(best.max_safe_sparsity), True),
                         (f" with {best.best_criterion} within the {tolerance:.0%} perplexity tolerance, the most "
                          f"parameters of any single target ({human_count(best.max_safe_sparsity * best.params)})."
                          + head, False)])
    else:
        lead = _plain(f"No target stays within the {tolerance:.0%} perplexity tolerance at the smallest measured "
                      "sparsity." + head)
    return Answer([lead], safe_rows=rows,
                  next_label="Next: a plan that combines targets for a budget (RUN_DIR is this run's directory)",
                  next_command=f"ssm-profile plan RUN_DIR --ratio 0.2 --max-ppl-increase {tolerance:g}")


def _plan_answer(facts: Facts, plan: Plan, validation: ValidationReport | None,
                 recovery: RecoveryRecord | None, plan_path: str | None) -> Answer:
    objective, predicted, metric = plan.objective, plan.predicted, plan.objective.metric
    total = predicted.scope_total
    if total is None and objective.scope in (None, "model"):  # older plans: the whole model's, as the CLI says
        total = plan.dense.total(metric)
    of_total = ""  # the bare total: its unit is named by the share that follows
    if total is not None:
        of_total = f" (total {human_bytes(total) if metric == 'state' else human_count(total)})"
    share = f"{fmt_pct(predicted.reduction_ratio, 1)} {share_of(objective)}{of_total}"
    changes = plan_change_lines(plan)
    zeros_only = bool(changes) and changes[0].startswith("WARNING")
    lead = [Sentence([(f"This plan {'sets to zero' if zeros_only else 'removes'} ", False),
                      (amount(metric, predicted.removed(metric)), True), (": ", False), (share, True), (".", False)])]
    # sliced vs zeroed, in the CLI's words: a zeros-only plan is no size win, and says so up front
    lead += [_plain(line, "warning" if line.startswith("WARNING") else "answer") for line in changes[:-1]]
    lead.append(_plain(_promise(plan), "promise"))
    if plan.certification is not None:  # what the plan was accepted on before anyone looked at verification
        lead.append(_plain(f"Accepted before verification: {plan.certification.sentence()}.", "note"))
    for domain in plan.domains or []:  # the other texts the user asked the promise to hold on
        lead.append(_plain(f"Promise also on {domain.source} — {_domain_verdict(domain)}", "promise"))
    cuts = [(a.target, f"{cut_amount(a)} " + ("(chosen by its measured loss)" if a.is_layer else f"by {a.criterion}"))
            for a in plan.actions]
    label, command = _plan_next_step(facts, plan, validation, recovery, plan_path)
    return Answer(lead, cuts, _outcome(validation, recovery), next_label=label, next_command=command)


def _promise(plan: Plan) -> str:
    """The plan's promise and whether it held, on the best evidence the plan carries."""
    promise = f"Promise: perplexity rises by at most {plan.objective.max_ppl_increase:.0%}"
    if plan.verification is not None:
        held = "kept" if plan.verification.kept else "NOT kept"
        said = f"{promise} — {held}: perplexity {plan.verification.phrase('held-out verification windows')}"
        broken = [source for source, check in plan.held_out_checks() if source is not None and not check.kept]
        return said + (f"; NOT kept on {', '.join(broken)} (below)." if broken else ".")
    if plan.measured is not None:
        held = "kept" if plan.measured.within_tolerance else "NOT kept"
        return f"{promise} — {held}: measured {plan.measured.rel_ppl_increase:+.1%} on the search windows that chose it."
    return (f"{promise} — predicted {plan.predicted.rel_ppl_increase:+.1%} (not measured yet: validate after "
            "applying).")


def _domain_verdict(domain: DomainCheck) -> str:
    if domain.verification is None:
        return f"{domain.certification.sentence().replace('search windows', 'of its windows')} (not verified)."
    held = "kept" if domain.verification.kept else "NOT kept"
    return f"{held}: perplexity {domain.verification.phrase('of its held-out windows')}."


def cut_amount(action: PlanAction) -> str:
    """What an action cuts: the units it removes (a unit cut's trial sparsity may be more than the
    structure lets it take, e.g. one value head must stay under each key head), else its sparsity."""
    if action.is_layer:
        return f"decoder layer {compact_layers(action.layers)} removed whole"
    if action.unit_indices is not None:
        count = sum(len(ids) for ids in action.unit_indices.values())
        return f"{count} {action.unit_kind} units in {len(action.unit_indices)} layers"
    return f"{fmt_pct(action.sparsity)} {action.structure}"


def _outcome(validation: ValidationReport | None, recovery: RecoveryRecord | None) -> list[Sentence]:
    """What happened after the plan: the applied model's validation, and its recovery."""
    out = []
    if validation is not None and validation.verification is not None:
        verdict = _VERDICT.get(validation.verification.within_tolerance, "no tolerance given")
        out.append(_plain(f"Validated after applying: perplexity {validation.verification.phrase()}: {verdict}.",
                          "promise"))
    for domain in (validation.domains or []) if validation is not None else []:  # the plan's --also-on texts
        verdict = _VERDICT.get(domain.within_tolerance, "no tolerance given")
        out.append(_plain(f"Validated also on {domain.source}: perplexity {domain.phrase('held-out windows')}: "
                          f"{verdict}.", "promise"))
    if recovery is not None:
        out.append(_plain(f"After recovery by distillation: perplexity {recovery.after.verification.phrase()} "
                          "against the dense teacher.", "promise"))
    return out


_VERDICT = {True: "within the tolerance", False: "ABOVE the tolerance"}


def _plan_next_step(facts: Facts, plan: Plan, validation: ValidationReport | None,
                    recovery: RecoveryRecord | None, plan_path: str | None) -> tuple[str, str]:
    """(label, command): the command that follows from what this report was given."""
    if plan.promise_kept is False:
        return ("Next: do not apply this plan (its promise broke on held-out windows); plan again with a "
                "smaller ratio", "ssm-profile plan RUN_DIR --ratio SMALLER -o plan.json")
    if recovery is not None:
        out = "RECOVERED_DIR"  # the record travels with its directory, which may have moved
        return ("Next: the recovered model is a plain transformers checkpoint; validate it against the dense model",
                f"ssm-profile validate {shlex.quote(facts.model_name())} {shlex.quote(out)}")
    if validation is not None:
        pruned = shlex.quote(validation.models.pruned.directory or "PRUNED_DIR")
        if validation.within_tolerance is False:
            return ("Next: the pruned model broke the tolerance; recover what pruning cost, or plan again with a "
                    "smaller ratio", f"ssm-profile recover {pruned} -o RECOVERED_DIR")
        return ("Next: use the pruned model, or recover what pruning cost by distillation",
                f"ssm-profile recover {pruned} -o RECOVERED_DIR")
    model = facts.model_name()
    path = shlex.quote(str(plan_path)) if plan_path else "plan.json"
    label = "Next: prune and validate" + ("" if plan_path else " (plan.json is this plan's file)")
    return label, (f"ssm-profile apply {shlex.quote(model)} {path} -o "
                   f"{shlex.quote('pruned-' + model.replace('/', '--'))} --validate")
