"""``validation.json``: a pruned model measured against its base (:class:`ValidationReport`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..base.errors import SSMProfileError
from ._base import VALIDATION_KIND, Document, _extra, _optional, parse_document
from .data import RunData
from .plan import Increase, Objective, Predicted, read_json
from .usage import MixerUsage


@dataclass(kw_only=True)
class ModelRef(Document):
    """A model a validation compared: its name, where it was read from, its weights' fingerprint."""

    name: str
    location: str
    fingerprint: str
    directory: str | None = None
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class ComparedModels(Document):
    base: ModelRef
    pruned: ModelRef
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class PlanSummary(Document):
    """The plan a pruned model came from, as a validation records it: its model, objective, prediction and size."""

    model: str
    objective: Objective
    predicted: Predicted
    actions: int  # how many actions it has
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class LossPerplexity(Document):
    loss: float
    perplexity: float
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class SearchPerplexity(Document):
    """Base and pruned model on the search windows (the plan chose on them: not a promise's check)."""

    base: LossPerplexity
    pruned: LossPerplexity
    delta_loss: float
    rel_ppl_increase: float
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class ModelSize(Document):
    parameters: int
    nonzero_parameters: int
    bytes_on_disk: int | None  # model files (None: the model was not read from a folder)
    weight_bytes_on_disk: int | None
    state_bytes_per_sequence: int
    flops_per_token: int
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class Sizes(Document):
    base: ModelSize
    pruned: ModelSize
    change: dict[str, float | None]  # relative change per ModelSize field
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class Timing(Document):
    latency_s: float
    tokens_per_s: float | None
    runs_s: list[float] = field(default_factory=list)
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class PairedChange(Document):
    """Mean relative change over paired runs and its 95% t-interval (None with fewer than two pairs)."""

    mean: float | None
    low: float | None
    high: float | None
    extra: dict[str, Any] = _extra()

    @property
    def interval(self) -> tuple[float, float] | None:
        return None if self.low is None or self.high is None else (float(self.low), float(self.high))


@dataclass(kw_only=True)
class SpeedChange(Document):
    pairs: int
    latency: PairedChange
    tokens_per_s: PairedChange
    within_noise: bool | None
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class Speed(Document):
    batch: list[int]  # [sequences, tokens]
    threads: int
    base: Timing
    pruned: Timing
    speedup: float | None = None
    repeats: int | None = _optional()
    warmup: int | None = _optional()
    change: SpeedChange | None = _optional()  # absent in older validation files
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class TaskScores(Document):
    builtin: bool
    items: int | None
    base: dict[str, float]
    pruned: dict[str, float]
    delta: dict[str, float]
    # metric -> [low, high]: 95% paired bootstrap interval of the delta over the items (absent in older files)
    interval: dict[str, list[float]] | None = _optional()
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class LmEval(Document):
    tasks: dict[str, TaskScores]
    limit: int | float | None
    skipped: str | None
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class AgainstPlan(Document):
    """The pruned model's search-window loss beside what its plan predicted and measured."""

    loss: float
    delta_loss: float
    rel_ppl_increase: float
    within_tolerance: bool | None
    predicted_delta_loss: float | None = None
    predicted_rel_ppl_increase: float | None = None
    prediction_error: float | None = None  # measured minus predicted ΔL
    plan_measured_loss: float | None = None
    matches_plan_measurement: bool | None = None
    plan_dense_loss: float | None = None
    dense_loss_matches_plan: bool | None = None
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class Tolerance(Document):
    """The perplexity increase a validation allows, where that number came from, and the verdict."""

    max_ppl_increase: float | None
    source: str | None  # "plan" (its objective) | "argument" (--max-ppl-increase) | None
    within_tolerance: bool | None
    decided_by: str | None = _optional()  # "verification": the held-out windows decide
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class DomainIncrease(Increase):
    """An ``--also-on`` text of the plan (``Plan.domains``) measured again: base vs pruned on the text's
    held-out windows, rebuilt exactly as the plan built them, with the same paired interval as the
    verification windows; it counts toward ``within_tolerance`` as they do."""

    held_out_digest: str | None = _optional()  # sha256 of the windows' token ids (the plan's, when it recorded one)
    plan_rel_ppl_increase: float | None = _optional()  # what the plan measured on them (its masked model)
    extra: dict[str, Any] = _extra()

    def sentence(self, max_ppl_increase: float | None) -> str:
        """``also on prose.txt: perplexity +3.1% (95% interval ...) on 17 held-out windows vs allowed +5.0%:
        within tolerance``."""
        head = f"also on {self.source}: perplexity {self.phrase('held-out windows')}"
        if max_ppl_increase is None or self.within_tolerance is None:
            return head
        verdict = "within tolerance" if self.within_tolerance else "tolerance breached"
        return f"{head} vs allowed +{max_ppl_increase:.1%}: {verdict}"


@dataclass(kw_only=True)
class ValidationReport(Document):
    """Base vs pruned model, measured the same way (``validation.json``); see :mod:`ssm_profile.validation.check`."""

    schema_version: int = 1
    kind: str = VALIDATION_KIND
    created: str
    models: ComparedModels
    plan: PlanSummary | None
    data: RunData
    perplexity: SearchPerplexity
    measured: AgainstPlan
    tolerance: Tolerance
    within_tolerance: bool | None
    lm_eval: LmEval
    size: Sizes
    speed: Speed
    versions: dict[str, str]
    threads: int
    seconds: float
    # the verification split (decides within_tolerance) and other --evaluation sources; absent in older files
    verification: Increase | None = _optional()
    evaluations: list[Increase] | None = _optional()
    # the plan's --also-on texts on their held-out windows (count toward within_tolerance); absent: none, or older files
    domains: list[DomainIncrease] | None = _optional()
    # which forward each mixer class ran, counted per call (ssm_profile.mixers.usage); absent in older files
    mixer_forwards: dict[str, MixerUsage] | None = _optional()
    extra: dict[str, Any] = _extra()

    def also_on_clause(self) -> str:
        """`` and on the held-out windows of a.txt, b.txt`` (the verdict's other texts), or ``""``."""
        return f" and on the held-out windows of {', '.join(d.source for d in self.domains)}" if self.domains else ""


def load_validation(path: str | Path) -> ValidationReport:
    """Read a ``validation.json`` written by ``ssm-profile validate``; every problem is one line."""
    data = read_json(path, "validation", "make one with `ssm-profile validate MODEL PRUNED_DIR`",
                     error=SSMProfileError)
    if not isinstance(data, dict) or data.get("kind") != VALIDATION_KIND:
        raise SSMProfileError(f"'{path}' is not a validation written by `ssm-profile validate` "
                              f"(kind {data.get('kind') if isinstance(data, dict) else None!r}, expected "
                              f"{VALIDATION_KIND!r})")
    return parse_document(ValidationReport, data, f"validation file '{path}'")


