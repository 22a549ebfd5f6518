"""The report's first section: the answer (what to prune and how much), before any evidence.

The words are :mod:`.answer`'s (the Markdown report says the same); this module lays them out as HTML.
"""

from __future__ import annotations

from ssm_profile.documents import Plan, RecoveryRecord, ValidationReport

from .answer import SAFE_COLUMNS, Answer, Sentence, answer, share_of  # noqa: F401  (share_of re-exported)
from .facts import Facts
from .html_elements import Cell, chip, crit_chip, num, section, table, txt
from .svg import esc, fmt_pct, group_color


def decision_section(facts: Facts, plan: Plan | None, validation: ValidationReport | None = None,
                     recovery: RecoveryRecord | None = None, plan_path: str | None = None) -> str:
    """The answer; with a plan, also what its validation and recovery found, and the next command for
    the files given (``plan_path``: the plan file the user passed)."""
    said = answer(facts, plan, validation, recovery, plan_path)
    body = "".join(_paragraph(s) for s in said.lead)
    if said.cuts:
        items = "".join(f"<li>{chip(target, group_color(target))} {esc(what)}</li>" for target, what in said.cuts)
        body += f'<ul class="plan-cuts">{items}</ul>'
    body += "".join(_paragraph(s) for s in said.outcome)
    if said.safe_rows:
        body += _safe_table(said, facts)
    if said.next_command:
        body += (f'<p class="next">{esc(said.next_label)}:</p><pre class="command"><code>'
                 f"{esc(said.next_command)}</code></pre>")
    return section("decision", "What can I prune, and how much", "", body)


def _paragraph(sentence: Sentence) -> str:
    text = "".join(f"<strong>{esc(t)}</strong>" if strong else esc(t) for t, strong in sentence.parts)
    return f'<p class="{sentence.kind}">{text}</p>'


def _safe_table(said: Answer, facts: Facts) -> str:
    rows = [[Cell(chip(r.target, group_color(r.target)), r.target), num(r.safe, fmt_pct(r.safe)), txt(r.limit),
             Cell(crit_chip(r.criterion, facts.criteria()), r.criterion), num(r.removable, r.removable_text)]
            for r in said.safe_rows]
    numeric = {"safe sparsity", "parameters removable"}
    return table([(name, tip, name in numeric) for name, tip in SAFE_COLUMNS], rows, tid="decision-table")
