"""A Markdown summary of a profile run: header, ranking, findings, plan and validation summaries."""

from __future__ import annotations

from typing import Any

from ssm_profile.base.fmt import agreement_text, human_count

from .facts import COMPARED_KEYS, Facts, plan_change_lines, plan_mismatch, validation_rows
from .svg import fmt, fmt_pct
from .values import change_text, compact_layers, is_scalar, md_escape, md_table, md_value_lines, split_comparisons


def render_markdown(result, plan: dict[str, Any] | None = None, validation: dict[str, Any] | None = None,
                    recovery: dict[str, Any] | None = None) -> str:
    """The Markdown summary for ``result`` (a ProfileResult)."""
    return render_facts_md(Facts.of(result), plan, validation, recovery)


def render_facts_md(facts: Facts, plan: dict[str, Any] | None = None, validation: dict[str, Any] | None = None,
                    recovery: dict[str, Any] | None = None) -> str:
    r = facts.result
    out = [f"# Profile report: {md_escape(facts.model_name())}", ""]
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
                md_table(["#", "layer", "target", "ΔL", "95% CI", "perplexity"],
                         [[row["rank"], row["layer"], row["target"], fmt(row["delta_loss"]),
                           f"{fmt(row['ci_low'])} … {fmt(row['ci_high'])}", f"{row['rel_ppl_increase']:+.2%}"]
                          for row in top], ["r", "r", "l", "r", "r", "r"])]
    if facts.agreement:
        out += ["", "Predicted vs measured ΔL (Spearman ρ over model-wide trials): "
                + "; ".join(agreement_text(md_escape(c), a) for c, a in facts.agreement.items()), ""]
    out += ["", "## Literature findings", ""]
    out.append(md_table(["finding", "on this model", "measured", "source"],
                        [[f.claim, f.verdict, f.detail, f.source] for f in facts.findings]))
    if plan is not None:
        out += ["", "## Pruning plan", ""] + plan_md(facts, plan)
    if validation is not None:
        out += ["", "## Validation", ""] + validation_md(validation)
    if recovery is not None:
        out += ["", "## Recovery", ""] + recovery_md(recovery)
    out.append("")
    return "\n".join(out)


def plan_md(facts: Facts, plan: dict[str, Any]) -> list[str]:
    out = []
    warning = plan_mismatch(plan, facts.result)
    if warning:
        out += [f"> **Warning**: {md_escape(warning)}", ""]
    changes = plan_change_lines(plan)  # what physically changes first, in the CLI's words
    out += [f"> **{md_escape(line)}**" if line.startswith("WARNING") else md_escape(line) for line in changes[:-1]]
    out += [""] if changes else []
    objective = plan.get("objective")
    if isinstance(objective, dict) and objective:
        out += ["Objective: " + ", ".join(f"{md_escape(k)} = {md_escape(v)}" for k, v in objective.items()
                                          if is_scalar(v)), ""]
    actions = plan.get("actions") if isinstance(plan.get("actions"), list) else []
    actions = [a for a in actions if isinstance(a, dict)]
    if actions:
        rows = []
        for i, a in enumerate(actions, 1):
            units = a.get("unit_indices")
            count = (sum(len(x) for x in units.values() if isinstance(x, list)) if isinstance(units, dict)
                     else len(units) if isinstance(units, list) else None)
            layers = a.get("layers")
            sparsity = a.get("sparsity")
            rows.append([i, a.get("target"), compact_layers(layers), a.get("structure"),
                         a.get("criterion"), fmt_pct(sparsity, 1) if isinstance(sparsity, (int, float)) else sparsity,
                         count, a.get("params_removed"), a.get("predicted_delta_loss"), a.get("execution")])
        out += [md_table(["#", "target", "layers", "structure", "criterion", "sparsity", "units", "params removed",
                          "predicted ΔL", "execution"], rows, ["r", "l", "l", "l", "l", "r", "r", "r", "r", "l"]), ""]
    else:
        out += ["The plan has no actions.", ""]
    predicted = plan.get("predicted") if isinstance(plan.get("predicted"), dict) else {}
    measured = plan.get("measured") if isinstance(plan.get("measured"), dict) else None
    keys = [k for k in dict.fromkeys([*predicted, *(measured or {})])
            if is_scalar(predicted.get(k)) and is_scalar((measured or {}).get(k))]
    if keys:
        out += [md_table(["", "predicted", "measured"],
                         [[k, predicted.get(k), "not measured" if measured is None else measured.get(k)] for k in keys],
                         ["l", "r", "r"]), ""]
    if isinstance(predicted.get("params_removed"), (int, float)):
        ratio = predicted.get("reduction_ratio")
        share = f" ({ratio:.1%})" if isinstance(ratio, (int, float)) else ""
        out += [f"Predicted: {human_count(predicted['params_removed'])} parameters removed{share}", ""]
    notes = plan.get("notes")
    if isinstance(notes, list) and notes:
        out += ["Notes:", ""] + [f"- {md_escape(n)}" for n in notes] + [""]
    return out


def validation_md(validation: dict[str, Any]) -> list[str]:
    out = []
    verdict_key = next((k for k in ("within_tolerance", "passed", "ok") if isinstance(validation.get(k), bool)), None)
    if verdict_key:
        ok = validation[verdict_key]
        out += [f"**{'Within tolerance' if ok else 'Outside tolerance'}** ({md_escape(verdict_key)} = "
                f"{str(ok).lower()})", ""]
    shared = validation_rows(validation)
    if shared is not None:
        rest = {k: v for k, v in validation.items() if k != verdict_key and k not in COMPARED_KEYS}
        table = [[r.label, r.text(r.before), r.text(r.after), r.change_text()] for r in shared]
    else:
        rows, rest = split_comparisons({k: v for k, v in validation.items() if k != verdict_key})
        table = [[" · ".join(path), b, a, change_text(b, a)] for path, b, a in rows]
    if table:
        out += [md_table(["metric", "before", "after", "change"], table, ["l", "r", "r", "r"]), ""]
    scalars = {k: v for k, v in rest.items() if is_scalar(v)}
    if scalars:
        out += md_value_lines(scalars) + [""]
    more = [k for k, v in rest.items() if not is_scalar(v)]
    if more:
        out += [f"More fields in the validation file: {', '.join(md_escape(k) for k in more)}.", ""]
    return out


def recovery_md(data: dict[str, Any]) -> list[str]:
    """The recovery numbers of the HTML section (:mod:`.recovery_section`), the verification curve as a table."""
    from ssm_profile.documents import RecoveryRecord

    from .recovery_section import recovery_items, task_rows

    record = RecoveryRecord.from_dict(data)
    out = [f"Knowledge distillation from {md_escape(record.teacher.get('name'))} on "
           f"{md_escape(record.data.get('training'))}; judged on {md_escape(record.data.get('verification'))}, "
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
