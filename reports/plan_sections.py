"""The report's plan and validation sections, rendered from the typed documents."""

from __future__ import annotations

from ssm_profile.base.fmt import METRIC_NOUNS, human_bytes, human_count, scope_name
from ssm_profile.documents import Objective, Plan, PlanAction, ValidationReport
from ssm_profile.validation.comparison import ComparisonRow, comparison_rows

from .answer import share_of
from .facts import Facts, plan_mismatch
from .html_elements import Cell, cards, chip, crit_chip, num, section, table, txt
from .svg import esc, fmt, fmt_pct, group_color
from .values import compact_layers, kv_html


# ---------------------------------------------------------------------- 6 plan
def plan_section(facts: Facts, plan: Plan) -> str:
    parts = []
    warning = plan_mismatch(plan, facts.result)
    if warning:
        parts.append(f'<p class="warning">{esc(warning)}</p>')
    predicted, measured, objective = plan.predicted, plan.measured, plan.objective
    summary = [("Reduction", fmt_pct(predicted.reduction_ratio, 1), f"predicted, {share_of(objective)}"),
               ("Parameters removed", human_count(predicted.params_removed), "predicted"),
               ("ΔL", fmt(predicted.delta_loss), "predicted"),
               ("Perplexity", f"{predicted.rel_ppl_increase:+.1%}", "predicted")]
    if measured is not None:
        summary += [("Perplexity", f"{measured.rel_ppl_increase:+.1%}", "measured, search windows"),
                    ("ΔL", fmt(measured.delta_loss), "measured, search windows")]
    if plan.verification is not None:
        summary.append(("Perplexity", f"{plan.verification.rel_ppl_increase:+.1%}",
                        f"verified, {plan.verification.windows} held-out windows"))
    for d in plan.domains or []:  # each --also-on text's held-out windows, beside the run's
        if d.verification is not None:
            verdict = "kept" if d.kept else "NOT kept"
            summary.append(("Perplexity", f"{d.verification.rel_ppl_increase:+.1%}",
                            f"verified on {d.source}, {d.verification.windows} held-out windows: {verdict}"))
    parts.append(cards(summary))
    parts.append("<h3>Objective</h3>" + kv_html(objective_items(objective)))
    parts.append(f"<h3>Actions ({len(plan.actions)})</h3>")
    parts.append(actions_table(plan.actions, facts.criteria()))
    parts.append(_predicted_vs_measured(plan))
    if plan.notes:
        items = "".join(f"<li>{esc(n)}</li>" for n in plan.notes)
        parts.append(f'<h3>Notes</h3><ul class="notes">{items}</ul>')
    return section("plan", "Pruning plan", "What the plan removes, and what it predicts (and, once applied, measured).",
                   "".join(parts))


def objective_items(objective: Objective) -> dict[str, str]:
    """The plan's objective in words (HTML and Markdown): reduce what, by how much, of which total."""
    return {"reduce": METRIC_NOUNS.get(objective.metric, objective.metric),
            "by": (fmt_pct(objective.ratio, 1) if objective.ratio is not None
                   else f"{objective.absolute:,}" if objective.absolute is not None else AS_MUCH),
            "of": scope_name(objective.scope, objective.metric),
            "max perplexity increase": f"+{objective.max_ppl_increase:.1%}"}


def objective_sentence(objective: Objective) -> str:
    """``Objective: reduce params by 20.0% of whole-model params; perplexity may rise by at most +10.0%.``"""
    said = objective_items(objective)
    amount = f"{AS_MUCH} ({said['of']})" if said["by"] == AS_MUCH else f"by {said['by']} of {said['of']}"
    return (f"Objective: reduce {said['reduce']} {amount}; perplexity may rise by at most "
            f"{said['max perplexity increase']}.")


AS_MUCH = "as much as the tolerance allows"  # a plan without --ratio or --absolute


def _predicted_vs_measured(plan: Plan) -> str:
    """The plan's prediction beside what its measurement on the search windows found."""
    p, m = plan.predicted, plan.measured
    rows = [("ΔL (loss)", fmt(p.delta_loss), None if m is None else fmt(m.delta_loss)),
            ("perplexity change", f"{p.rel_ppl_increase:+.1%}", None if m is None else f"{m.rel_ppl_increase:+.1%}"),
            ("parameters removed", f"{p.params_removed:,}",
             None if m is None or m.params_removed is None else f"{m.params_removed:,}")]
    body = "".join(f'<tr><th>{esc(label)}</th><td class="num">{esc(pred)}</td><td class="num">'
                   f'{esc(meas) if meas is not None else "<span class=muted>not measured</span>"}</td></tr>'
                   for label, pred, meas in rows)
    return ('<h3>Predicted vs measured (search windows)</h3><table class="compare"><thead><tr><th></th>'
            f'<th class="num">predicted</th><th class="num">measured</th></tr></thead><tbody>{body}</tbody></table>')


def actions_table(actions: list[PlanAction], crits: list[str]) -> str:
    if not actions:
        return '<p class="note">The plan has no actions.</p>'
    shared = _shared_notes(actions)
    rows = []
    for i, a in enumerate(actions, 1):
        note = (Cell(f'<span class="muted">see note {shared.index(a.note) + 1} below</span>', "")
                if a.note in shared else txt(a.note))
        rows.append([num(i), Cell(chip(a.target, group_color(a.target)), a.target),
                     Cell(esc(compact_layers(a.layers)), None), txt(a.structure),
                     Cell(crit_chip(a.criterion, crits), a.criterion), num(a.sparsity, fmt_pct(a.sparsity, 1)),
                     txt(a.unit_kind or ""), _indices_cell(a.unit_indices),
                     num(a.params_removed, _count(a.params_removed)), num(a.flops_removed, _count(a.flops_removed)),
                     num(a.state_bytes_removed, human_bytes(a.state_bytes_removed) if a.state_bytes_removed else "0"),
                     num(a.predicted_delta_loss, fmt(a.predicted_delta_loss)), txt(a.execution), note])
    headers = [("#", "", True), ("target", "", False), ("layers", "", False), ("structure", "", False),
               ("criterion", "", False), ("sparsity", "", True), ("unit kind", "", False), ("units", "", True),
               ("params removed", "", True), ("FLOPs removed", "", True), ("state bytes removed", "", True),
               ("predicted ΔL", "", True), ("execution", "", False), ("note", "", False)]
    notes = "".join(f"<li>{esc(n)} <span class=\"muted\">(actions "
                    f"{', '.join(str(i) for i, a in enumerate(actions, 1) if a.note == n)})</span></li>"
                    for n in shared)
    return table(headers, rows, tid="plan-actions") + (f'<ol class="notes shared-notes">{notes}</ol>' if notes else "")


def _count(v: int) -> str:
    return human_count(v) if abs(v) >= 1e4 else f"{v:,}"


def _shared_notes(actions: list[PlanAction]) -> list[str]:
    """Notes several actions repeat word for word: shown once under the table instead of in every row."""
    notes = [a.note for a in actions if a.note]
    return [n for n in dict.fromkeys(notes) if notes.count(n) > 1]


def _indices_cell(v: dict[str, list[int]] | None) -> Cell:
    """``{layer: [unit indices]}``: the count, with the indices in the tooltip."""
    if v is None:
        return Cell('<span class="muted">–</span>', "")
    count = sum(len(x) for x in v.values())
    tip = "\n".join(f"layer {k}: {_short_list(x)}" for k, x in list(v.items())[:32])
    return Cell(f'<span data-tip="{esc(tip)}">{count:,} units</span>', str(count), num=True)


def _short_list(v: list[int], limit: int = 40) -> str:
    shown = ", ".join(str(x) for x in v[:limit])
    return shown + (f", … ({len(v) - limit} more)" if len(v) > limit else "")


# ---------------------------------------------------------------------- 7 validation
def validation_section(validation: ValidationReport) -> str:
    parts = []
    ok = validation.within_tolerance
    if ok is not None:
        tol = validation.tolerance
        also = validation.also_on_clause()
        parts.append(f'<p class="verdict {"ok" if ok else "bad"}"><span class="badge {"ok" if ok else "bad"}">'
                     f'{"within tolerance" if ok else "outside tolerance"}</span> perplexity on the held-out '
                     f"verification windows{esc(also)} against at most +{tol.max_ppl_increase:.1%} "
                     f"({esc(_SOURCE.get(tol.source or '', tol.source or 'given'))})</p>")
    for d in validation.domains or []:  # the plan's --also-on texts, each judged as the verification windows are
        state = {True: "ok", False: "bad"}.get(d.within_tolerance, "")
        parts.append(f'<p class="verdict {state}">{esc(d.sentence(validation.tolerance.max_ppl_increase))}</p>')
    parts.append("<h3>Before and after</h3>" + _shared_rows_html(comparison_rows(validation)))
    models = {f"{side} model": f"{m.name} ({m.fingerprint})"
              for side, m in (("base", validation.models.base), ("pruned", validation.models.pruned))}
    parts.append("<h3>Summary</h3>" + kv_html({**models, "measured": validation.created,
                                               "seconds": validation.seconds, "threads": validation.threads}))
    return section("validation", "Validation", "Measurements of the pruned model against the dense one.",
                   "".join(parts))


_SOURCE = {"plan": "the plan's objective", "argument": "--max-ppl-increase"}


def _shared_rows_html(rows: list[ComparisonRow]) -> str:
    """The rows of :func:`ssm_profile.validation.comparison.comparison_rows`, formatted as in the CLI and TUI."""
    body = "".join(
        f'<tr><th>{esc(r.label)}</th><td class="num">{esc(r.text(r.before))}</td>'
        f'<td class="num">{esc(r.text(r.after))}</td><td class="num">{esc(r.change_text())}</td></tr>' for r in rows)
    return ('<table class="compare"><thead><tr><th>metric</th><th class="num">before</th><th class="num">after</th>'
            f'<th class="num">change</th></tr></thead><tbody>{body}</tbody></table>')
