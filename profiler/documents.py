"""The files that pass from one stage to the next, as typed objects: plan, pruning record, validation.

``plan.json`` (:class:`Plan`, written by ``ssm-profile plan``), ``pruning.json``
(:class:`PruningRecord`, written by ``apply``) and ``validation.json`` (:class:`ValidationReport`,
written by ``validate``). Each has ``to_dict``/``from_dict``; ``to_dict(from_dict(x)) == x`` for
every file the tool writes (unknown keys are kept in ``extra``), so the files stay exactly as they
were. The JSON Schema in ``profiler/schemas/plan.schema.json`` is the file contract and the only
validator of plan files (:func:`validate_plan`).

Torch-free: reports and the TUI read these files without loading a model.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field, fields
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, get_args, get_origin, get_type_hints

from . import __version__
from .base.errors import OutputExistsError, PlanError, SSMProfileError

PLAN_SCHEMA_VERSION = 1
PLAN_KIND = "ssm-profile-plan"
PRUNING_KIND = "ssm-profile-pruning"
VALIDATION_KIND = "ssm-profile-validation"
PRUNING_FILE = "pruning.json"
VALIDATION_FILE = "validation.json"
RECOVERY_KIND = "ssm-profile-recovery"
RECOVERY_FILE = "recovery.json"
LM_EVAL_LOG = "lm-eval.log"  # beside validation.json: what lm-eval and the tools it runs printed


# ============================================================================================
# the (de)serialisation shared by every document


def _key(f) -> str:
    return f.metadata.get("key", f.name)


def _optional(**kw: Any) -> Any:
    """A field left out of the JSON when it is None (an optional key of the file format)."""
    return field(default=None, metadata={"omit_none": True, **kw})


def _document_type(hint: Any) -> type | None:
    """The :class:`Document` class in ``hint`` (``X``, ``X | None``, ``list[X]``), if any."""
    if isinstance(hint, type) and issubclass(hint, Document):
        return hint
    for arg in get_args(hint):
        found = _document_type(arg)
        if found is not None:
            return found
    return None


def _load(hint: Any, value: Any) -> Any:
    doc = _document_type(hint)
    if value is None or doc is None:
        return copy.deepcopy(value)
    container = next((get_origin(a) for a in (hint, *get_args(hint)) if get_origin(a) in (list, dict)), None)
    if container is list:
        return [doc.from_dict(v) for v in value]
    if container is dict:
        return {k: doc.from_dict(v) for k, v in value.items()}
    return doc.from_dict(value)


def _dump(value: Any) -> Any:
    if isinstance(value, Document):
        return value.to_dict()
    if isinstance(value, list):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    return copy.deepcopy(value)


class Document:
    """Dataclass mixin: ``to_dict``/``from_dict`` by field (JSON key = ``metadata["key"]`` or the name)."""

    extra: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or f.metadata.get("runtime") or (value is None and f.metadata.get("omit_none")):
                continue
            out[_key(f)] = _dump(value)
        out.update(copy.deepcopy(self.extra))
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        hints = get_type_hints(cls)
        own = [f for f in fields(cls) if f.name != "extra" and not f.metadata.get("runtime")]
        kwargs = {f.name: _load(hints[f.name], data[_key(f)]) for f in own if _key(f) in data}
        known = {_key(f) for f in own}
        return cls(**kwargs, extra={k: copy.deepcopy(v) for k, v in data.items() if k not in known})


def _extra() -> Any:
    return field(default_factory=dict, repr=False)


# ============================================================================================
# the plan


@dataclass(kw_only=True)
class ModelOrigin(Document):
    """Where a model was loaded from, as the user named it (:class:`ssm_profile.model.resolve.ModelSource`)."""

    name: str = ""  # what the user typed
    kind: str = ""  # "embedded" | "local" | "local-mamba-ssm" | "hub"
    location: str = ""  # directory or repository id
    alias: str | None = None
    extra: dict[str, Any] = _extra()

    def load_name(self) -> str:
        """What :func:`ssm_profile.load_model` takes to load this model again: the folder it was read
        from when it was local, else the name the user typed (embedded name, alias, hub id)."""
        local = self.kind.startswith("local")
        return (self.location if local else "") or self.name


@dataclass(kw_only=True)
class PlanModel(Document):
    name: str
    source: ModelOrigin
    fingerprint: str
    architecture: str
    class_name: str = field(metadata={"key": "class"})
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class PlanRun(Document):
    """The profile run a plan came from and how it computed (what rebuilding its masks needs)."""

    path: str
    created: str
    fast_kernels: bool | None = _optional()  # absent in older plans: transformers' kernels
    batch_size: int | None = _optional()  # absent in older plans: the profiler's default (8)
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class PlanData(Document):
    """The run's data windows as :class:`ssm_profile.calibration.data.DataSpec` values (None = embedded text)."""

    calibration: str | None
    evaluation: str | None
    nsamples: int
    eval_samples: int
    seqlen: int
    seed: int
    verify_samples: int | None = _optional()  # absent in older plans: the default held-out tail
    extra: dict[str, Any] = _extra()

    def spec(self):
        from .calibration.data import DEFAULT_VERIFY_SAMPLES, DataSpec

        return DataSpec(calibration=self.calibration, evaluation=self.evaluation, nsamples=self.nsamples,
                        eval_samples=self.eval_samples, seqlen=self.seqlen, seed=self.seed,
                        verify_samples=self.verify_samples or DEFAULT_VERIFY_SAMPLES)


@dataclass(kw_only=True)
class Objective(Document):
    metric: str = field(metadata={"key": "target"})  # params | flops | state (the file's key is "target")
    ratio: float | None
    absolute: int | None
    max_ppl_increase: float
    scope: str | None = _optional()
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class Dense(Document):
    loss: float
    perplexity: float
    parameters: int
    flops_per_token: int
    state_bytes_per_sequence: int
    extra: dict[str, Any] = _extra()

    def total(self, metric: str) -> int:
        return {"params": self.parameters, "flops": self.flops_per_token,
                "state": self.state_bytes_per_sequence}[metric]


REMOVED_KEY = {"params": "params_removed", "flops": "flops_removed", "state": "state_bytes_removed"}


class _Removes:
    """``removed(metric)``: the ``params_removed`` / ``flops_removed`` / ``state_bytes_removed`` field."""

    def removed(self, metric: str) -> int:
        return getattr(self, REMOVED_KEY[metric])


@dataclass(kw_only=True)
class PlanAction(_Removes, Document):
    target: str  # a parameter group (in_proj) or a unit kind (unit:state)
    layers: list[int]
    structure: str
    criterion: str
    sparsity: float
    unit_kind: str | None
    unit_indices: dict[str, list[int]] | None
    params_removed: int
    flops_removed: int
    state_bytes_removed: int
    predicted_delta_loss: float
    execution: str = "zero"
    note: str = ""
    extra: dict[str, Any] = _extra()

    @property
    def is_units(self) -> bool:
        return self.target.startswith("unit:")


@dataclass(kw_only=True)
class Predicted(_Removes, Document):
    delta_loss: float
    rel_ppl_increase: float
    params_removed: int
    flops_removed: int
    state_bytes_removed: int
    scope_total: int | None = _optional()
    reduction_ratio: float
    reduction_ratio_model: float | None = _optional()
    # what each ratio is a share of, in words (ssm_profile.base.fmt.scope_name), e.g. "SSM-mixer params"
    reduction_of: str | None = _optional()
    reduction_model_of: str | None = _optional()
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class Measured(Document):
    loss: float
    delta_loss: float
    rel_ppl_increase: float
    within_tolerance: bool
    backoff_steps: int
    params_removed: int | None = _optional()
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class Increase(Document):
    """The relative perplexity increase of a model over its base on one set of windows, with the
    paired bootstrap 95% interval (windows resampled together for both): the one typed interval
    result of plans, validations and recoveries, and :meth:`phrase` the one place that words it."""

    dense_loss: float
    loss: float
    delta_loss: float
    rel_ppl_increase: float
    interval: list[float]  # [low, high] of rel_ppl_increase
    windows: int
    source: str | None = _optional()  # the windows' text, as described to people
    within_tolerance: bool | None = _optional()
    extra: dict[str, Any] = _extra()

    def phrase(self, windows: str = "verification windows") -> str:
        """``+8.9% (95% interval +7.6% to +10.3%) on 32 verification windows``."""
        lo, hi = self.interval
        return f"{self.rel_ppl_increase:+.1%} (95% interval {lo:+.1%} to {hi:+.1%}) on {self.windows} {windows}"


@dataclass(kw_only=True)
class Verification(Increase):
    """The plan's promise checked on the verification windows (never seen by the profile or the
    plan's selection)."""

    max_ppl_increase: float
    kept: bool  # rel_ppl_increase <= max_ppl_increase
    extra: dict[str, Any] = _extra()

    def sentence(self) -> str:
        """One line a user reads: the verified increase, its interval and whether the promise holds."""
        lo, hi = self.interval
        head = (f"verification ({self.windows} held-out windows): perplexity {self.rel_ppl_increase:+.1%} "
                f"(95% interval {lo:+.1%} to {hi:+.1%}) vs promised at most +{self.max_ppl_increase:.1%}")
        if not self.kept:
            return head + ": the promise is NOT kept on verification"
        if hi > self.max_ppl_increase:
            return head + ": kept, but the interval reaches beyond the tolerance"
        return head + ": kept"


@dataclass(kw_only=True)
class PlanRecover(Document):
    """Optional: the recovery the plan asks for after apply (``ssm-profile recover``'s budget)."""

    steps: int | None = _optional()
    minutes: float | None = _optional()
    lm_weight: float | None = _optional()
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class Plan(Document):
    """A pruning plan (``plan.json``); see :mod:`ssm_profile.plan`."""

    schema_version: int = PLAN_SCHEMA_VERSION
    kind: str = PLAN_KIND
    created: str
    tool_version: str = __version__
    model: PlanModel
    run: PlanRun
    data: PlanData
    objective: Objective
    dense: Dense
    actions: list[PlanAction]
    predicted: Predicted
    measured: Measured | None
    notes: list[str]
    verification: Verification | None = _optional()  # absent: not measured (--no-measure) or an older plan
    recover: PlanRecover | None = _optional()  # absent: no recovery asked for
    extra: dict[str, Any] = _extra()

    def source_model(self) -> str:
        """Where the plan's model was loaded from: its directory when local, else its name."""
        return self.model.source.load_name() or self.model.name

    def check_model(self, loaded: Any) -> None:
        """Refuse a model (a LoadedModel) with other weights than the plan was made for (one line)."""
        check_weights(self.model.fingerprint, loaded, "plan was made for", expected_name=self.model.name,
                      hint="make a plan for these weights with `ssm-profile profile` and `ssm-profile plan`")

    def validated(self, where: str = "the plan") -> "Plan":
        validate_plan(self.to_dict(), where)
        return self


# ============================================================================================
# plan files: the schema is the only validator


@lru_cache(maxsize=1)
def plan_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of plan files."""
    text = (resources.files("ssm_profile") / "schemas" / "plan.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def _json_path(parts: Sequence[Any]) -> str:
    out = "$"
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(p)):
            out += f".{p}"
        else:
            out += f"[{json.dumps(str(p))}]"
    return out


def one_line(text: str, limit: int = 200) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def validate_plan(plan: Any, where: str = "plan") -> None:
    """Raise a one-line :class:`PlanError` unless ``plan`` (a dict) is a valid plan of this version."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    if not isinstance(plan, dict):
        raise PlanError(f"{where} is not a plan: expected a JSON object, got {type(plan).__name__}")
    if plan.get("kind") != PLAN_KIND and "kind" in plan:
        raise PlanError(f"{where} is not an ssm-profile plan (kind {plan.get('kind')!r}, expected {PLAN_KIND!r})")
    version = plan.get("schema_version")
    if version != PLAN_SCHEMA_VERSION:
        raise PlanError(f"{where} has unsupported schema_version {json.dumps(version)}; this ssm-profile "
                        f"({__version__}) reads version {PLAN_SCHEMA_VERSION}: make the plan again with "
                        "`ssm-profile plan`")
    error = best_match(Draft202012Validator(plan_schema()).iter_errors(plan))
    if error is not None:
        raise PlanError(f"{where} does not match the plan schema at {_json_path(error.absolute_path)}: "
                        f"{one_line(error.message)}")


def as_plan(plan: Plan | dict[str, Any], where: str = "the plan") -> Plan:
    """``plan`` as a validated :class:`Plan` (a dict is checked against the schema first)."""
    if isinstance(plan, Plan):
        return plan
    validate_plan(plan, where)
    return Plan.from_dict(plan)


# A plan lists a few dozen actions (kilobytes); apply copies it whole into pruning.json.
PLAN_LIMIT = 32 << 20


def read_json(path: str | Path, what: str, hint: str, error: type[Exception] = PlanError,
              max_bytes: int | None = None) -> Any:
    """The JSON value in ``path`` (a bounded read of a regular file, at most ``max_bytes``, default
    the safe_read JSON limit); every problem is one line of ``error`` ending with ``hint``."""
    from .base.safe_read import JSON_LIMIT, read_user_json

    try:
        return read_user_json(path, f"{what} file", max_bytes or JSON_LIMIT, error=error)
    except error as err:
        raise error(f"{err}; {hint}") from None


def load_plan(path: str | Path) -> Plan:
    """Read and validate a plan file; every problem is a one-line :class:`PlanError`."""
    data = read_json(path, "plan", f"make one with `ssm-profile plan RUN_DIR -o {path}`", max_bytes=PLAN_LIMIT)
    return as_plan(data, where=f"plan file '{path}'")


def write_plan(plan: Plan, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``plan`` atomically (indent 2); refuses to replace an existing file unless ``overwrite``."""
    from .base.io import write_json_atomic

    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"'{path}' already exists; choose another -o or pass --overwrite")
    return write_json_atomic(path, plan.to_dict())


def short_fingerprint(fingerprint: str | None) -> str:
    if not fingerprint:
        return "unknown weights"
    algo, _, digest = str(fingerprint).partition(":")
    return f"{algo}:{digest[:12]}…" if digest else str(fingerprint)[:16]


def check_weights(expected: str | None, loaded: Any, what: str, hint: str = "", expected_name: str = "",
                  error: type[Exception] = PlanError) -> None:
    """Raise a one-line ``error`` unless ``loaded`` (a LoadedModel) holds the weights ``expected``.

    ``what`` names what expected them (``"plan was made for"``, ``"the run profiled"``); ``hint``
    says what to do instead.
    """
    have = loaded.fingerprint
    if expected == have:
        return
    name = f"{expected_name} " if expected_name else ""
    raise error(f"{what} {name}({short_fingerprint(expected)}), this model is {loaded.source.name} "
                f"({short_fingerprint(have)}): other weights" + (f"; {hint}" if hint else ""))


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
    requested: str  # the plan's execution ("slice" | "zero")
    execution: str  # what was done: a slice the config cannot express is done as zeros
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
class PruningRecord(Document):
    """What ``apply`` did (``pruning.json``); ``output_dir`` and ``validation`` are not in the file."""

    KIND: ClassVar[str] = PRUNING_KIND
    schema_version: int = 1
    kind: str = PRUNING_KIND
    created: str
    source: dict[str, Any]
    output: dict[str, Any]
    summary: PruningSummary
    parameters: ParameterCounts
    analysis: dict[str, dict[str, int]]  # "before"/"after": the static analysis' totals
    actions: list[ExecutedAction]
    sliced: list[dict[str, Any]]
    notes: list[str]
    calibration: dict[str, Any] | None
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


@dataclass(kw_only=True)
class ModelRef(Document):
    """A model a validation compared: its name, where it was read from, its weights' fingerprint."""

    name: str
    location: str
    fingerprint: str
    directory: str | None = None
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
class ValidationReport(Document):
    """Base vs pruned model, measured the same way (``validation.json``); see :mod:`ssm_profile.validation.validate`."""

    schema_version: int = 1
    kind: str = VALIDATION_KIND
    created: str
    models: dict[str, ModelRef]  # "base", "pruned"
    plan: dict[str, Any] | None
    data: dict[str, Any]
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
    # which forward each mixer class ran, counted per call (ssm_profile.mixers.usage); absent in older files
    mixer_forwards: dict[str, Any] | None = _optional()
    extra: dict[str, Any] = _extra()


def load_validation(path: str | Path) -> ValidationReport:
    """Read a ``validation.json`` written by ``ssm-profile validate``; every problem is one line."""
    data = read_json(path, "validation", "make one with `ssm-profile validate MODEL PRUNED_DIR`",
                     error=SSMProfileError)
    if not isinstance(data, dict) or data.get("kind") != VALIDATION_KIND:
        raise SSMProfileError(f"'{path}' is not a validation written by `ssm-profile validate` "
                              f"(kind {data.get('kind') if isinstance(data, dict) else None!r}, expected "
                              f"{VALIDATION_KIND!r})")
    return parse_document(ValidationReport, data, f"validation file '{path}'")


@dataclass(kw_only=True)
class RecoveryCheck(Document):
    """The student measured against its teacher, before or after recovery."""

    verification: Increase
    lm_eval: dict[str, dict[str, float]] = field(default_factory=dict)  # task -> metric -> score
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class Teacher(Document):
    name: str
    location: str
    fingerprint: str
    source_model: bool  # the model the pruned one was cut from (else a stand-in the user named)
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class RecoveryData(Document):
    training: str  # the training text, as described to people
    training_tokens: int
    seqlen: int
    verification: str | None  # the held-out windows' text
    verification_windows: int
    overlap_check_span: int | None = None
    shared_spans: int = 0
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class RecoveryProgress(Document):
    steps_done: int
    total_steps: int | None
    train_seconds: float
    seconds: float
    train_cpu_seconds: float | None = _optional()  # this process's CPU time; absent in older files
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class CurvePoint(Document):
    """One step of distillation; ``verification_loss`` at the periodic checks (step 0: before training)."""

    step: int
    kd_loss: float | None = None
    lm_loss: float | None = None
    lr: float | None = None
    verification_loss: float | None = _optional()
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class Sparsity(Document):
    nonzero_before: int
    nonzero_after: int
    frozen_entries: int  # pruned entries held at zero during training
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class RecoveryOutput(Document):
    fingerprint: str | None = None
    files: list[str] = field(default_factory=list)
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class RecoveryRecord(Document):
    """What ``ssm-profile recover`` did (``recovery.json``): distillation settings, the loss curve
    (``curve``: ``{"step", "kd_loss", "lm_loss", "lr"}`` every step, plus ``verification_loss`` at
    the periodic checks) and the verification perplexity (and offline tasks) before and after."""

    schema_version: int = 1
    kind: str = RECOVERY_KIND
    created: str
    pruned: dict[str, Any]
    teacher: Teacher
    output: RecoveryOutput
    settings: dict[str, Any]
    data: RecoveryData
    kernels: dict[str, Any]
    world: dict[str, Any]  # {"size": processes, "rank_weights": each rank's final weight fingerprint}
    progress: RecoveryProgress
    curve: list[CurvePoint]
    before: RecoveryCheck
    after: RecoveryCheck
    sparsity: Sparsity
    notes: list[str]
    versions: dict[str, str]
    teacher_scores: dict[str, Any] | None = _optional()  # the teacher's own lm-eval scores
    extra: dict[str, Any] = _extra()

    def recovered_fraction(self) -> float | None:
        """Share of the pruning's verification perplexity increase that recovery removed (1 = all)."""
        before = self.before.verification.rel_ppl_increase
        after = self.after.verification.rel_ppl_increase
        return None if before <= 0 else 1.0 - after / before

    def verification_points(self) -> list[tuple[int, float]]:
        """(step, verification loss) of the periodic checks (step 0: before training)."""
        return [(p.step, float(p.verification_loss)) for p in self.curve if p.verification_loss is not None]


def load_recovery(path: str | Path) -> RecoveryRecord:
    """Read a ``recovery.json`` written by ``ssm-profile recover``; every problem is one line."""
    data = read_json(path, "recovery", "make one with `ssm-profile recover PRUNED_DIR -o OUT_DIR`",
                     error=SSMProfileError)
    if not isinstance(data, dict) or data.get("kind") != RECOVERY_KIND:
        raise SSMProfileError(f"'{path}' is not a recovery record written by `ssm-profile recover`")
    return parse_document(RecoveryRecord, data, f"recovery file '{path}'")


def parse_document(cls: type, data: dict[str, Any], where: str) -> Any:
    """``cls.from_dict(data)``, or one line naming the keys ``data`` lacks."""
    required = [_key(f) for f in fields(cls) if f.name != "extra" and not f.metadata.get("runtime")
                and f.default is MISSING and f.default_factory is MISSING]
    missing = [key for key in required if key not in data]
    if missing:
        raise SSMProfileError(f"{where} lacks {', '.join(missing)}; write it again with this ssm-profile ({__version__})")
    return cls.from_dict(data)
