"""What every report format shows, computed once from a ProfileResult by ProfileResult's own methods.

Nothing here ranks, tests or bootstraps by itself: ranking, findings, intervals and prediction
agreement come from :class:`ssm_profile.results.ProfileResult`, so a report never disagrees with the
CLI tables or the run directory's CSV files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ssm_profile.comparison import ComparisonRow
from ssm_profile.documents import VALIDATION_KIND, ValidationReport
from ssm_profile.fmt import human_bytes, human_count

from .svg import fmt


@dataclass
class Facts:
    result: Any  # ssm_profile.results.ProfileResult
    ranking: list = field(default_factory=list)
    layer_ranking: list = field(default_factory=list)
    findings: list = field(default_factory=list)
    agreement: dict = field(default_factory=dict)
    heatmap: tuple = ((), (), ())
    ci: dict = field(default_factory=dict)  # trial key -> (low, high)

    @classmethod
    def of(cls, result) -> "Facts":
        ci = {t.key: result.delta_ci(t) for t in result.model_trials}
        return cls(result=result, ranking=result.ranking(), layer_ranking=result.layer_ranking(),
                   findings=result.findings(), agreement=result.prediction_agreement(), heatmap=result.heatmap(),
                   ci=ci)

    # ------------------------------------------------------------------ header facts
    @property
    def meta(self) -> dict[str, Any]:
        return self.result.meta or {}

    def model_name(self) -> str:
        model = self.meta.get("model") or {}
        return str(model.get("name") or self.result.analysis.model.get("name") or "unknown model")

    def criteria(self) -> list[str]:
        """Criteria in the order the run was configured, then any others found in trials."""
        configured = list((self.meta.get("settings") or {}).get("criteria") or [])
        return list(dict.fromkeys([*configured, *self.result.criteria()]))

    def header_items(self) -> list[tuple[str, str]]:
        """(label, value) pairs for the header, as plain text (each renderer escapes)."""
        meta, analysis = self.meta, self.result.analysis
        model = meta.get("model") or {}
        info = analysis.model or {}
        totals = analysis.totals or {}
        dims = info.get("dims") or {}
        data = meta.get("data") or {}
        settings = meta.get("settings") or {}
        timings = meta.get("timings") or {}
        items = [("Model", self.model_name())]
        source = model.get("source") or info.get("source") or {}
        if source.get("location") or source.get("kind"):
            items.append(("Source", " · ".join(str(v) for v in (source.get("kind"), source.get("location")) if v)))
        kinds = ", ".join(info.get("mixer_kinds") or []) or "?"
        arch = (f"{info.get('architecture', '?')} ({model.get('class') or info.get('class', '?')}); "
                f"{info.get('num_ssm_layers', '?')} SSM of {info.get('num_layers', '?')} layers; mixer {kinds}")
        items.append(("Architecture", arch))
        if dims:
            items.append(("Dimensions", ", ".join(f"{k} {v}" for k, v in dims.items())))
        if totals.get("parameters") is not None:
            p = totals["parameters"]
            items.append(("Parameters", f"{human_count(p)} ({p:,}); SSM mixers {totals.get('ssm_share', 0):.1%}; "
                                        f"{human_bytes(totals.get('bytes', 0))} as {info.get('dtype', '?')}"))
        if data:
            seqlen = data.get("seqlen", "?")
            cal = f"calibration {data.get('calibration', '?')}: {data.get('nsamples', '?')} × {seqlen} tokens"
            ev = f"evaluation {data.get('evaluation', '?')}: {data.get('eval_samples', '?')} × {seqlen} tokens"
            items.append(("Data", f"{cal}; {ev}; seed {data.get('seed', '?')}"))
        items.append(("Dense model",
                      f"loss {self.result.dense_loss:.4f}, perplexity {self.result.dense_perplexity:.3f}"))
        items.append(("Criteria", ", ".join(self.criteria()) or "none"))
        if settings:
            sp = ", ".join(f"{s:.0%}" for s in settings.get("sparsities") or [])
            tolerance = settings.get("tolerance", self.result.tolerance)
            probe = (f"per-layer probe {settings.get('layer_criterion', '?')} at "
                     f"{settings.get('probe_sparsity', 0.5):.0%}" if settings.get("per_layer", True)
                     else "no per-layer sweep")
            items.append(("Sweep", f"sparsities {sp}; {settings.get('structure', 'unstructured')}; tolerance "
                                   f"{tolerance:.0%} perplexity; {probe}"))
        items.append(("Trials", f"{len(self.result.model_trials)} model-wide, {len(self.result.layer_trials)} per-layer"
                      + (f" (status: {meta.get('status')})" if meta.get("status") not in (None, "complete") else "")))
        created = meta.get("created")
        if created:
            items.append(("Date", str(created) + (f" → {meta['finished']}" if meta.get("finished") else "")))
        if timings:
            total = timings.get("total")
            parts = ", ".join(f"{k} {fmt(float(v), 3)} s" for k, v in timings.items() if k != "total"
                              and isinstance(v, (int, float)))
            items.append(("Run time", (f"{fmt(float(total), 3)} s" if isinstance(total, (int, float)) else "?")
                          + (f" ({parts})" if parts else "")))
        versions = meta.get("versions") or {}
        if versions:
            items.append(("Versions", ", ".join(f"{k} {v}" for k, v in versions.items())))
        if model.get("fingerprint"):
            items.append(("Weights", str(model["fingerprint"])))
        return items


# ---------------------------------------------------------------------- plan / validation input
COMPARED_KEYS = ("perplexity", "size", "speed", "lm_eval")  # what the shared before/after rows show


def validation_rows(validation: dict[str, Any]) -> list[ComparisonRow] | None:
    """The before/after rows every front-end shows (:mod:`ssm_profile.comparison`) for a file
    written by ``ssm-profile validate``; None for other shapes, which render field by field."""
    if validation.get("kind") != VALIDATION_KIND:
        return None
    try:
        return ValidationReport.from_dict(validation).comparison_rows()
    except (KeyError, TypeError, AttributeError):  # a hand-edited file: show it as given
        return None


def plan_mismatch(plan: dict[str, Any] | None, result) -> str | None:
    """A warning when a plan names other weights than the profiled ones (the report still renders)."""
    if not plan or not isinstance(plan.get("model"), dict):
        return None
    theirs = plan["model"].get("fingerprint")
    ours = (result.meta.get("model") or {}).get("fingerprint")
    if theirs and ours and theirs != ours:
        return (f"this plan was made for other weights ({plan['model'].get('name', '?')}, {theirs}) than the "
                f"profiled model ({ours}); its numbers may not apply")
    return None


def plan_change_lines(plan: dict[str, Any]) -> list[str]:
    """The CLI's words for what a plan physically changes (:func:`ssm_profile.summary.plan_summary_lines`:
    sliced vs zeroed, a WARNING first when no shape changes), or [] for a plan that does not read."""
    from ssm_profile.documents import Plan
    from ssm_profile.summary import plan_summary_lines

    try:
        return plan_summary_lines(Plan.from_dict(plan))
    except Exception:  # noqa: BLE001 - a damaged or foreign plan: the report shows what it can
        return []
