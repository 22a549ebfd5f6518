"""Pruning plans: from a profile run to the cheapest set of cuts that meets a budget, measured.

``make_plan`` turns a :class:`ssm_profile.results.ProfileResult` into a plan (a JSON-ready dict,
format ``PLAN_SCHEMA_VERSION``, schema in ``profiler/schemas/plan.schema.json``):

1. **Options.** For every target of the run's model-wide sweep (a parameter group such as
   ``in_proj`` or a unit kind such as ``unit:state``): level 0 (untouched) and each measured
   sparsity, with the best criterion at that level (lowest measured ΔL; ``random`` only when
   asked for by name) or the user's criterion where it was measured. Cost = the measured
   single-target ΔL, negatives clipped to 0. Gain = what the cut removes of the chosen metric:

   * ``params``: zeroed elements (unstructured, N:M) or ``params_per_unit x units x layers``;
   * ``flops`` (dense FLOPs per token, :mod:`ssm_profile.analysis` conventions): structured cuts
     only, measured by slicing the units out of a shape-only (meta-device) copy of the model;
     unstructured and N:M zeros give 0;
   * ``state`` (recurrent-state bytes per sequence): state/head/channel unit cuts only, likewise.

   Two targets may cut the same tensors (``in_proj`` zeros and ``unit:channel`` rows); their
   joint gain is less than the sum. The overlap of every pair of options is estimated (exactly
   for two unit cuts, by slicing both on the meta model; for zeros vs units assuming the zeros
   fall independently of the units) and enters the MILP below through pair variables.
2. **Solve** a multiple-choice knapsack exactly (``scipy.optimize.milp``): binary ``x[t,l]``,
   one level per target. Without a budget: maximise the reduction s.t. ``Σ cost <= ln(1 + tol)``.
   With ``ratio``/``absolute``: minimise ``Σ cost`` s.t. reduction >= budget and
   ``Σ cost <= ln(1 + tol)``; infeasible -> :class:`PlanError` naming the best reachable point.
   Among equally good solutions a second solve picks the least risky one (least sum of the upper
   95% bootstrap bounds of ΔL): clipped noise-level costs are often all 0. Predicted additivity of ΔL is an approximation, hence step 3.
3. **Measure** (unless ``measure=False``): load the run's model (same weights fingerprint), build
   the combined masks exactly as the profile did (same data spec, calibration statistics and
   evaluation windows; unit indices from the run's stored unit scores) and measure held-out loss
   against the dense model. Parameter overlaps of the chosen actions are first counted exactly
   from their masks (re-solving if that changes the choice; pairwise inclusion-exclusion is then a
   lower bound of what the plan removes). Above tolerance: back off up to ``MAX_BACKOFF`` steps:
   measure the plan without each of its actions, raise each action's cost to its marginal loss in
   the combination, shrink the loss budget (x0.7), exclude the failed plan and every plan at least
   as aggressive in all of its targets, re-solve and measure again. The answer is the best measured
   plan within tolerance (and budget); none -> :class:`PlanError` with the best measured point.

``load_plan`` reads and validates a plan file; ``check_plan_for_model`` refuses other weights.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .errors import PlanError, SSMProfileError
from .results import ProfileResult

PLAN_SCHEMA_VERSION = 1
PLAN_KIND = "ssm-profile-plan"
METRICS = ("params", "flops", "state")
DEFAULT_MAX_PPL_INCREASE = 0.10
MAX_BACKOFF = 8
BACKOFF_LOSS_FACTOR = 0.7  # each back-off step shrinks the loss budget by this factor
UNIT_KINDS = ("channel", "state", "dt_rank", "head", "head_channel")
_NM_RE = re.compile(r"^(\d+):(\d+)$")
_OBJ_SCALE = 1e6  # MILP objectives are scaled so that HiGHS' absolute gap (1e-6) is negligible

Progress = Callable[[int, int, str], None]


# ============================================================================================
# plan files


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


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def validate_plan(plan: Any, where: str = "plan") -> None:
    """Raise a one-line :class:`PlanError` unless ``plan`` is a valid plan of this version."""
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
                        f"{_one_line(error.message)}")


def load_plan(path: str | Path) -> dict[str, Any]:
    """Read and validate a plan file; every problem is a one-line :class:`PlanError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlanError(f"plan file '{path}' does not exist; make one with `ssm-profile plan RUN_DIR -o {path}`") \
            from None
    except IsADirectoryError:
        raise PlanError(f"plan '{path}' is a directory, not a plan file") from None
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__
        raise PlanError(f"cannot read plan file '{path}': {reason}") from None
    try:
        plan = json.loads(text)
    except json.JSONDecodeError as err:
        raise PlanError(f"plan file '{path}' is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") \
            from None
    validate_plan(plan, where=f"plan file '{path}'")
    return plan


def _short(fingerprint: str | None) -> str:
    if not fingerprint:
        return "unknown weights"
    algo, _, digest = str(fingerprint).partition(":")
    return f"{algo}:{digest[:12]}…" if digest else str(fingerprint)[:16]


def check_plan_for_model(plan: Mapping[str, Any], loaded: Any) -> None:
    """Raise :class:`PlanError` unless ``loaded`` holds exactly the weights the plan was made for."""
    want = plan.get("model", {}).get("fingerprint")
    have = loaded.fingerprint
    if want != have:
        name = plan.get("model", {}).get("name", "?")
        raise PlanError(f"plan was made for {name} ({_short(want)}), this model is {loaded.source.name} "
                        f"({_short(have)}); make a plan for these weights with `ssm-profile profile` and "
                        "`ssm-profile plan`")


# ============================================================================================
# data spec


def data_spec_from_meta(data: Mapping[str, Any]):
    """The :class:`ssm_profile.data.DataSpec` that reproduces a run's (or a plan's) data windows.

    Accepts both a run's ``run.json`` ``data`` (source descriptions such as
    ``embedded:calibration.txt`` or ``file.txt [first 80%]``) and a plan's ``data``
    (the DataSpec values themselves, ``null`` = embedded).
    """
    from .data import DataSpec

    def source(value: Any) -> str | None:
        if value is None:
            return None
        value = str(value)
        if value.startswith("embedded:"):
            return None
        return re.sub(r" \[(first 80|last 20)%\]$", "", value)

    cal, ev = source(data.get("calibration")), source(data.get("evaluation"))
    if cal is not None and cal == ev:
        ev = None  # one source split 80/20, as the run did
    return DataSpec(calibration=cal, evaluation=ev, nsamples=int(data["nsamples"]),
                    eval_samples=int(data["eval_samples"]), seqlen=int(data["seqlen"]), seed=int(data.get("seed", 0)))


def _plan_data(meta_data: Mapping[str, Any]) -> dict[str, Any]:
    spec = data_spec_from_meta(meta_data)
    return {"calibration": spec.calibration, "evaluation": spec.evaluation, "nsamples": spec.nsamples,
            "eval_samples": spec.eval_samples, "seqlen": spec.seqlen, "seed": spec.seed}


# ============================================================================================
# the exact solver


def solve_mckp(gains: Sequence[Sequence[float]], costs: Sequence[Sequence[float]], *, cap: float,
               budget: float | None = None, overlaps: Mapping[tuple[tuple[int, int], tuple[int, int]], float] | None
               = None, gain_ceiling: float | None = None, cuts: Sequence[Mapping[int, int]] = (),
               risks: Sequence[Sequence[float]] | None = None) -> list[int] | None:
    """Multiple-choice knapsack as a MILP; returns the chosen level of each target, or None if infeasible.

    ``gains[t][l]``/``costs[t][l]``: reduction and loss cost of level ``l`` of target ``t``.
    ``overlaps[((t1, l1), (t2, l2))]``: reduction counted twice when both are chosen (subtracted).
    Net reduction ``R = Σ g x - Σ o y`` with ``y = x1 AND x2`` (linearised).

    * ``budget is None``: maximise ``R`` s.t. ``Σ c x <= cap``;
    * else: minimise ``Σ c x`` s.t. ``R >= budget`` and ``Σ c x <= cap``.

    Among optimal solutions (a second, lexicographic solve) the one with the least ``Σ risk``
    wins (default: least cost when maximising, least ``R`` when minimising).
    ``gain_ceiling`` adds ``R <= gain_ceiling``; each cut ``{t: l}`` excludes every choice with
    level ``>= l`` in all of its targets (levels must be ordered from least to most aggressive).
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_matrix

    overlaps = {k: v for k, v in (overlaps or {}).items() if v}
    index: dict[tuple[int, int], int] = {}
    for t, row in enumerate(gains):
        if len(row) != len(costs[t]) or not row:
            raise ValueError(f"target {t}: gains and costs need the same, non-zero number of levels")
        for l in range(len(row)):
            index[(t, l)] = len(index)
    pairs = list(overlaps)
    nx, n = len(index), len(index) + len(pairs)
    scale = max(1.0, abs(budget or 0.0), sum(max(abs(v) for v in row) for row in gains))
    g = np.zeros(n)  # net-reduction coefficients, normalised
    c = np.zeros(n)
    r = np.zeros(n)
    for (t, l), i in index.items():
        g[i] = gains[t][l] / scale
        c[i] = costs[t][l]
        r[i] = risks[t][l] if risks is not None else 0.0
    for j, pair in enumerate(pairs):
        g[nx + j] = -overlaps[pair] / scale

    rows: list[tuple[np.ndarray | dict[int, float], float, float]] = []
    for t, row in enumerate(gains):
        rows.append(({index[(t, l)]: 1.0 for l in range(len(row))}, 1.0, 1.0))
    rows.append((c, -np.inf, cap))
    if budget is not None:
        rows.append((g, budget / scale, np.inf))
    if gain_ceiling is not None:
        rows.append((g, -np.inf, gain_ceiling / scale))
    for j, (a, b) in enumerate(pairs):
        ia, ib, iy = index[a], index[b], nx + j
        rows.append(({ia: 1.0, ib: 1.0, iy: -1.0}, -np.inf, 1.0))
        rows.append(({iy: 1.0, ia: -1.0}, -np.inf, 0.0))
        rows.append(({iy: 1.0, ib: -1.0}, -np.inf, 0.0))
    for cut in cuts:
        coeffs = {index[(t, l2)]: 1.0 for t, l in cut.items() for l2 in range(l, len(gains[t]))}
        rows.append((coeffs, -np.inf, len(cut) - 1.0))

    def run(objective: np.ndarray, extra: list) -> Any:
        all_rows = rows + extra
        matrix = np.zeros((len(all_rows), n))
        lo, hi = np.empty(len(all_rows)), np.empty(len(all_rows))
        for k, (coeffs, low, high) in enumerate(all_rows):
            if isinstance(coeffs, dict):
                for i, v in coeffs.items():
                    matrix[k, i] = v
            else:
                matrix[k] = coeffs
            lo[k], hi[k] = low, high
        res = milp(objective, constraints=LinearConstraint(csr_matrix(matrix), lo, hi), integrality=np.ones(n),
                   bounds=Bounds(0, 1), options={"mip_rel_gap": 1e-9, "presolve": True})
        if res.status == 2:
            return None
        if res.x is None:
            raise PlanError(f"the MILP solver stopped without a solution ({_one_line(res.message)})")
        return res

    # HiGHS stops at an absolute gap of 1e-6: scale objectives so that differences that matter are far larger.
    primary = (-g if budget is None else c) * _OBJ_SCALE
    first = run(primary, [])
    if first is None:
        return None
    if risks is not None:
        secondary = r
    else:
        secondary = c if budget is None else g
    optimum = float(primary @ first.x)
    second = run(secondary * _OBJ_SCALE, [(primary, -np.inf, optimum + 1e-4 + 1e-9 * abs(optimum))])
    x = np.round((second if second is not None else first).x[:nx]).astype(int)
    return [next(l for l in range(len(row)) if x[index[(t, l)]]) for t, row in enumerate(gains)]


def net_gain(choice: Sequence[int], gains: Sequence[Sequence[float]],
             overlaps: Mapping[tuple[tuple[int, int], tuple[int, int]], float] | None = None) -> float:
    total = sum(gains[t][l] for t, l in enumerate(choice))
    for ((t1, l1), (t2, l2)), o in (overlaps or {}).items():
        if choice[t1] == l1 and choice[t2] == l2:
            total -= o
    return total


# ============================================================================================
# options


@dataclass
class Option:
    """One level of one target: what it costs (measured ΔL) and removes."""

    target: str
    sparsity: float
    structure: str  # "unstructured" | "N:M" | "units" ("none" for level 0)
    criterion: str | None
    delta_loss: float  # measured single-target ΔL (may be negative: noise)
    rel_ppl_increase: float
    risk: float = 0.0  # upper end of the 95% bootstrap interval of ΔL, clipped at 0 (tie-breaker)
    params: int = 0
    flops: int = 0
    state: int = 0
    removed: dict[str, float] = field(default_factory=dict)  # full param name -> elements removed
    unit_kind: str | None = None
    per_block: dict[int, int] = field(default_factory=dict)  # layer -> units removed per block
    unit_indices: dict[str, list[int]] | None = None
    layers: list[int] = field(default_factory=list)

    @property
    def cost(self) -> float:
        return max(0.0, self.delta_loss)

    def gain(self, metric: str) -> int:
        return {"params": self.params, "flops": self.flops, "state": self.state}[metric]


SCOPES = ("ssm", "model")


def _metric_total(result: ProfileResult, metric: str, scope: str = "model") -> int:
    """The metric's total over the whole model, or over the SSM mixers (what plans can cut).

    ``scope="ssm"`` matches how the literature states sparsity ("50% of the SSM module") and keeps
    ratios meaningful on small models whose embeddings dominate the parameter count."""
    keys = {"params": ("parameters", "ssm_parameters"), "flops": ("flops_per_token", "ssm_flops_per_token"),
            "state": ("state_bytes_per_sequence", "state_bytes_per_sequence")}[metric]
    return int(result.analysis.totals.get(keys[scope == "ssm"], 0))


def _scope_words(metric: str, scope: str) -> str:
    return f"SSM-mixer {metric}" if scope == "ssm" else f"the model's {metric}"


def parse_structures(structures: str | Sequence[str] | None) -> list[str] | None:
    if structures is None:
        return None
    items = [s.strip() for s in (structures.split(",") if isinstance(structures, str) else structures) if s.strip()]
    for s in items:
        m = _NM_RE.match(s)
        if s not in ("unstructured", "units") and not (m and 0 < int(m.group(1)) < int(m.group(2))):
            raise PlanError(f"unknown structure '{s}'; use unstructured, units or N:M such as 2:4")
    if not items:
        raise PlanError("--structures is empty; use e.g. unstructured,2:4,units")
    return items


class _Shapes:
    """Shape-only (meta-device) copy of the run's model: unit families, sliced sizes, expressibility."""

    def __init__(self, result: ProfileResult, loaded: Any = None):
        self.result = result
        self.model = None
        self.problem = ""
        self._effects: dict[tuple, dict[str, Any]] = {}
        try:
            self.model = self._build(result, loaded)
        except Exception as err:  # noqa: BLE001 - any failure just means the analytic fallback
            self.problem = _one_line(f"{type(err).__name__}: {err}", 120)
        self.numel = {}
        for g in result.analysis.mixer_groups():
            for name, shape in zip(g.params, g.shapes):
                self.numel[name] = int(np.prod(shape)) if shape else 1

    @staticmethod
    def _build(result: ProfileResult, loaded: Any):
        import torch
        import transformers

        from .arch import find_mixers

        if loaded is not None and getattr(loaded.model, "config", None) is not None:
            cls, config = type(loaded.model), copy.deepcopy(loaded.model.config)
        else:
            model_meta = result.meta["model"]
            cls = getattr(transformers, model_meta["class"])
            config = cls.config_class.from_dict(dict(model_meta["config"]))
        with torch.device("meta"):
            model = cls(config)
        if not find_mixers(model):
            raise ValueError("no Mamba mixer in the rebuilt model")
        return model

    # --- families
    def families(self, kind: str) -> dict[int, Any]:
        """layer -> UnitFamily (only the count and blocks are used without the meta model)."""
        from .arch import UnitFamily, find_mixers

        if self.model is not None:
            return {m.layer: m.unit_family(kind) for m in find_mixers(self.model) if kind in m.unit_families()}
        dims = self.result.analysis.model.get("dims", {})
        blocks = 1
        if "num_heads" in dims:
            blocks = {"head": dims.get("n_groups", 1), "state": dims.get("n_groups", 1),
                      "head_channel": dims["num_heads"]}.get(kind, 1)
        return {u.layer: UnitFamily(kind, u.count, (), u.description, blocks=blocks, prunable=u.prunable)
                for u in self.result.analysis.units if u.kind == kind and u.layer is not None}

    # --- effects of uniform unit cuts
    def effect(self, cuts: Mapping[str, float], check: bool = False) -> dict[str, Any]:
        """Params/FLOPs/state removed and per-tensor removed elements of uniform unit cuts {kind: sparsity};
        with ``check``, also whether a stock config expresses the sliced model (``expressible``, ``problems``)."""
        key = (tuple(sorted(cuts.items())), check)
        if key not in self._effects:
            self._effects[key] = self._meta_effect(cuts, check) if self.model is not None \
                else self._analytic_effect(cuts)
        return self._effects[key]

    def _meta_effect(self, cuts: Mapping[str, float], check: bool) -> dict[str, Any]:
        """Slice the cuts out of meta-device copies. Mixers of identical shapes are sliced once; the
        stock-config check (``check``) needs the whole model."""
        from .arch import MixerInfo, find_mixers
        from .surgery import is_expressible

        model = copy.deepcopy(self.model) if check else self.model
        mixers = find_mixers(model)
        if check:
            groups = {i: [m] for i, m in enumerate(mixers)}
        else:
            groups = {}
            for m in mixers:
                signature = (m.kind, tuple(sorted((n, tuple(p.shape)) for n, p in m.params.items())))
                groups.setdefault(signature, []).append(m)
        out = {"params": 0, "flops": 0, "state": 0, "removed": {}, "expressible": None, "problems": []}
        for members in groups.values():
            first = members[0]
            mixer = first if check else MixerInfo(first.index, first.layer, first.path,
                                                  copy.deepcopy(first.module), first.kind)
            part, removed, problems = _slice_effect(mixer, cuts)
            for key in ("params", "flops", "state"):
                out[key] += part[key] * len(members)
            out["problems"] += problems
            if len(cuts) == 1:
                for m in members:
                    for rel, n in removed.items():
                        out["removed"][m.full_name(rel)] = n
        if out["problems"]:
            out["expressible"] = False
        elif check:
            out["expressible"], why = is_expressible(model)
            out["problems"] = list(why)
        return out

    def _analytic_effect(self, cuts: Mapping[str, float]) -> dict[str, Any]:
        """Without a model to slice: fractions of the analysis' per-group numbers (an estimate)."""
        a = self.result.analysis
        out = {"params": 0, "flops": 0, "state": 0, "removed": {}, "expressible": False,
               "problems": [f"could not rebuild the model from the run's config to check slicing ({self.problem})"]}
        for kind, sparsity in cuts.items():
            fams = self.families(kind)
            for u in a.units:
                if u.kind != kind or u.layer not in fams:
                    continue
                fam = fams[u.layer]
                k = removed_per_block(fam, sparsity) * fam.blocks
                frac = k / u.count if u.count else 0.0
                out["params"] += k * u.params_per_unit
                rel = set(u.tensors)
                layer_groups = [g for g in a.mixer_groups() if g.layer == u.layer]
                touched = {g.group for g in layer_groups for p in g.params if any(p.endswith("." + r) for r in rel)}
                for g in layer_groups:
                    scan = g.group == "A_log" and kind != "dt_rank"
                    if g.group in touched or scan:
                        out["flops"] += int(frac * g.flops_per_token)
                        if kind != "dt_rank":
                            out["state"] += int(frac * g.state_bytes)
                    if len(cuts) == 1:
                        for p in g.params:
                            if any(p.endswith("." + r) for r in rel):
                                out["removed"][p] = out["removed"].get(p, 0.0) + frac * self.numel.get(p, 0)
        return out


def _slice_effect(mixer: Any, cuts: Mapping[str, float]) -> tuple[dict[str, int], dict[str, float], list[str]]:
    """Slice uniform cuts {kind: sparsity} out of one (meta) mixer in place: what it removed
    (params, FLOPs/token and state bytes, analysis conventions), elements removed per relative
    parameter name (single cuts), and the problems met."""
    from .analysis import _mixer_flops, _state_bytes
    from .surgery import slice_units

    def totals() -> tuple[int, int, int]:
        groups = mixer.groups()
        return (sum(p.numel() for p in mixer.params.values()), sum(_mixer_flops(mixer, g) for g in groups),
                sum(_state_bytes(mixer, g) for g in groups))

    before = totals()
    removed: dict[str, float] = {}
    problems: list[str] = []
    for kind, sparsity in cuts.items():
        if kind not in mixer.unit_families():
            continue
        family = mixer.unit_family(kind)
        k = removed_per_block(family, sparsity)
        if k == 0:
            continue
        per_block = family.count // family.blocks
        if len(cuts) == 1:
            for param, dim, idx in family.indices([u for u in range(family.count) if u % per_block < k]):
                shape = mixer.param(param).shape
                removed[param] = removed.get(param, 0.0) + len(idx) * int(np.prod(shape)) / shape[dim]
        try:
            slice_units(mixer, kind, [u for u in range(family.count) if u % per_block >= k])
        except ValueError as err:
            problems.append(str(err))
    after = totals()
    return {"params": before[0] - after[0], "flops": before[1] - after[1], "state": before[2] - after[2]}, \
        removed, problems


_SHAPES_CACHE: dict[tuple, _Shapes] = {}


def _shapes_for(result: ProfileResult, loaded: Any = None) -> _Shapes:
    """A :class:`_Shapes` per model (its slicing results are cached: interactive re-solves stay fast)."""
    model_meta = result.meta.get("model", {})
    key = (model_meta.get("fingerprint"), model_meta.get("class"),
           json.dumps(model_meta.get("config", {}), sort_keys=True, default=str),
           json.dumps(result.analysis.model.get("dims", {}), sort_keys=True))
    shapes = _SHAPES_CACHE.get(key)
    if shapes is None or shapes.model is None:
        shapes = _Shapes(result, loaded)
        if len(_SHAPES_CACHE) >= 4:
            _SHAPES_CACHE.pop(next(iter(_SHAPES_CACHE)))
        _SHAPES_CACHE[key] = shapes
    shapes.result = result
    return shapes


def removed_per_block(family: Any, sparsity: float) -> int:
    """Units :func:`ssm_profile.masks.select_units` removes from each block at ``sparsity``."""
    per_block = family.count // family.blocks
    return max(0, min(round(sparsity * per_block), per_block - 1))


def _unit_indices(result: ProfileResult, criterion: str, kind: str, families: Mapping[int, Any],
                  sparsity: float) -> dict[str, list[int]] | None:
    import torch

    from .masks import select_units

    scores = result.unit_scores.get(criterion, {})
    out = {}
    for layer, family in sorted(families.items()):
        values = scores.get(str(layer), {}).get(kind)
        if values is None or len(values) != family.count:
            return None
        out[str(layer)] = [int(u) for u in select_units(torch.tensor(values, dtype=torch.float64), family, sparsity)]
    return out


def build_options(result: ProfileResult, metric: str, criterion: str | None = None,
                  structures: Sequence[str] | None = None, shapes: _Shapes | None = None,
                  ) -> tuple[list[list[Option]], list[str]]:
    """Per target: level 0 and every measured level that reduces ``metric``; plus notes."""
    if metric not in METRICS:
        raise PlanError(f"unknown --target '{metric}'; choose from {', '.join(METRICS)}")
    shapes = shapes or _Shapes(result)
    notes: list[str] = []
    run_structure = str(result.meta.get("settings", {}).get("structure", "unstructured"))
    measured = result.criteria()
    if criterion is not None and criterion not in measured:
        raise PlanError(f"criterion '{criterion}' was not measured in this run; measured: {', '.join(measured)}")
    allowed = None if structures is None else set(structures)
    if allowed is not None and run_structure not in allowed and any(not t.startswith("unit:") for t in result.targets()):
        notes.append(f"parameter groups were swept as {run_structure} in this run, which --structures excludes; "
                     "only unit cuts are considered" if "units" in allowed else
                     f"parameter groups were swept as {run_structure} in this run, which --structures excludes")
    if allowed is not None:
        for s in sorted(allowed - {"units", "unstructured", run_structure}):
            notes.append(f"{s} was not measured in this run (it swept {run_structure}); profile that structure to plan it")
    nm = _NM_RE.match(run_structure)
    layers_of_group: dict[str, list[int]] = {}
    params_of_group: dict[str, list[str]] = {}
    for g in result.analysis.mixer_groups():
        layers_of_group.setdefault(g.group, []).append(g.layer)
        params_of_group.setdefault(g.group, []).extend(p for p in g.params if not p.endswith(".bias"))
    fallback: list[str] = []

    out: list[list[Option]] = []
    for target in dict.fromkeys(t.target for t in result.model_trials):
        is_unit = target.startswith("unit:")
        structure = "units" if is_unit else run_structure
        if allowed is not None and structure not in allowed:
            continue
        kind = target[5:] if is_unit else None
        families = shapes.families(kind) if is_unit else {}
        by_level: dict[float, list] = {}
        for t in result.model_trials:
            if t.target != target or not math.isfinite(t.delta_loss):
                continue
            if t.criterion == "random" and criterion != "random":
                continue  # a baseline, not a method: only when asked for by name
            if is_unit and _unit_indices(result, t.criterion, kind, families, t.sparsity) is None:
                continue  # no stored unit scores: the plan could not name the units
            level = round(1.0 - int(nm.group(1)) / int(nm.group(2)), 6) if (nm and not is_unit) else round(t.sparsity, 6)
            by_level.setdefault(level, []).append(t)
        levels = [Option(target, 0.0, "none", None, 0.0, 0.0, layers=[])]
        for sparsity in sorted(by_level):
            trials = by_level[sparsity]
            mine = [t for t in trials if t.criterion == criterion]
            if criterion is not None and not mine and target not in fallback:
                fallback.append(target)
            best = min(mine or trials, key=lambda t: (t.delta_loss, t.criterion))
            opt = Option(target, sparsity, structure, best.criterion, float(best.delta_loss),
                         float(best.rel_ppl_increase), risk=max(0.0, float(result.delta_ci(best)[1])))
            if is_unit:
                eff = shapes.effect({kind: best.sparsity})
                opt.params, opt.flops, opt.state = int(eff["params"]), int(eff["flops"]), int(eff["state"])
                opt.removed = dict(eff["removed"])
                opt.unit_kind = kind
                opt.per_block = {layer: removed_per_block(f, best.sparsity) for layer, f in families.items()}
                opt.unit_indices = _unit_indices(result, best.criterion, kind, families, best.sparsity)
                opt.layers = sorted(families)
                opt.sparsity = round(best.sparsity, 6)
                if not any(opt.per_block.values()):
                    continue  # rounds to zero units everywhere
            else:
                opt.params = int(best.pruned_params)
                opt.layers = sorted(l for l in layers_of_group.get(target, []) if l is not None)
                prunable = {p: shapes.numel[p] for p in params_of_group.get(target, [])}
                total = sum(prunable.values())
                frac = opt.params / total if total else 0.0
                opt.removed = {p: frac * n for p, n in prunable.items()}
            if opt.gain(metric) > 0:
                levels.append(opt)
        if len(levels) > 1:
            out.append(levels)
    if not out:
        what = {"params": "parameters", "flops": "dense FLOPs (only structured unit cuts do)",
                "state": "recurrent state (only state/head/channel unit cuts do)"}[metric]
        raise PlanError(f"nothing measured in this run reduces {what}; profile unit targets "
                        "(e.g. --targets unit:state) or choose another --target")
    if fallback:
        notes.append(f"{criterion} was not measured for {', '.join(fallback)}; the best measured criterion is used there")
    if "random" in measured and criterion != "random":
        notes.append("the random baseline is never chosen unless asked for (--criterion random)")
    return out, notes


def _overlaps(options: list[list[Option]], shapes: _Shapes) -> dict[str, dict]:
    """Pairwise double-counted reduction per metric: {metric: {((t1, l1), (t2, l2)): amount}}."""
    out: dict[str, dict] = {m: {} for m in METRICS}
    flat = [(t, l, o) for t, levels in enumerate(options) for l, o in enumerate(levels) if l > 0]
    for i, (t1, l1, a) in enumerate(flat):
        for t2, l2, b in flat[i + 1:]:
            if t2 == t1:
                continue
            key = ((t1, l1), (t2, l2))
            if a.unit_kind and b.unit_kind and shapes.model is not None and a.unit_kind != b.unit_kind:
                both = shapes.effect({a.unit_kind: a.sparsity, b.unit_kind: b.sparsity})
                for metric in METRICS:
                    value = a.gain(metric) + b.gain(metric) - int(both[metric])
                    if value > 0:
                        out[metric][key] = float(value)
                continue
            shared = set(a.removed) & set(b.removed)
            value = sum(a.removed[p] * b.removed[p] / shapes.numel[p] for p in shared if shapes.numel.get(p))
            if value > 0:
                out["params"][key] = min(value, float(min(a.params, b.params)))
    return out


# ============================================================================================
# measurement


def load_run_model(result: ProfileResult, name: str | None = None, device: str = "cpu") -> Any:
    """Load the model a run profiled (from where the run found it, or ``name``), in the run's dtype."""
    from .resolve import DTYPES, load_model

    model_meta = result.meta.get("model", {})
    source = model_meta.get("source", {})
    if name is None:
        local = str(source.get("kind", "")).startswith("local")
        name = (source.get("location") if local else None) or source.get("name") or model_meta.get("name")
    dtype = str(model_meta.get("config", {}).get("dtype") or model_meta.get("config", {}).get("torch_dtype") or "")
    try:
        return load_model(name, device=device, dtype=dtype if dtype in DTYPES else None)
    except SSMProfileError as err:
        raise PlanError(f"cannot load the run's model to measure the plan ({err}); pass --no-measure "
                        "or --model PATH") from None


class _Measurer:
    """Loads once, then measures the held-out loss of any combination of plan actions."""

    def __init__(self, result: ProfileResult, loaded: Any, progress: Progress, device: str = "cpu"):
        from .data import batch_losses, load_dataset

        self.result = result
        self.note = progress
        model_meta = result.meta["model"]
        if loaded is None:
            self.note(0, 1, "loading the model")
            loaded = load_run_model(result, device=device)
        if loaded.fingerprint != model_meta.get("fingerprint"):
            raise PlanError(f"the run profiled {model_meta.get('name')} ({_short(model_meta.get('fingerprint'))}) but "
                            f"the loaded model {loaded.source.name} has other weights ({_short(loaded.fingerprint)}); "
                            "measure with the same weights or pass --no-measure")
        self.loaded = loaded
        self.model = loaded.model
        settings = result.meta.get("settings", {})
        self.batch_size = int(settings.get("batch_size", 8))
        self.seed = int(settings.get("seed", 0))
        # The profile's kernels (fast ones unless it ran with --no-fast-scan): the statistics that
        # rebuild its masks come out as they did there, and measuring is as fast as its trials.
        self.fast_kernels = bool(settings.get("fast_scan", True))
        self.dataset = load_dataset(loaded.tokenizer, data_spec_from_meta(result.meta["data"]))
        self.note(0, 1, "dense evaluation")
        with self.kernels():
            self.dense = batch_losses(self.model, self.dataset.evaluation, self.batch_size)
        self.dense_loss = float(self.dense.mean())
        self._stats = None
        self._needs: set[str] = set()
        self._scorer = None
        self._masks: dict[tuple, Any] = {}
        self.expected_criteria: set[str] = set()

    def kernels(self):
        from .kernels import Kernels, installed

        return installed(self.model, Kernels.for_run(self.fast_kernels))

    def _scorer_for(self, criteria: set[str]):
        from .criteria import ScoringContext, get
        from .sensitivity import Scorer
        from .stats import collect_stats

        criteria = set(criteria) | self.expected_criteria  # one statistics pass for every criterion a re-solve may pick
        needs: set[str] = set()
        for name in criteria:
            needs |= set(get(name).needs)
        if self._stats is None or not needs <= self._needs:
            self.note(0, 1, "calibration statistics")
            self._needs |= needs
            self._stats = collect_stats(self.model, self.dataset.calibration, self._needs, batch_size=self.batch_size)
            self._stats.seed = self.seed
            self._scorer = None
        if self._scorer is None or not criteria <= set(self._scorer.criteria):
            known = set(self._scorer.criteria) if self._scorer is not None else set()
            self._scorer = Scorer(self.model, ScoringContext(model=self.model, stats=self._stats, seed=self.seed),
                                  sorted(known | criteria))
        return self._scorer

    def action_mask(self, a: Option):
        """Keep-mask of one action, exactly as the profile's trial built it (cached)."""
        import torch

        from .criteria import NotApplicable
        from .masks import merge, unit_mask
        from .arch import find_mixers
        from .sensitivity import TrialSpec

        key = (a.target, a.sparsity, a.criterion, a.structure)
        if key in self._masks:
            return self._masks[key]
        mixers = find_mixers(self.model)
        if a.unit_kind:
            by_layer = {m.layer: m for m in mixers}
            parts = []
            for layer, ids in (a.unit_indices or {}).items():
                mixer = by_layer[int(layer)]
                parts.append(unit_mask(mixer, mixer.unit_family(a.unit_kind), torch.tensor(ids, dtype=torch.long)))
            mask = merge(parts)
        else:
            try:
                with self.kernels():
                    scorer = self._scorer_for({a.criterion})
                    mask = scorer.mask(TrialSpec(a.target, a.criterion, a.sparsity), mixers, a.structure)
            except (NotApplicable, ValueError) as err:
                raise PlanError(f"cannot rebuild the {a.target} mask with {a.criterion}: {err}") from None
        self._masks[key] = mask
        return mask

    def masks(self, actions: list[Option]):
        from .masks import merge

        return merge([self.action_mask(a) for a in actions])

    def exact_overlap(self, a: Option, b: Option) -> int:
        """Parameters both actions remove."""
        ma, mb = self.action_mask(a), self.action_mask(b)
        return int(sum((~ma[n] & ~mb[n]).sum() for n in set(ma) & set(mb)))

    def measure(self, actions: list[Option]) -> dict[str, Any]:
        from .data import batch_losses
        from .masks import MaskApplier, pruned_count

        if not actions:
            return {"loss": self.dense_loss, "delta_loss": 0.0, "rel_ppl_increase": 0.0, "params_removed": 0}
        mask = self.masks(actions)
        with MaskApplier(self.model) as applier, self.kernels():
            applier.apply(mask)
            losses = batch_losses(self.model, self.dataset.evaluation, self.batch_size)
        loss = float(losses.mean())
        delta = loss - self.dense_loss
        return {"loss": loss, "delta_loss": delta, "rel_ppl_increase": math.exp(min(delta, 700.0)) - 1.0,
                "params_removed": pruned_count(mask)}


# ============================================================================================
# the plan


def _fmt_amount(metric: str, value: float) -> str:
    unit = {"params": "params", "flops": "FLOPs/token", "state": "state bytes/sequence"}[metric]
    return f"{round(value):,} {unit}"


def make_plan(result: ProfileResult, target: str = "params", ratio: float | None = None,
              absolute: int | None = None, max_ppl_increase: float = DEFAULT_MAX_PPL_INCREASE,
              criterion: str | None = None, structures: str | Sequence[str] | None = None, measure: bool = True,
              loaded: Any = None, progress: Progress | None = None, *, run_path: str | Path | None = None,
              device: str = "cpu", scope: str = "ssm") -> dict[str, Any]:
    """Build a plan (a dict in the plan file format) from a profile result; see the module docstring."""
    note = progress or (lambda done, total, label: None)
    metric = target
    if metric not in METRICS:
        raise PlanError(f"unknown --target '{metric}'; choose from {', '.join(METRICS)}")
    if ratio is not None and absolute is not None:
        raise PlanError("give either --ratio or --absolute, not both")
    if not (isinstance(max_ppl_increase, (int, float)) and 0 < max_ppl_increase and math.isfinite(max_ppl_increase)):
        raise PlanError(f"--max-ppl-increase must be a positive number such as 0.10, got {max_ppl_increase}")
    if scope not in SCOPES:
        raise PlanError(f"unknown --scope '{scope}'; choose from {', '.join(SCOPES)}")
    total = _metric_total(result, metric, scope)
    if total <= 0:
        raise PlanError(f"the run's analysis has no total for {metric}; profile the model again")
    if ratio is not None:
        if not 0 < ratio < 1:
            raise PlanError(f"--ratio must be in (0, 1) (a fraction of {_scope_words(metric, scope)}), got {ratio}")
        budget: float | None = ratio * total
    elif absolute is not None:
        if int(absolute) <= 0:
            raise PlanError(f"--absolute must be positive, got {absolute}")
        if int(absolute) > total:
            raise PlanError(f"--absolute {int(absolute):,} exceeds the total of {_scope_words(metric, scope)}, "
                            f"{_fmt_amount(metric, total)}")
        budget = float(int(absolute))
    else:
        budget = None
    structures = parse_structures(structures)
    cap0 = math.log1p(max_ppl_increase)

    note(0, 1, "options")
    if loaded is not None:
        _check_run_weights(result, loaded)
    shapes = _shapes_for(result, loaded)
    options, notes = build_options(result, metric, criterion, structures, shapes)
    overlaps = _overlaps(options, shapes)
    gains = [[o.gain(metric) for o in levels] for levels in options]
    costs = [[o.cost for o in levels] for levels in options]
    risks = [[o.risk for o in levels] for levels in options]

    def infeasible() -> PlanError:
        best = solve_mckp(gains, costs, cap=cap0, overlaps=overlaps[metric], risks=risks)
        assert best is not None  # every target at level 0 is always feasible
        value = net_gain(best, gains, overlaps[metric])
        predicted = sum(costs[t][l] for t, l in enumerate(best))
        return PlanError(f"cannot remove {_fmt_amount(metric, budget)} ({budget / total:.1%} of "
                         f"{_scope_words(metric, scope)}) within "
                         f"+{max_ppl_increase:.0%} perplexity: the best reachable point is {value / total:.1%} "
                         f"({_fmt_amount(metric, value)}) at a predicted +{math.expm1(predicted):.1%} perplexity; "
                         "lower --ratio/--absolute or raise --max-ppl-increase")

    note(0, 1, "solving")
    choice = solve_mckp(gains, costs, cap=cap0, budget=budget, overlaps=overlaps[metric], risks=risks)
    if choice is None:
        raise infeasible()

    measured = None
    backoff = 0
    if measure:
        measurer = _Measurer(result, loaded, note, device=device)
        measurer.expected_criteria = {o.criterion for levels in options for o in levels[1:] if not o.unit_kind}
        loaded = measurer.loaded
        if abs(measurer.dense_loss - result.dense_loss) > 1e-3:
            notes.append(f"dense loss re-measured as {measurer.dense_loss:.4f} (run: {result.dense_loss:.4f}); "
                         "measured changes are against the re-measured value")
        cap, cuts = cap0, []
        attempts: list[tuple[list[int], dict[str, Any], float]] = []  # (choice, measurement, reduction)
        exact: set = set()
        refinements = 0
        learned = 0
        while True:
            # Overlaps of the chosen actions, counted exactly from their masks; re-solve if they moved.
            if _refine_overlaps(options, choice, overlaps["params"], exact, measurer) and metric == "params" \
                    and refinements < 4 * len(options):
                refinements += 1
                again = solve_mckp(gains, costs, cap=cap, budget=budget, overlaps=overlaps[metric], cuts=cuts,
                                   risks=risks)
                if again is None:
                    if not backoff:
                        raise infeasible()
                    break
                if again != choice:
                    choice = again
                    continue
            note(backoff, MAX_BACKOFF + 1, f"measuring plan (step {backoff + 1})")
            m = measurer.measure(_actions_of(options, choice))
            attempts.append((list(choice), m, net_gain(choice, gains, overlaps[metric])))
            if m["rel_ppl_increase"] <= max_ppl_increase or backoff >= MAX_BACKOFF:
                break
            # Back off: learn each chosen action's marginal loss in this combination (leave one out), raise
            # its cost (and its more aggressive levels') to that, shrink the loss budget, exclude this plan
            # and every plan at least as aggressive in all of its targets, and solve again.
            backoff += 1
            chosen = [(t, l) for t, l in enumerate(choice) if l > 0]
            for t, l in chosen if len(chosen) > 1 else []:
                note(backoff, MAX_BACKOFF + 1, f"back-off {backoff}: plan without {options[t][l].target}")
                without = [lv if i != t else 0 for i, lv in enumerate(choice)]
                mw = measurer.measure(_actions_of(options, without))
                attempts.append((without, mw, net_gain(without, gains, overlaps[metric])))
                marginal = m["delta_loss"] - mw["delta_loss"]
                for l2 in range(l, len(costs[t])):
                    if marginal > costs[t][l2]:
                        costs[t][l2] = marginal
                        learned += 1
            if len(chosen) == 1:
                t, l = chosen[0]
                for l2 in range(l, len(costs[t])):
                    costs[t][l2] = max(costs[t][l2], m["delta_loss"])
            cap *= BACKOFF_LOSS_FACTOR
            cuts.append(dict(chosen))
            again = solve_mckp(gains, costs, cap=cap, budget=budget, overlaps=overlaps[metric], cuts=cuts,
                               risks=risks)
            if again is None:
                break
            choice = again
        # The answer: the best measured plan within tolerance (and budget): the last solve's, or a
        # leave-one-out plan measured on the way if that is better.
        ok = [a for a in attempts if a[1]["rel_ppl_increase"] <= max_ppl_increase
              and (budget is None or a[2] >= budget * (1 - 1e-9))]
        if not ok:
            raise PlanError(_backoff_message(attempts, metric, total, max_ppl_increase, budget, backoff))
        if budget is None:
            choice, measured, _ = max(ok, key=lambda a: (a[2], -a[1]["delta_loss"]))
        else:
            choice, measured, _ = min(ok, key=lambda a: (a[1]["delta_loss"], -a[2]))
        note(MAX_BACKOFF + 1, MAX_BACKOFF + 1, "measured")
        if backoff:
            notes.append(f"the first solution measured above tolerance; {backoff} back-off step(s): leave-one-out "
                         f"marginal losses replaced {learned} single-target cost(s), loss budget x{BACKOFF_LOSS_FACTOR} "
                         "per step, failed plans and more aggressive ones excluded")
        if exact:
            notes.append("overlaps between the chosen actions are counted exactly from their masks")
    return _assemble(result, metric, ratio, absolute, max_ppl_increase, options, choice, overlaps, shapes,
                     measured, backoff, notes, run_path, loaded, scope)


def _refine_overlaps(options: list[list[Option]], choice: Sequence[int], overlaps: dict, exact: set,
                     measurer: _Measurer) -> bool:
    """Replace estimated parameter overlaps of the chosen pairs by exact counts; True if any changed."""
    chosen = [(t, l) for t, l in enumerate(choice) if l > 0]
    changed = False
    for i, a in enumerate(chosen):
        for b in chosen[i + 1:]:
            key = (a, b)
            if key in exact:
                continue
            exact.add(key)
            value = float(measurer.exact_overlap(options[a[0]][a[1]], options[b[0]][b[1]]))
            if abs(value - overlaps.get(key, 0.0)) > 0.5:
                changed = True
            if value:
                overlaps[key] = value
            else:
                overlaps.pop(key, None)
    return changed


def _check_run_weights(result: ProfileResult, loaded: Any) -> None:
    want = result.meta.get("model", {}).get("fingerprint")
    if loaded.fingerprint != want:
        raise PlanError(f"the run profiled {result.meta.get('model', {}).get('name')} ({_short(want)}) but the given "
                        f"model {loaded.source.name} has other weights ({_short(loaded.fingerprint)})")


def _backoff_message(attempts, metric, total, tol, budget, steps) -> str:
    safe = [a for a in attempts if a[1]["rel_ppl_increase"] <= tol]
    _, m, value = max(safe, key=lambda a: a[2]) if safe else min(attempts, key=lambda a: a[1]["rel_ppl_increase"])
    what = (f"--ratio/--absolute ({_fmt_amount(metric, budget)}, {budget / total:.1%}) cannot be met"
            if budget is not None else "no plan measured")
    return (f"{what} within +{tol:.0%} perplexity after {steps} back-off step(s): the best measured point removes "
            f"{value / total:.1%} of {metric} in scope ({_fmt_amount(metric, value)}) at +{m['rel_ppl_increase']:.1%} perplexity "
            "(predicted additivity failed); lower the budget or raise --max-ppl-increase")


def _actions_of(options: list[list[Option]], choice: Sequence[int]) -> list[Option]:
    return [options[t][l] for t, l in enumerate(choice) if l > 0]


def _execution(actions: list[Option], shapes: _Shapes) -> dict[int, tuple[str, str]]:
    """id(action) -> (execution, note)."""
    out: dict[int, tuple[str, str]] = {}
    units = [a for a in actions if a.unit_kind]
    for a in actions:
        if not a.unit_kind:
            kind = "N:M semi-structured" if a.structure != "unstructured" else "unstructured"
            extra = " or N:M sparse kernels" if a.structure != "unstructured" else ""
            out[id(a)] = ("zero", (f"{kind} zeros: shapes and dense FLOPs unchanged; saving memory needs a sparse "
                                  f"format{extra}"))
            continue
        eff = shapes.effect({a.unit_kind: a.sparsity}, check=True)
        if eff["expressible"]:
            out[id(a)] = ("slice", (f"uniform cut ({_per_block_text(a)}) in every layer; the stock config expresses "
                          "the sliced shapes"))
        else:
            why = "; ".join(eff["problems"][:1]) or "not expressible"
            out[id(a)] = ("zero", _one_line(f"applied as zeros: a stock config cannot express the sliced shapes ({why})",
                                            300))
    slicers = [a for a in units if out[id(a)][0] == "slice"]
    if len(slicers) > 1:
        both = shapes.effect({a.unit_kind: a.sparsity for a in slicers}, check=True)
        if not both["expressible"]:
            why = "; ".join(both["problems"][:1])
            for a in slicers:
                out[id(a)] = ("zero", _one_line(f"applied as zeros: expressible alone but not together with the other "
                                                f"unit cuts ({why})", 300))
    return out


def _per_block_text(a: Option) -> str:
    counts = sorted(set(a.per_block.values()))
    return f"{'/'.join(str(c) for c in counts)} {a.unit_kind} unit(s) removed per block"


def _assemble(result, metric, ratio, absolute, tol, options, choice, overlaps, shapes, measured, backoff, notes,
              run_path, loaded, scope: str = "ssm") -> dict[str, Any]:
    meta = result.meta
    model_meta = meta.get("model", {})
    actions = _actions_of(options, choice)
    execution = _execution(actions, shapes)
    totals = {m: net_gain(choice, [[o.gain(m) for o in levels] for levels in options], overlaps[m]) for m in METRICS}
    units = {a.unit_kind: a.sparsity for a in actions if a.unit_kind}
    if len(units) > 2 and shapes.model is not None:  # pairwise overlaps are exact for two unit cuts, not three
        combined = shapes.effect(units)
        totals["flops"], totals["state"] = combined["flops"], combined["state"]
    delta = sum(o.cost for o in actions)
    rows = []
    for a in actions:
        how, why = execution[id(a)]
        rows.append({
            "target": a.target, "layers": list(a.layers), "structure": a.structure, "criterion": a.criterion,
            "sparsity": float(a.sparsity), "unit_kind": a.unit_kind,
            "unit_indices": a.unit_indices if a.unit_kind else None,
            "params_removed": int(a.params), "flops_removed": int(a.flops), "state_bytes_removed": int(a.state),
            "predicted_delta_loss": float(a.delta_loss), "execution": how, "note": why,
        })
    overlap_total = sum(a.params for a in actions) - totals["params"]
    if overlap_total > 0:
        notes.append(f"actions overlap on about {round(overlap_total):,} parameters (counted once in the "
                     "predicted totals)")
    if any(a.delta_loss < 0 for a in actions):
        notes.append("negative single-target loss changes (evaluation noise) count as 0 in the predicted total")
    if len(actions) > 1:
        notes.append("the predicted loss change adds single-target measurements; interactions make it an "
                     "approximation" + ("" if measured else " (not measured: --no-measure)"))
    if shapes.model is None:
        notes.append(f"FLOPs/state of unit cuts are estimates: {shapes.problem}")
    if not actions:
        notes.append("no cut fits the loss budget; the plan leaves the model unchanged")
    dense_total = {m: _metric_total(result, m) for m in METRICS}
    plan = {
        "schema_version": PLAN_SCHEMA_VERSION,
        "kind": PLAN_KIND,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tool_version": __version__,
        "model": {"name": model_meta.get("name", ""), "source": model_meta.get("source", {}),
                  "fingerprint": model_meta.get("fingerprint", ""),
                  "architecture": result.analysis.model.get("architecture", "unknown"),
                  "class": model_meta.get("class", result.analysis.model.get("class", ""))},
        "run": {"path": str(Path(run_path).resolve()) if run_path is not None else "", "created": meta.get("created", ""),
                # kernels the profile scored with; apply rebuilds element masks with the same ones
                "fast_kernels": bool(meta.get("settings", {}).get("fast_scan", True))},
        "data": _plan_data(meta.get("data", {})),
        "objective": {"target": metric, "ratio": None if ratio is None else float(ratio),
                      "absolute": None if absolute is None else int(absolute), "max_ppl_increase": float(tol),
                      "scope": scope},
        "dense": {"loss": result.dense_loss, "perplexity": result.dense_perplexity,
                  "parameters": dense_total["params"], "flops_per_token": dense_total["flops"],
                  "state_bytes_per_sequence": dense_total["state"]},
        "actions": rows,
        "predicted": {"delta_loss": float(delta), "rel_ppl_increase": math.expm1(delta),
                      "params_removed": round(totals["params"]), "flops_removed": round(totals["flops"]),
                      "state_bytes_removed": round(totals["state"]),
                      "scope_total": _metric_total(result, metric, scope),
                      "reduction_ratio": float(totals[metric] / max(1, _metric_total(result, metric, scope))),
                      "reduction_ratio_model": float(totals[metric] / max(1, dense_total[metric]))},
        "measured": None if measured is None else {
            "loss": float(measured["loss"]), "delta_loss": float(measured["delta_loss"]),
            "rel_ppl_increase": float(measured["rel_ppl_increase"]),
            "within_tolerance": bool(measured["rel_ppl_increase"] <= tol), "backoff_steps": int(backoff),
            "params_removed": int(measured["params_removed"]),
        },
        "notes": notes,
    }
    validate_plan(plan, where="the new plan")
    return plan


def write_plan(plan: Mapping[str, Any], path: str | Path, overwrite: bool = False) -> Path:
    """Write ``plan`` atomically (indent 2); refuses to replace an existing file unless ``overwrite``."""
    from .errors import OutputExistsError
    from .io import write_json_atomic

    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"'{path}' already exists; choose another -o or pass --overwrite")
    return write_json_atomic(path, plan)
