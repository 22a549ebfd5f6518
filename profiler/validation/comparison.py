"""The before/after table of a validation (base vs pruned), one builder for every front-end.

:func:`comparison_rows` turns a :class:`ssm_profile.documents.ValidationReport` into rows ready to
format: the CLI (``validate``), the TUI's Apply tab, the Markdown and HTML reports show the same
quantities in the same order. Torch-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from ..documents import Increase, LmEval, ValidationReport


def relative_change(before: float | None, after: float | None) -> float | None:
    """``after / before - 1`` (None when either is missing or ``before`` is 0)."""
    if before is None or after is None or not before:
        return None
    return after / before - 1.0


# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (beyond: the normal's 1.96)
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def paired_change(before: Sequence[float], after: Sequence[float]) -> dict[str, float | None]:
    """Mean relative change over paired runs (``after[i] / before[i] - 1``) and its 95% t-interval.

    ``low``/``high`` are None with fewer than two pairs (no spread to judge the noise by)."""
    ratios = [a / b - 1.0 for b, a in zip(before, after) if b > 0]
    if not ratios:
        return {"mean": None, "low": None, "high": None}
    mean = sum(ratios) / len(ratios)
    if len(ratios) < 2:
        return {"mean": mean, "low": None, "high": None}
    sd = math.sqrt(sum((r - mean) ** 2 for r in ratios) / (len(ratios) - 1))
    df = len(ratios) - 1
    half = (_T95[df - 1] if df <= len(_T95) else 1.96) * sd / math.sqrt(len(ratios))
    return {"mean": mean, "low": mean - half, "high": mean + half}


def paired_score_interval(before: Sequence[float], after: Sequence[float], draws: int = 2000,
                          seed: int = 0) -> tuple[float, float] | None:
    """95% paired bootstrap interval of ``mean(after) - mean(before)`` over the same items (each item's
    two scores resampled together); None with fewer than two items or lengths that differ."""
    import numpy as np

    if len(before) != len(after) or len(before) < 2:
        return None
    diff = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    picks = np.random.default_rng(seed).integers(0, len(diff), size=(draws, len(diff)))
    means = diff[picks].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def proportion_difference_interval(before: float, after: float, items: int) -> tuple[float, float] | None:
    """95% normal interval of the difference of two accuracies on ``items`` items each, treated as
    independent (wider than the paired one: pairing cancels what both models get right or wrong);
    None when they are not proportions or there are no items."""
    if not items or not (0.0 <= before <= 1.0 and 0.0 <= after <= 1.0):
        return None
    half = 1.96 * math.sqrt((before * (1 - before) + after * (1 - after)) / items)
    return after - before - half, after - before + half


@dataclass(frozen=True)
class ComparisonRow:
    """One quantity before and after pruning.

    ``kind`` says how to format the values: ``count``, ``bytes``, ``loss``, ``perplexity``,
    ``seconds``, ``rate`` (per second) or ``score`` (lm-eval). ``change`` is relative
    (``after / before - 1``); ``delta`` the difference (what losses and lm-eval scores show).
    Timings carry ``interval``, the 95% interval of the relative change over repeated paired runs,
    and ``same_work`` when both models do the same FLOPs: their differences are noise, not speed.
    """

    label: str
    before: float | None
    after: float | None
    kind: str
    lower_is_better: bool = True
    section: str = "model"  # "model" | "lm-eval"
    items: int | None = None  # lm-eval: items per task
    interval: tuple[float, float] | None = None  # 95% interval of the relative change (timings), of the delta (scores)
    interval_kind: str | None = None  # scores: how the interval was drawn ("paired over items", "unpaired")
    same_work: bool = False  # same FLOPs/token before and after: a timing change is noise

    @property
    def within_noise(self) -> bool:
        """The change cannot be told from timing noise: same work, or a 95% interval that holds 0."""
        return self.same_work or (self.interval is not None and self.interval[0] <= 0.0 <= self.interval[1])

    @property
    def change(self) -> float | None:
        return relative_change(self.before, self.after)

    @property
    def delta(self) -> float | None:
        if self.before is None or self.after is None:
            return None
        return self.after - self.before

    def text(self, value: float | None, missing: str = "—") -> str:
        """``value`` (``before`` or ``after``) formatted for its kind, the same in every front-end."""
        from ..base.fmt import human_bytes, human_count

        if value is None:
            return missing
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        if self.kind == "count":
            return human_count(value)
        if self.kind == "bytes":
            return human_bytes(value)
        if self.kind == "seconds":
            return f"{value * 1e3:.1f} ms"
        return {"perplexity": f"{value:.2f}", "rate": f"{value:,.0f}"}.get(self.kind, f"{value:.4f}")

    def change_text(self) -> str:
        """What changed: a difference for losses and lm-eval scores, else a relative change naming
        its total (the base model's value)."""
        if self.kind in ("loss", "score"):
            delta = self.delta
            if delta is None:
                return ""
            if self.kind == "score" and self.interval is not None:
                how = f", {self.interval_kind}" if self.interval_kind else ""
                return f"{delta:+.4f} (95% CI {self.interval[0]:+.4f} to {self.interval[1]:+.4f}{how})"
            if self.kind == "score":
                return f"{delta:+.4f} (no interval: not a per-item score)"
            return f"{delta:+.4f}"
        change = self.change
        if change is None or not math.isfinite(change):
            return ""
        text = f"{change:+.1%} of base"
        ci = "" if self.interval is None else f"95% CI {self.interval[0]:+.1%} to {self.interval[1]:+.1%}"
        if self.same_work:
            return f"{text}: within noise (same FLOPs/token{', ' + ci if ci else ''})"
        if self.within_noise:
            return f"{text}: within noise ({ci})"
        return f"{text} ({ci})" if ci else text

    @property
    def better(self) -> bool | None:
        """True/False when the change is an improvement/regression; None when there is none (or noise)."""
        change = self.change
        if change is None or not math.isfinite(change) or abs(change) <= 1e-9 or self.within_noise:
            return None
        return change < 0 if self.lower_is_better else change > 0


_LOWER_IS_BETTER = ("perplexity", "bits_per", "loss")  # lm-eval metrics of this kind; the rest are accuracy-like


def comparison_rows(report: ValidationReport) -> list[ComparisonRow]:
    """Quality, size and speed rows, then one row per lm-eval task metric."""
    ppl, size, speed = report.perplexity, report.size, report.speed
    b, p = size.base, size.pruned
    # every perplexity names its split: the held-out verification windows and the plan's --also-on texts'
    # (they decide the promise, with their paired interval), any other text, then the search windows
    rows = [_split_row(f"perplexity, {report.verification.windows} verification windows (held out)",
                       report.verification)] if report.verification else []
    rows += [_split_row(f"perplexity, {d.source} ({d.windows} held-out windows, --also-on)", d)
             for d in report.domains or []]
    rows += [_split_row(f"perplexity, {e.source or 'other text'} ({e.windows} windows)", e)
             for e in report.evaluations or []]
    rows += [ComparisonRow("loss, search windows", ppl.base.loss, ppl.pruned.loss, "loss"),
             ComparisonRow("perplexity, search windows", ppl.base.perplexity, ppl.pruned.perplexity, "perplexity"),
             ComparisonRow("parameters", b.parameters, p.parameters, "count"),
             ComparisonRow("nonzero parameters", b.nonzero_parameters, p.nonzero_parameters, "count"),
             ComparisonRow("weights on disk", b.weight_bytes_on_disk, p.weight_bytes_on_disk, "bytes"),
             ComparisonRow("model files on disk", b.bytes_on_disk, p.bytes_on_disk, "bytes"),
             ComparisonRow("state bytes / sequence", b.state_bytes_per_sequence, p.state_bytes_per_sequence, "bytes"),
             ComparisonRow("FLOPs / token", b.flops_per_token, p.flops_per_token, "count")]
    batch = "x".join(str(v) for v in speed.batch)
    same_work = b.flops_per_token == p.flops_per_token
    change = speed.change  # absent in older validation files
    rows += [ComparisonRow(f"latency ({batch}, {speed.threads} thr)", speed.base.latency_s, speed.pruned.latency_s,
                           "seconds", interval=change.latency.interval if change else None, same_work=same_work),
             ComparisonRow("tokens / s", speed.base.tokens_per_s, speed.pruned.tokens_per_s, "rate",
                           lower_is_better=False, interval=change.tokens_per_s.interval if change else None,
                           same_work=same_work)]
    return rows + _lm_eval_rows(report.lm_eval)


def _split_row(label: str, measured: Increase) -> ComparisonRow:
    """Perplexity before/after on one set of windows, with the paired bootstrap 95% interval of the increase."""
    low, high = measured.interval
    return ComparisonRow(label, perplexity(measured.dense_loss), perplexity(measured.loss), "perplexity",
                         interval=(float(low), float(high)))


def perplexity(loss: Any) -> float | None:
    """exp(loss), capped so a huge loss reads as a huge perplexity, not an overflow; None for no number."""
    return math.exp(min(float(loss), 700.0)) if isinstance(loss, (int, float)) else None


def _lm_eval_rows(lm_eval: LmEval) -> list[ComparisonRow]:
    """One row per task metric, with the 95% interval of the score's change: paired over the items
    when validate kept per-item scores, else a normal interval for an accuracy (stated as unpaired)."""
    rows = []
    for task, scores in lm_eval.tasks.items():
        for metric, value in scores.base.items():
            lower = any(w in metric for w in _LOWER_IS_BETTER)
            after = scores.pruned.get(metric)
            paired = (scores.interval or {}).get(metric)
            interval, how = (tuple(paired), f"paired over {scores.items} items") if paired else (None, None)
            if interval is None and after is not None and not lower and scores.items:
                interval = proportion_difference_interval(value, after, scores.items)
                how = f"unpaired normal, {scores.items} items" if interval else None
            rows.append(ComparisonRow(f"{task} {metric}", value, after, "score", lower_is_better=lower,
                                      section="lm-eval", items=scores.items, interval=interval, interval_kind=how))
    return rows
