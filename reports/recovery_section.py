"""The report's Recovery section: the distillation loss curve and the verification perplexity before
and after ``ssm-profile recover`` (from ``recovery.json``, :class:`ssm_profile.documents.RecoveryRecord`)."""

from __future__ import annotations

from typing import Any

from ssm_profile.documents import Increase, RecoveryRecord

from .html_elements import cards, legend, num, section, table, txt
from .svg import Point, Series, esc, line_panel

KD_COLOR, VERIFY_COLOR = "#4c78a8", "#e45756"


def _change(split: Increase) -> tuple[str, str]:
    return f"{split.rel_ppl_increase:+.1%}", f"{split.interval_text()}, {split.windows} windows"


def recovery_items(record: RecoveryRecord) -> list[tuple[str, str, str]]:
    """(label, value, detail) of the headline numbers, for the HTML cards and the Markdown table."""
    before, after = record.before.verification, record.after.verification
    fraction = record.recovered_fraction()
    steps = record.progress.steps_done
    return [("verification perplexity vs teacher, pruned", *_change(before)),
            ("verification perplexity vs teacher, recovered", *_change(after)),
            ("share of the increase removed", "" if fraction is None else f"{fraction:.0%}",
             f"{steps} steps, {record.progress.train_seconds:.0f} s of training"),
            ("nonzero parameters", f"{record.sparsity.nonzero_after:,}",
             f"{record.sparsity.frozen_entries:,} pruned entries held at zero")]


def task_rows(record: RecoveryRecord) -> list[tuple[str, str, float | None, float | None, float | None]]:
    """(task, metric, teacher, pruned, recovered) of the offline tasks scored before and after."""
    before, after = record.before.lm_eval or {}, record.after.lm_eval or {}
    teacher = record.teacher_scores or {}
    rows = []
    for task in dict.fromkeys([*before, *after]):
        metrics = {**(before.get(task) or {}), **(after.get(task) or {})}
        for metric in metrics:
            rows.append((task, metric, *(_score(side, task, metric) for side in (teacher, before, after))))
    return rows


def _score(scores: dict[str, Any], task: str, metric: str) -> float | None:
    value = (scores.get(task) or {}).get(metric)
    return float(value) if isinstance(value, (int, float)) else None


def recovery_section(record: RecoveryRecord) -> str:
    """Cards (perplexity change before/after, share recovered, sparsity), the two curves and the tasks."""
    before = record.before.verification
    steps = record.progress.steps_done
    items = recovery_items(record)
    kd = [Point(p.step, p.kd_loss, tip=f"step {p.step}: KD loss {p.kd_loss:.4f}")
          for p in record.curve if p.kd_loss is not None]
    verify = [Point(step, loss, tip=f"step {step}: verification loss {loss:.4f}")
              for step, loss in record.verification_points()]
    x_max = max(1, steps)
    panels = [
        '<div class="panel"><h4>distillation loss (training text)</h4>' + line_panel(
            [Series("kd", "KD loss", KD_COLOR, kd)], label="KD loss per step", x_label="step",
            y_label="KD loss", x_max=x_max, x_pct=False) + "</div>",
        '<div class="panel"><h4>verification loss (held out)</h4>' + line_panel(
            [Series("verify", "verification loss", VERIFY_COLOR, verify)], label="verification loss",
            x_label="step", y_label="loss (nats/token)", x_max=x_max, x_pct=False,
            y_limits=_limits([p.y for p in verify] + [before.dense_loss]),
            reference=(before.dense_loss, "teacher")) + "</div>"]
    keys = [("kd", "KD loss", KD_COLOR, False), ("verify", "verification loss", VERIFY_COLOR, False)]
    note = (f'<p class="note">Teacher: {esc(record.teacher.name)}; training text: '
            f'{esc(record.data.training)}; the verification windows ({esc(record.data.verification)}) '
            "were never trained on and chose nothing.</p>")
    body = cards(items) + f'<figure class="fig">{legend(keys)}<div class="panels">{"".join(panels)}</div></figure>'
    rows = task_rows(record)
    if rows:
        body += "<h3>Offline tasks</h3>" + table(
            [("task", "", False), ("metric", "", False), ("teacher", "the dense model", True),
             ("pruned", "before recovery", True), ("recovered", "after recovery", True)],
            [[txt(t), txt(m), num(a), num(b), num(c)] for t, m, a, b, c in rows])
    return section("recovery", "Recovery", "Knowledge distillation of the pruned model from its dense teacher "
                   "(ssm-profile recover); perplexity changes are against the teacher.", body + note)


def _limits(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.1 or 0.1
    return lo - pad, hi + pad
