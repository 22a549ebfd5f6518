"""A Markdown summary of a profile run: header, ranking, findings, plan and validation summaries."""

from __future__ import annotations

from ssm_profile.base.fmt import agreement_text, human_count
from ssm_profile.documents import Plan, RecoveryRecord, ValidationReport
from ssm_profile.validation.comparison import comparison_rows

from .answer import SAFE_COLUMNS, Sentence, answer, share_of
from .facts import Facts, plan_mismatch
from .plan_sections import objective_sentence
from .svg import fmt, fmt_pct
from .values import compact_layers, md_escape, md_table


def render_markdown(result, plan: Plan | None = None, validation: ValidationReport | None = None,
                    recovery: RecoveryRecord | None = None) -> str:
    """The Markdown summary for ``result`` (a ProfileResult)."""
    return render_facts_md(Facts.of(result), plan, validation, recovery)


def render_facts_md(facts: Facts, plan: Plan | None = None, validation: ValidationReport | None = None,
                    recovery: RecoveryRecord | None = None, plan_path: str | None = None) -> str:
    r = facts.result
    out = [f"# Profile report: {md_escape(facts.model_name())}", ""]
    out += answer_md(facts, plan, validation, recovery, plan_path)
    out += ["## The run", ""]
    out += [f"- **{md_escape(k)}**: {md_escape(v)}" for k, v in facts.header_items() if k != "Model"]
    out += ["", "## Sensitivity ranking", "",
            "Targets from most to least sensitive (model-wide sweep, best criterion per target).", ""]
    if facts.ranking:
        out.append(md_table(
            ["#", "target", "best criterion", "AUC ΔL", "95% CI", f"safe sparsity (≤{r.tolerance:.0%} ppl)", "ΔL @ 50%",
             "parameters"],
            [[row.rank, row.target, row.best_criterion, fmt(row.auc), f"{fmt(row.auc_ci[0])} … {fmt(row.auc_ci[1])}",
              fmt_pct(row.max_safe_sparsity), fmt(row.delta_at_50), f"{row.params:,}"] for row in facts.ranking],
            ["r", "l", "l", "r", "r", "r", "r", "r"]))
    else:
        out.append("No model-wide trials to rank.")
    if facts.layer_ranking:
        top = facts.layer_ranking[:10]
        out += ["", f"Most sensitive single layers ({top[0]['criterion']} at {top[0]['sparsity']:.0%}; "
                    f"{len(facts.layer_ranking)} layer trials):", "",
                md_table(["#", "layer", "target", "ΔL", "95% CI", "perplexity vs dense"],
                         [[row["rank"], row["layer"], row["target"], fmt(row["delta_loss"]),
                           f"{fmt(row['ci_low'])} … {fmt(row['ci_high'])}", f"{row['rel_ppl_increase']:+.2%}"]
                          for row in top], ["r", "r", "l", "r", "r", "r"])]
    if facts.agreement:
        out += ["", "Predicted vs measured ΔL (Spearman ρ over model-wide trials): "
                + "; ".join(agreement_text(md_escape(c), a) for c, a in facts.agreement.items()), ""]
    out += ["", "## Literature findings", ""]
    out.append(md_table(["finding", "on this model", "windows", "measured (95% paired t intervals)", "source"],
                        [[f.claim, f.verdict, f.windows_text, f.detail, f.source] for f in facts.findings]))
    if plan is not None:
        out += ["", "## Pruning plan", ""] + plan_md(facts, plan)
    if validation is not None:
        out += ["", "## Validation", ""] + validation_md(validation)
    if recovery is not None:
        out += ["", "## Recovery", ""] + recovery_md(recovery)
    out.append("")
    return "\n".join(out)


def answer_md(facts: Facts, plan: Plan | None, validation: ValidationReport | None = None,
              recovery: RecoveryRecord | None = None, plan_path: str | None = None) -> list[str]:
    """The HTML report's answer panel (:mod:`.answer`'s sentences), in Markdown."""
    said = answer(facts, plan, validation, recovery, plan_path)
    out = ["## What can I prune, and how much", ""]
    out += [_sentence_md(s) for s in said.lead]
    if said.cuts:
        out += [f"- {md_escape(target)}: {md_escape(what)}" for target, what in said.cuts] + [""]
    out += [_sentence_md(s) for s in said.outcome]
    if said.safe_rows:
        out += [md_table([name for name, _ in SAFE_COLUMNS],
                         [[row.target, fmt_pct(row.safe), row.limit, row.criterion, row.removable_text]
                          for row in said.safe_rows], ["l", "r", "l", "l", "r"]), ""]
    if said.next_command:
        out += [f"{md_escape(said.next_label)}:", "", "```sh", said.next_command, "```", ""]
    return out


def _sentence_md(sentence: Sentence) -> str:
    text = "".join(f"**{md_escape(t)}**" if strong else _run(t) for t, strong in sentence.parts)
    return (f"> **{text}**" if sentence.kind == "warning" else text) + "\n"


def _run(text: str) -> str:
    """A run of a sentence, escaped, keeping the spaces that join it to its emphasised neighbours."""
    lead, tail = " " if text[:1].isspace() else "", " " if text[-1:].isspace() else ""
    return lead + md_escape(text) + tail


def plan_md(facts: Facts, plan: Plan) -> list[str]:
    out = []
    warning = plan_mismatch(plan, facts.result)
    if warning:
        out += [f"> **Warning**: {md_escape(warning)}", ""]
    o = plan.objective
    out += [md_escape(objective_sentence(o)), ""]
    if plan.actions:
        rows = [[i, a.target, compact_layers(a.layers), a.structure, a.criterion, fmt_pct(a.sparsity, 1),
                 None if a.unit_indices is None else sum(len(x) for x in a.unit_indices.values()),
                 f"{a.params_removed:,}", fmt(a.predicted_delta_loss), a.execution] for i, a in enumerate(plan.actions, 1)]
        out += [md_table(["#", "target", "layers", "structure", "criterion", "sparsity", "units", "params removed",
                          "predicted ΔL", "execution"], rows, ["r", "l", "l", "l", "l", "r", "r", "r", "r", "l"]), ""]
    else:
        out += ["The plan has no actions.", ""]
    p, m = plan.predicted, plan.measured
    out += [md_table(["search windows", "predicted", "measured"],
                     [["ΔL (loss)", fmt(p.delta_loss), "not measured" if m is None else fmt(m.delta_loss)],
                      ["perplexity change", f"{p.rel_ppl_increase:+.1%}",
                       "not measured" if m is None else f"{m.rel_ppl_increase:+.1%}"]], ["l", "r", "r"]), ""]
    if plan.certification is not None:  # what the plan was accepted on before verification, and why
        out += [md_escape(f"{plan.certification.sentence()} ({plan.certification.why})"), ""]
    if plan.verification is not None:
        out += [md_escape(plan.verification.sentence()), ""]
    out += [line for d in plan.domains or [] for line in (md_escape(d.sentence()), "")]  # each --also-on text
    out += [f"Predicted: {human_count(p.params_removed)} parameters removed ({p.reduction_ratio:.1%} "
            f"{share_of(o)})", ""]
    if plan.notes:
        out += ["Notes:", ""] + [f"- {md_escape(n)}" for n in plan.notes] + [""]
    return out


def validation_md(validation: ValidationReport) -> list[str]:
    out = []
    ok, tol = validation.within_tolerance, validation.tolerance
    if ok is not None:
        also = md_escape(validation.also_on_clause())
        out += [f"**{'Within tolerance' if ok else 'Outside tolerance'}**: perplexity on the held-out verification "
                f"windows{also} against at most +{tol.max_ppl_increase:.1%}", ""]
    for domain in validation.domains or []:  # the plan's --also-on texts, each judged as verification is
        out += [md_escape(domain.sentence(tol.max_ppl_increase)), ""]
    table = [[r.label, r.text(r.before), r.text(r.after), r.change_text()] for r in comparison_rows(validation)]
    out += [md_table(["metric", "before", "after", "change"], table, ["l", "r", "r", "r"]), ""]
    return out


def recovery_md(record: RecoveryRecord) -> list[str]:
    """The recovery numbers of the HTML section (:mod:`.recovery_section`), the verification curve as a table."""
    from .recovery_section import recovery_items, task_rows

    out = [f"Knowledge distillation from {md_escape(record.teacher.name)} on "
           f"{md_escape(record.data.training)}; judged on {md_escape(record.data.verification)}, "
           "which was never trained on.", "",
           md_table(["", "value", "detail"], [list(item) for item in recovery_items(record)], ["l", "r", "l"]), ""]
    points = record.verification_points()
    if points:
        out += [md_table(["step", "verification loss"], [[step, f"{loss:.4f}"] for step, loss in points],
                         ["r", "r"]), ""]
    tasks = task_rows(record)
    if tasks:
        out += [md_table(["task", "metric", "teacher", "pruned", "recovered"],
                         [[t, m, *(fmt(v) for v in values)] for t, m, *values in tasks],
                         ["l", "l", "r", "r", "r"]), ""]
    return out
