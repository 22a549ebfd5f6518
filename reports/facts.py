"""What every report format shows, computed once from a ProfileResult by ProfileResult's own methods.

Nothing here ranks, tests or bootstraps by itself: ranking, findings, intervals and prediction
agreement come from :class:`ssm_profile.profiling.results.ProfileResult`, so a report never disagrees with the
CLI tables or the run directory's CSV files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ssm_profile.documents import Plan
from ssm_profile.base.fmt import human_bytes, human_count
from ssm_profile.criteria.base import unit_aggregation_text

from .svg import fmt
from .values import compact_layers

if TYPE_CHECKING:
    from ssm_profile.profiling.record import RunRecord


@dataclass
class Facts:
    result: Any  # ssm_profile.profiling.results.ProfileResult
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
    def record(self) -> RunRecord:
        return self.result.record

    def model_name(self) -> str:
        return str(self.record.model.name or self.result.analysis.model.name or "unknown model")

    def criteria(self) -> list[str]:
        """Criteria in the order the run was configured, then any others found in trials."""
        return list(dict.fromkeys([*self.record.settings.criteria, *self.result.criteria()]))

    def header_items(self) -> list[tuple[str, str]]:
        """(label, value) pairs for the header, as plain text (each renderer escapes)."""
        record, analysis = self.record, self.result.analysis
        model, data, settings, timings = record.model, record.data, record.settings, record.timings
        info, totals = analysis.model, analysis.totals
        dims = info.dims
        items = [("Model", self.model_name())]
        if model.source.location or model.source.kind:
            items.append(("Source", " · ".join(str(v) for v in (model.source.kind, model.source.location) if v)))
        kinds = ", ".join(info.mixer_kinds) or "?"
        arch = (f"{info.architecture} ({model.class_name or info.class_name or '?'}); "
                f"{info.num_ssm_layers} SSM of {info.num_layers} layers; mixer {kinds}")
        items.append(("Architecture", arch))
        if dims:
            items.append(("Dimensions", ", ".join(f"{k} {v}" for k, v in dims.items())))
        if totals.parameters:
            p = totals.parameters
            items.append(("Parameters", f"{human_count(p)} ({p:,}); SSM mixers {totals.ssm_share:.1%} of whole-model "
                                        "params; "
                                        f"{human_bytes(totals.bytes)} as {info.dtype or '?'}"))
        if data.seqlen:
            cal = f"calibration {data.calibration or '?'}: {data.nsamples} × {data.seqlen} tokens"
            ev = f"evaluation {data.evaluation or '?'}: {data.eval_samples} × {data.seqlen} tokens"
            search = (data.windows or {}).get("search")
            drawn = f" (search windows {compact_layers(search)} of the evaluation text)" if search else ""
            items.append(("Data", f"{cal}; {ev}; seed {data.seed}{drawn}"))
        items.append(("Dense model",
                      f"loss {self.result.dense_loss:.4f}, perplexity {self.result.dense_perplexity:.3f}"))
        items.append(("Criteria", ", ".join(self.criteria()) or "none"))
        if record.unit_aggregation:
            items.append(("Unit scores", unit_aggregation_text(record.unit_aggregation)))
        sp = ", ".join(f"{s:.0%}" for s in settings.sparsities)
        probe = (f"per-layer probe {settings.layer_criterion} at {settings.probe_sparsity:.0%}" if settings.per_layer
                 else "no per-layer sweep")
        items.append(("Sweep", f"sparsities {sp}; {settings.structure}; tolerance "
                               f"{settings.tolerance:.0%} perplexity; {probe}"))
        items.append(("Trials", f"{len(self.result.model_trials)} model-wide, {len(self.result.layer_trials)} per-layer"
                      + (f" (status: {record.status})" if not record.complete else "")))
        if record.created:
            items.append(("Date", record.created + (f" → {record.finished}" if record.finished else "")))
        if timings:
            total = timings.get("total")
            parts = ", ".join(f"{k.replace('_', ' ')} {fmt(float(v), 3)} s" for k, v in timings.items() if k != "total"
                              and isinstance(v, (int, float)))
            items.append(("Run time", (f"{fmt(float(total), 3)} s" if isinstance(total, (int, float)) else "?")
                          + (f" ({parts})" if parts else "")))
        if record.versions:
            items.append(("Versions", ", ".join(f"{k} {v}" for k, v in record.versions.items())))
        if model.fingerprint:
            items.append(("Weights", model.fingerprint))
        return items


# ---------------------------------------------------------------------- plan input
def plan_mismatch(plan: Plan, result) -> str | None:
    """A warning when a plan names other weights than the profiled ones (the report still renders)."""
    theirs, ours = plan.model.fingerprint, result.record.model.fingerprint
    if theirs and ours and theirs != ours:
        return (f"this plan was made for other weights ({plan.model.name or '?'}, {theirs}) than the "
                f"profiled model ({ours}); its numbers may not apply")
    return None


def plan_change_lines(plan: Plan) -> list[str]:
    """The CLI's words for what a plan physically changes (:func:`ssm_profile.pruning.summary.plan_summary_lines`:
    sliced vs zeroed, a WARNING first when no shape changes)."""
    from ssm_profile.pruning.summary import plan_summary_lines

    return plan_summary_lines(plan)
