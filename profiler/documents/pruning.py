"""``pruning.json``: what ``apply`` did (:class:`PruningRecord`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ._base import PRUNING_KIND, Document, _extra, _optional, parse_document
from .data import RunData
from .plan import Dense, ModelOrigin, Objective, Plan, Predicted, read_json, validate_plan
from ..base.errors import PlanError
from .validation import ValidationReport


# ============================================================================================
# pruning.json and validation.json


@dataclass(kw_only=True)
class ExecutedAction(Document):
    """One plan action as ``apply`` carried it out."""

    index: int  # the action's place in the plan
    target: str
    layers: list[int]
    structure: str
    criterion: str
    sparsity: float
    requested: str  # the plan's execution ("slice" | "zero" | "remove")
    execution: str  # what was done: a slice the config cannot express is done as zeros; "remove": a whole layer
    elements_zeroed: int
    units_removed: dict[str, int] | None  # per layer, for unit actions
    note: str = ""
    zeroed_params: list[str] | None = _optional()  # the tensors it zeroed (recover keeps them at zero)
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class PruningSummary(Document):
    actions: int
    sliced: int
    zeroed: int
    removed: int | None = _optional()  # whole layers removed (absent in older records)
    objective: Objective
    predicted: Predicted
    dense: Dense
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class ParameterCounts(Document):
    before: int
    after: int
    nonzero_before: int
    nonzero_after: int
    removed: int
    zeroed_or_removed: int
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class PrunedFrom(Document):
    """The model ``apply`` pruned: its name, where it was loaded from, its weights and class."""

    name: str
    source: ModelOrigin
    fingerprint: str
    class_name: str = field(metadata={"key": "class"})
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class Totals(Document):
    """The static analysis' totals of a model (:class:`ssm_profile.model.analysis.AnalysisResult`)."""

    parameters: int
    bytes: int
    flops_per_token: int
    state_bytes_per_sequence: int
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class TotalsChange(Document):
    """The static analysis' totals before and after pruning."""

    before: Totals
    after: Totals
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class PrunedOutput(Document):
    """The saved folder: its weights' fingerprint, its files and their bytes (set while it is written)."""

    fingerprint: str
    files: list[str] | None = _optional()
    bytes_on_disk: int | None = _optional()
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class SlicedUnits(Document):
    """One unit kind sliced out of the weights: the layers, units removed in each, and the config keys it changed."""

    kind: str
    layers: list[int]
    removed_per_layer: int
    config: dict[str, list[Any]]  # config key -> [before, after]
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class PruningRecord(Document):
    """What ``apply`` did (``pruning.json``); ``output_dir`` and ``validation`` are not in the file."""

    KIND: ClassVar[str] = PRUNING_KIND
    schema_version: int = 1
    kind: str = PRUNING_KIND
    created: str
    source: PrunedFrom
    output: PrunedOutput
    summary: PruningSummary
    parameters: ParameterCounts
    analysis: TotalsChange
    actions: list[ExecutedAction]
    sliced: list[SlicedUnits]
    notes: list[str]
    calibration: RunData | None  # the windows the criteria scored on (None: data-free criteria only)
    plan: Plan
    versions: dict[str, str]
    timings: dict[str, float] | None = _optional()
    extra: dict[str, Any] = _extra()
    output_dir: str | None = field(default=None, metadata={"runtime": True})
    validation: "ValidationReport | None" = field(default=None, metadata={"runtime": True})


def load_pruning_record(path: str | Path) -> PruningRecord:
    data = read_json(path, "pruning record", "pass --plan, or apply the plan again")
    if not isinstance(data, dict) or data.get("kind") != PRUNING_KIND or not isinstance(data.get("plan"), dict):
        raise PlanError(f"'{path}' is not a pruning record written by `ssm-profile apply`; pass --plan")
    validate_plan(data["plan"], where=f"the plan recorded in '{path}'")
    return parse_document(PruningRecord, data, f"pruning record '{path}'")


