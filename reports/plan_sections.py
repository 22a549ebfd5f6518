"""The report's plan and validation sections, rendered from the JSON files as given (any shape)."""

from __future__ import annotations

from typing import Any

from ssm_profile.base.fmt import human_bytes, human_count

from .decision import share_of
from .facts import COMPARED_KEYS, Facts, plan_mismatch, validation_rows
from .html_elements import Cell, cards, chip, crit_chip, num, section, table
from .svg import esc, finite, fmt, fmt_pct, group_color
from .values import (
    change_text, compact_layers, comparison_html, human_key, is_scalar, key_html, kv_html, records_html, scalar_html,
    sort_value, split_comparisons, value_html,
)


# ---------------------------------------------------------------------- 6 plan
_ACTION_COLUMNS = ["target", "layers", "structure", "criterion", "sparsity", "unit_kind", "unit_indices",
                   "params_removed", "flops_removed", "state_bytes_removed", "predicted_delta_loss", "execution",
                   "note"]


def plan_section(facts: Facts, plan: dict[str, Any]) -> str:
    parts = []
    warning = plan_mismatch(plan, facts.result)
    if warning:
        parts.append(f'<p class="warning">{esc(warning)}</p>')
    predicted = plan.get("predicted") if isinstance(plan.get("predicted"), dict) else {}
    measured = plan.get("measured") if isinstance(plan.get("measured"), dict) else None
    objective = plan.get("objective") if isinstance(plan.get("objective"), dict) else None
    summary = []
    if "reduction_ratio" in predicted and finite(predicted["reduction_ratio"]):
        summary.append(("Reduction", fmt_pct(predicted["reduction_ratio"], 1), f"predicted, {share_of(objective)}"))
    if "params_removed" in predicted and finite(predicted["params_removed"]):
        summary.append(("Parameters removed", human_count(predicted["params_removed"]), "predicted"))
    if "delta_loss" in predicted and finite(predicted["delta_loss"]):
        summary.append(("ΔL", fmt(predicted["delta_loss"]), "predicted"))
    if "rel_ppl_increase" in predicted and finite(predicted["rel_ppl_increase"]):
        summary.append(("Perplexity", f"{predicted['rel_ppl_increase']:+.1%}", "predicted"))
    if measured:
        for key, label in (("rel_ppl_increase", "Perplexity"), ("delta_loss", "ΔL")):
            if finite(measured.get(key)):
                v = measured[key]
                summary.append((label, f"{v:+.1%}" if key == "rel_ppl_increase" else fmt(v), "measured"))
    if summary:
        parts.append(cards(summary))
    if objective:
        parts.append("<h3>Objective</h3>" + kv_html(objective))
    actions = plan.get("actions")
    if isinstance(actions, list):
        parts.append(f"<h3>Actions ({len(actions)})</h3>")
        parts.append(actions_table([a for a in actions if isinstance(a, dict)], facts.criteria()))
        bad = [a for a in actions if not isinstance(a, dict)]
        if bad:
            parts.append(f'<p class="note">{len(bad)} malformed action entries (not objects) were skipped.</p>')
    if predicted or measured:
        keys = list(dict.fromkeys([*predicted, *(measured or {})]))
        rows = [(k, predicted.get(k), (measured or {}).get(k)) for k in keys
                if is_scalar(predicted.get(k)) and is_scalar((measured or {}).get(k))]
        if rows:
            body = "".join(f'<tr><th>{key_html(k)}</th><td class="num">{scalar_html(p)}</td><td class="num">'
                           f'{scalar_html(m) if measured is not None else "<span class=muted>not measured</span>"}</td>'
                           f'<td class="num">{esc(change_text(p, m)) if measured is not None else ""}</td></tr>'
                           for k, p, m in rows)
            parts.append('<h3>Predicted vs measured</h3><table class="compare"><thead><tr><th></th>'
                         '<th class="num">predicted</th><th class="num">measured</th><th class="num">difference</th>'
                         f"</tr></thead><tbody>{body}</tbody></table>")
        nested = {k: v for k, v in {**predicted, **(measured or {})}.items() if not is_scalar(v)}
        if nested:
            parts.append("<details><summary>More predicted/measured details</summary>" + kv_html(nested) + "</details>")
    notes = plan.get("notes")
    if isinstance(notes, list) and notes:
        items = "".join(f"<li>{value_html(n)}</li>" for n in notes)
        parts.append(f'<h3>Notes</h3><ul class="notes">{items}</ul>')
    elif isinstance(notes, str) and notes:
        parts.append(f"<h3>Notes</h3><p>{esc(notes)}</p>")
    rest = {k: v for k, v in plan.items() if k not in ("objective", "actions", "predicted", "measured", "notes")}
    if rest:
        parts.append(f'<details class="more"><summary>Plan details ({esc(", ".join(human_key(k) for k in rest))})</summary>'
                     f"{kv_html(rest)}</details>")
    return section("plan", "Pruning plan", "What the plan removes, and what it predicts (and, once applied, measured).",
                   "".join(parts) or '<p class="note">The plan file is empty.</p>')


def actions_table(actions: list[dict[str, Any]], crits: list[str]) -> str:
    if not actions:
        return '<p class="note">The plan has no actions.</p>'
    extra = [k for k in dict.fromkeys(k for a in actions for k in a) if k not in _ACTION_COLUMNS]
    cols = [c for c in _ACTION_COLUMNS if any(c in a for a in actions)] + extra
    labels = {"unit_indices": "units", "params_removed": "params removed", "flops_removed": "FLOPs removed",
              "state_bytes_removed": "state bytes removed", "predicted_delta_loss": "predicted ΔL",
              "unit_kind": "unit kind"}
    numeric = {"sparsity", "params_removed", "flops_removed", "state_bytes_removed", "predicted_delta_loss"}
    shared = _shared_notes(actions)
    rows = []
    for i, a in enumerate(actions, 1):
        cells = [num(i)]
        for c in cols:
            v = a.get(c)
            if c == "note" and v in shared:
                cells.append(Cell(f'<span class="muted">see note {shared.index(v) + 1} below</span>', ""))
            elif c == "criterion" and isinstance(v, str):
                cells.append(Cell(crit_chip(v, crits), v))
            elif c == "target" and isinstance(v, str):
                cells.append(Cell(chip(v, group_color(v)), v))
            elif c == "layers":
                cells.append(Cell(esc(compact_layers(v)), None))
            elif c == "sparsity" and finite(v):
                cells.append(num(v, fmt_pct(v, 1)))
            elif c == "unit_indices":
                cells.append(_indices_cell(v))
            elif c == "state_bytes_removed" and finite(v):
                cells.append(num(v, human_bytes(v) if v else "0"))
            elif c in ("params_removed", "flops_removed") and finite(v):
                cells.append(num(v, human_count(v) if abs(v) >= 1e4 else f"{v:,}"))
            elif c in numeric and finite(v):
                cells.append(num(v, f"{v:,}" if isinstance(v, int) else fmt(v)))
            else:
                sv = sort_value(v) if is_scalar(v) else None
                cells.append(Cell(value_html(v, 2), sv, num=sv is not None))
        rows.append(cells)
    headers = [("#", "", True)] + [(labels.get(c, c), "", c in numeric) for c in cols]
    notes = "".join(f"<li>{esc(n)} <span class=\"muted\">(actions "
                    f"{', '.join(str(i) for i, a in enumerate(actions, 1) if a.get('note') == n)})</span></li>"
                    for n in shared)
    return table(headers, rows, tid="plan-actions") + (f'<ol class="notes shared-notes">{notes}</ol>' if notes else "")


def _shared_notes(actions: list[dict[str, Any]]) -> list[str]:
    """Notes several actions repeat word for word: shown once under the table instead of in every row."""
    notes = [a.get("note") for a in actions if isinstance(a.get("note"), str) and a.get("note")]
    return [n for n in dict.fromkeys(notes) if notes.count(n) > 1]


def _indices_cell(v: Any) -> Cell:
    if v is None:
        return Cell('<span class="muted">–</span>', "")
    if isinstance(v, dict):  # e.g. {layer: [indices]}
        count = sum(len(x) for x in v.values() if isinstance(x, list))
        tip = "\n".join(f"layer {k}: {_short_list(x)}" for k, x in list(v.items())[:32])
        return Cell(f'<span data-tip="{esc(tip)}">{count:,} units</span>', str(count), num=True)
    if isinstance(v, list):
        flat = [x for x in v if not isinstance(x, list)] + [y for x in v if isinstance(x, list) for y in x]
        return Cell(f'<span data-tip="{esc(_short_list(v))}">{len(flat):,} units</span>', str(len(flat)), num=True)
    return Cell(esc(v))


def _short_list(v: Any, limit: int = 40) -> str:
    if not isinstance(v, list):
        return str(v)
    shown = ", ".join(str(x) for x in v[:limit])
    return shown + (f", … ({len(v) - limit} more)" if len(v) > limit else "")


# ---------------------------------------------------------------------- 7 validation
def validation_section(validation: dict[str, Any]) -> str:
    parts = []
    verdict_key = next((k for k in ("within_tolerance", "passed", "ok") if isinstance(validation.get(k), bool)), None)
    if verdict_key:
        ok = validation[verdict_key]
        parts.append(f'<p class="verdict {"ok" if ok else "bad"}"><span class="badge {"ok" if ok else "bad"}">'
                     f'{"within tolerance" if ok else "outside tolerance"}</span> {esc(verdict_key)} = '
                     f'{"true" if ok else "false"}</p>')
    shared = validation_rows(validation)
    if shared is not None:
        parts.append("<h3>Before and after</h3>" + _shared_rows_html(shared))
        rest = {k: v for k, v in validation.items() if k != verdict_key and k not in COMPARED_KEYS}
    else:
        rows, rest = split_comparisons({k: v for k, v in validation.items() if k != verdict_key})
        if rows:
            parts.append("<h3>Before and after</h3>" + comparison_html(
                [(_path_html(path), b, a) for path, b, a in rows], raw_labels=True))
    scalars = {k: v for k, v in rest.items() if is_scalar(v)}
    if scalars:
        parts.append("<h3>Summary</h3>" + kv_html(scalars))
    nested = {k: v for k, v in rest.items() if not is_scalar(v)}
    if nested:
        body = "".join(f"<h4>{esc(k.replace('_', ' '))}</h4>" + (records_html(v) if isinstance(v, list) and v and all(
            isinstance(x, dict) for x in v) else value_html(v, 0)) for k, v in nested.items())
        parts.append(f'<details class="more"><summary>All other fields ({len(nested)})</summary>{body}</details>')
    return section("validation", "Validation", "Measurements of the pruned model against the dense one.",
                   "".join(parts) or '<p class="note">The validation file is empty.</p>')


def _shared_rows_html(rows) -> str:
    """The rows of :func:`ssm_profile.validation.comparison.comparison_rows`, formatted as in the CLI and TUI."""
    body = "".join(
        f'<tr><th>{esc(r.label)}</th><td class="num">{esc(r.text(r.before))}</td>'
        f'<td class="num">{esc(r.text(r.after))}</td><td class="num">{esc(r.change_text())}</td></tr>' for r in rows)
    return ('<table class="compare"><thead><tr><th>metric</th><th class="num">before</th><th class="num">after</th>'
            f'<th class="num">change</th></tr></thead><tbody>{body}</tbody></table>')


def _path_html(path: tuple[str, ...]) -> str:
    *group, name = path
    prefix = "".join(f'<span class="muted">{key_html(g)} · </span>' for g in group)
    return prefix + key_html(name)
