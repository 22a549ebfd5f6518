"""``plan.json``: the plan a profile run's results allow, typed (:class:`Plan`), and the one way to read it."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from .. import __version__
from ..base.errors import OutputExistsError, PlanError
from ._base import PLAN_KIND, PLAN_SCHEMA_VERSION, Document, DocumentTypeError, _extra, _optional


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
        from ..calibration.data import DEFAULT_VERIFY_SAMPLES, DataSpec

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


LAYERS = "layers"  # the structure of a whole-layer removal (target "layer", execution "remove")
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

    @property
    def is_layer(self) -> bool:
        """A whole decoder layer removed (``--structures layers``)."""
        return self.structure == LAYERS


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
    # parameters the sliced actions remove together (overlaps once); absent in older plans
    params_sliced: int | None = _optional()
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

    def interval_text(self) -> str:
        """``95% interval +7.6% to +10.3%``."""
        lo, hi = self.interval
        return f"95% interval {lo:+.1%} to {hi:+.1%}"

    def phrase(self, windows: str = "verification windows") -> str:
        """``+8.9% (95% interval +7.6% to +10.3%) on 32 verification windows``."""
        return f"{self.rel_ppl_increase:+.1%} ({self.interval_text()}) on {self.windows} {windows}"


@dataclass(kw_only=True)
class Verification(Increase):
    """The plan's promise checked on the verification windows (never seen by the profile or the
    plan's selection)."""

    max_ppl_increase: float
    kept: bool  # rel_ppl_increase <= max_ppl_increase
    extra: dict[str, Any] = _extra()

    def sentence(self) -> str:
        """One line a user reads: the verified increase, its interval and whether the promise holds."""
        head = (f"verification ({self.windows} held-out windows): perplexity {self.rel_ppl_increase:+.1%} "
                f"({self.interval_text()}) vs promised at most +{self.max_ppl_increase:.1%}")
        if not self.kept:
            return head + ": the promise is NOT kept on verification"
        if self.interval[1] > self.max_ppl_increase:
            return head + ": kept, but the interval reaches beyond the tolerance"
        return head + ": kept"


@dataclass(kw_only=True)
class Certification(Document):
    """How the plan was accepted on the search windows before verification saw it: the rule, the
    increase it measured there and the bound the rule compared with the tolerance. Absent in plans
    from before the rule: those were accepted on the search windows' mean increase."""

    rule: str  # "prediction-bound" (CERTIFICATION_RULES) | "mean" (older plans' rule, spelled out)
    level: float | None  # one-sided confidence of the bound (None for "mean")
    windows: int  # search windows measured
    unseen_windows: int | None  # the windows the bound predicts (the verification count)
    increase: float  # mean relative perplexity increase on the search windows
    bound: float  # what was compared with max_ppl_increase
    max_ppl_increase: float
    certified: bool  # bound <= max_ppl_increase
    why: str  # one sentence: why this rule (what it guards against)
    extra: dict[str, Any] = _extra()

    @property
    def margin(self) -> float:
        """How far the bound sits above the search windows' mean increase (percentage points / 100)."""
        return self.bound - self.increase

    def sentence(self) -> str:
        """``certified on 16 search windows: +6.1%, one-sided 95% prediction bound for 32 unseen windows
        +8.7% (margin 2.6 points), within the promised +10.0%``."""
        if self.rule == "mean":
            what = f"mean increase {self.increase:+.1%}"
        else:
            level = f"{self.level:.0%} " if self.level is not None else ""
            what = (f"{self.increase:+.1%}, one-sided {level}prediction bound for {self.unseen_windows} unseen "
                    f"windows {self.bound:+.1%} (margin {100 * self.margin:.1f} points)")
        head = "certified" if self.certified else "NOT certified"
        verdict = "within" if self.certified else "above"
        return f"{head} on {self.windows} search windows: {what}, {verdict} the promised +{self.max_ppl_increase:.1%}"


@dataclass(kw_only=True)
class DomainCheck(Document):
    """Another text the promise must hold on too (``plan --also-on``). Its first windows take part in
    certifying the plan, exactly as the search windows do; its last windows, which no step saw, check
    the promise after selection, as verification does."""

    source: str  # the text as the user named it
    certification: Certification  # on the text's first windows (a plan is accepted only if every one holds)
    verification: Verification | None = _optional()  # on the text's last windows (absent: not measured)
    # sha256 of those held-out windows' token ids (calibration.windows_digest): validate measures them
    # again and refuses a text that changed since; absent in plans from before it was recorded
    held_out_digest: str | None = _optional()
    extra: dict[str, Any] = _extra()

    @property
    def kept(self) -> bool:
        return self.verification is None or self.verification.kept

    def sentence(self) -> str:
        """``also on prose.txt: certified on 16 windows ... ; verification (17 held-out windows): ...``"""
        head = f"also on {self.source}: " + self.certification.sentence().replace("search windows", "of its windows")
        return head if self.verification is None else f"{head}; {self.verification.sentence()}"


OLD_CERTIFICATION_RULE = "mean"  # what a plan without `certification` was accepted on


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
    # absent: not measured, or an older plan (accepted on the search windows' mean: OLD_CERTIFICATION_RULE)
    certification: Certification | None = _optional()
    recover: PlanRecover | None = _optional()  # absent: no recovery asked for
    # other texts the promise must hold on too (`plan --also-on`); absent: none asked for
    domains: list[DomainCheck] | None = _optional()
    # sha256 of the actions as written (write_plan): apply refuses a plan edited since; absent in older plans
    actions_digest: str | None = _optional()
    extra: dict[str, Any] = _extra()

    @property
    def promise_kept(self) -> bool | None:
        """Whether every verification (the plan's own and each ``--also-on`` text's) keeps the promise;
        None when the plan was not verified."""
        if self.verification is None:
            return None
        return all(check.kept for _, check in self.held_out_checks())

    def held_out_checks(self) -> list[tuple[str | None, Verification]]:
        """Each check of the promise on held-out windows: (None, the plan's verification), then (source,
        each ``--also-on`` text's), for the measured ones."""
        checks = [(None, self.verification)] if self.verification is not None else []
        return checks + [(d.source, d.verification) for d in self.domains or [] if d.verification is not None]

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
    bad = _non_finite(plan)  # the schema's bounds let NaN through (every comparison with it is false)
    if bad is not None:
        raise PlanError(f"{where} has a non-finite number at {_json_path(bad)}; make the plan again with "
                        "`ssm-profile plan`")
    error = best_match(Draft202012Validator(plan_schema()).iter_errors(plan))
    if error is not None:
        raise PlanError(f"{where} does not match the plan schema at {_json_path(error.absolute_path)}: "
                        f"{one_line(error.message)}")
    _check_actions(plan["actions"], where)


def _non_finite(value: Any, path: tuple = ()) -> tuple | None:
    """The JSON path of the first NaN or infinity in ``value``, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return path
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _non_finite(item, (*path, key))
        if found is not None:
            return found
    return None


def _check_actions(actions: list[dict[str, Any]], where: str) -> None:
    """Actions that agree with themselves: a unit target cuts its own unit kind (``unit:state`` with
    ``unit_kind: channel`` cut channels while pruning.json recorded a state cut), and no target and
    layer is cut twice (a duplicated action)."""
    seen: dict[tuple[str, int], int] = {}
    for i, action in enumerate(actions):
        target, kind = action["target"], action["unit_kind"]
        expected = target[len("unit:"):] if target.startswith("unit:") else None
        if kind != expected:
            raise PlanError(f"{where} action {i} ({target}) says unit_kind {json.dumps(kind)}, which does not match "
                            f"its target (expected {json.dumps(expected)}); make the plan again with "
                            "`ssm-profile plan`")
        for layer in action["layers"]:
            first = seen.setdefault((target, layer), i)
            if first != i:
                raise PlanError(f"{where} actions {first} and {i} both cut {target} in layer {layer} (a duplicated "
                                "action); make the plan again with `ssm-profile plan`")


def actions_digest(plan: Plan) -> str:
    """``sha256:...`` of the plan's actions as JSON (keys sorted): what apply checks the file against."""
    text = json.dumps([a.to_dict() for a in plan.actions], sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def check_not_edited(plan: Plan, where: str, allow: bool = False) -> str | None:
    """Refuse a plan whose actions changed since ``plan`` wrote them (a hand-edited sparsity zeroed
    124,520 weights where the plan said 78,644) unless ``allow``; a note for a plan without a digest."""
    if plan.actions_digest is None:
        return f"{where} carries no digest of its actions (an older plan): whether it was edited cannot be told"
    if plan.actions_digest == actions_digest(plan):
        return None
    if allow:
        return f"{where} was edited after `ssm-profile plan` wrote it; applying it as edited (--allow-edited-plan)"
    raise PlanError(f"{where} was edited after `ssm-profile plan` wrote it (its actions no longer match their digest); "
                    "make the plan again, or pass --allow-edited-plan to apply it as edited")


def check_promise_kept(plan: Plan, where: str, allow: bool = False,
                       override: str = "pass --allow-broken-promise to apply it anyway") -> str | None:
    """Refuse a plan whose promise broke at plan time (on its verification windows or an ``--also-on``
    text's held-out windows: ``Plan.promise_kept`` is False) unless ``allow``, then a note. ``override``:
    how the caller's user applies it anyway."""
    if plan.promise_kept is not False:
        return None
    broke = " and ".join(f"{v.rel_ppl_increase:+.1%} on its {v.windows} "
                         + ("verification windows" if source is None else f"held-out windows of {source}")
                         for source, v in plan.held_out_checks() if not v.kept)
    said = f"{where} broke its promise of at most +{plan.objective.max_ppl_increase:.1%} when it was made ({broke})"
    if allow:
        return f"{said}; applying it anyway (--allow-broken-promise)"
    raise PlanError(f"{said}; plan again with a smaller ratio or a larger tolerance, or {override}")


def as_plan(plan: Plan | dict[str, Any], where: str = "the plan") -> Plan:
    """``plan`` as a validated :class:`Plan` (a dict is checked against the schema first)."""
    if isinstance(plan, Plan):
        return plan
    validate_plan(plan, where)
    try:
        return Plan.from_dict(plan)
    except DocumentTypeError as err:  # what the schema lets through (a whole number written 3.0 is fine)
        raise PlanError(f"{where}: {err}; make the plan again with `ssm-profile plan`") from None


# A plan lists a few dozen actions (kilobytes); apply copies it whole into pruning.json.
PLAN_LIMIT = 32 << 20


def read_json(path: str | Path, what: str, hint: str, error: type[Exception] = PlanError,
              max_bytes: int | None = None) -> Any:
    """The JSON value in ``path`` (a bounded read of a regular file, at most ``max_bytes``, default
    the safe_read JSON limit); every problem is one line of ``error`` ending with ``hint``."""
    from ..base.safe_read import JSON_LIMIT, read_user_json

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
    from ..base.io import write_json_atomic

    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"'{path}' already exists; choose another -o or pass --overwrite")
    plan.actions_digest = actions_digest(plan)
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


