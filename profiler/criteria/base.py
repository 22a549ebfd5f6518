"""One interface for every pruning criterion (as captum has one ``attribute`` for every method).

A criterion scores the *elements* of the parameters of a parameter group (higher = more
important, keep). Structured units are scored as one object across all their coupled tensors:
by default each tensor's element scores are summed over the unit's shared index set and the
per-tensor sums combined by :func:`aggregate_unit_scores` (:meth:`Criterion.unit_scores`); criteria that are natively per unit (FLAP, captum channel
attributions, SSM gramians) override it.

Criteria never run the model themselves: they read a :class:`CalibrationStats` gathered once
(activations, gradients, Hessians) so that many criteria share one pass over the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..base.registry import Registry

if TYPE_CHECKING:
    from ..model.arch import MixerInfo, UnitFamily


class NotApplicable(Exception):
    """Raised by a criterion for a group or unit kind it cannot score; the message says why."""


@dataclass
class CalibrationStats:
    """Statistics of a model on calibration data, keyed by full parameter / module names.

    Filled by :func:`ssm_profile.calibration.stats.collect_stats`. Only what the requested criteria need
    (``Criterion.needs``) is collected.
    """

    # input-channel statistics of every linear-like operation, keyed by "<mixer path>.<group>":
    # sum over tokens of x_j^2 ("sq"), of x_j ("sum"), and the token count ("n").
    inputs: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    # X^T X of the same inputs (for second-order criteria), keyed like ``inputs``.
    hessians: dict[str, torch.Tensor] = field(default_factory=dict)
    # per parameter (full name): sum over calibration batches of the gradient, and of its square.
    grad_sum: dict[str, torch.Tensor] = field(default_factory=dict)
    grad_sq_sum: dict[str, torch.Tensor] = field(default_factory=dict)
    grad_batches: int = 0
    grad_tokens: int = 0  # predicted tokens summed over the gradient micro-batches
    # per mixer path: SSM signal statistics (dt, B, C, x energies) for SSM-specific criteria.
    ssm: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    # calibration token ids, for criteria that run their own attribution (captum)
    tokens: torch.Tensor | None = None
    seed: int = 0

    def input_norm(self, key: str) -> torch.Tensor:
        """‖X_j‖₂ per input channel (WANDA)."""
        return self.inputs[key]["sq"].clamp_min(0).sqrt()

    def input_var(self, key: str) -> torch.Tensor:
        """Var(X_j) per input channel (FLAP)."""
        st = self.inputs[key]
        mean = st["sum"] / st["n"]
        return (st["sq"] / st["n"] - mean**2).clamp_min(0)


@dataclass
class ScoringContext:
    model: torch.nn.Module
    stats: CalibrationStats
    seed: int = 0


class Criterion:
    """Base class. Subclasses set ``name``/``needs`` and implement :meth:`score`."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    # What CalibrationStats must hold: subset of {"inputs", "hessians", "grads", "ssm", "tokens"}
    needs: ClassVar[frozenset[str]] = frozenset()
    # Unstructured masks compare scores within each output row (WANDA) or within the tensor.
    comparison: ClassVar[str] = "tensor"  # "tensor" | "row"
    # Whether ``predict_delta_loss`` gives a first/second-order estimate of the loss change.
    predicts_loss: ClassVar[bool] = False
    # How per-tensor unit scores combine into one score per unit (see aggregate_unit_scores);
    # None: per mixer family (UNIT_AGGREGATION, chosen by measurement); a name forces one for all.
    unit_aggregation: ClassVar[str | None] = None
    # False for criteria that only score structured units (e.g. channel attributions).
    scores_elements: ClassVar[bool] = True
    # True for criteria whose cuts also change kept weights (OBS/SparseGPT updates, FLAP's bias
    # compensation): :meth:`prune` / :meth:`reconstruct` give the new values.
    reconstructs: ClassVar[bool] = False

    def score(self, ctx: ScoringContext, mixer: "MixerInfo", param: str) -> torch.Tensor:
        """Element saliency of ``mixer.<param>``, same shape as the parameter (float32, >= 0 preferred).

        Raise :class:`NotApplicable` with a reason for parameters the criterion cannot score.
        """
        raise NotImplementedError

    def check(self, mixer: "MixerInfo", param: str) -> None:
        """Raise :class:`NotApplicable` (with the reason) if :meth:`score` cannot score ``param``.

        Static: needs no statistics, so the CLI can say up front what a criterion cannot score.
        """
        if not self.scores_elements:
            raise NotApplicable(f"{self.name} scores structured units only, not single elements")

    def check_units(self, mixer: "MixerInfo", family: "UnitFamily") -> None:
        """Raise :class:`NotApplicable` if :meth:`unit_scores` cannot score ``family`` (static)."""
        reasons = []
        for slot in family.slots:
            try:
                self.check(mixer, slot.param)
                return
            except NotApplicable as err:
                reasons.append(f"{slot.param}: {err}")
        raise NotApplicable(f"{self.name} scores none of the tensors of a {family.kind} unit ("
                            + "; ".join(dict.fromkeys(reasons)) + ")")

    def unit_scores(self, ctx: ScoringContext, mixer: "MixerInfo", family: "UnitFamily") -> torch.Tensor:
        """One score per unit of ``family`` (shape ``(family.count,)``): the unit's slices in every
        coupled tensor, combined by :func:`aggregate_unit_scores` (:meth:`aggregation_for` the mixer).

        Raises :class:`NotApplicable` if no slot can be scored.
        """
        return aggregate_unit_scores(self.tensor_unit_scores(ctx, mixer, family), self.aggregation_for(mixer.kind))

    def aggregation_for(self, mixer_kind: str) -> str:
        """How this criterion combines per-tensor unit scores in a mixer of ``mixer_kind``."""
        return self.unit_aggregation or UNIT_AGGREGATION.get(mixer_kind, {}).get(self.name, DEFAULT_UNIT_AGGREGATION)

    @classmethod
    def aggregates_units(cls) -> bool:
        """Whether its unit scores are element scores combined per tensor (not natively per unit)."""
        return cls.unit_scores is Criterion.unit_scores

    def tensor_unit_scores(self, ctx: ScoringContext, mixer: "MixerInfo",
                           family: "UnitFamily") -> dict[str, torch.Tensor]:
        """Per coupled tensor: each unit's summed element scores over its slices, float64 ``(count,)``.

        Tensors the criterion cannot score (:class:`NotApplicable`, e.g. ``A_log`` for WANDA) are
        left out; every unit of a family has the same slots, so the sums stay comparable.
        """
        self.check_units(mixer, family)
        units = torch.arange(family.count)
        element_scores: dict[str, torch.Tensor | None] = {}
        per_tensor: dict[str, torch.Tensor] = {}
        for slot in family.slots:
            if slot.param not in element_scores:
                try:
                    element_scores[slot.param] = self.score(ctx, mixer, slot.param).double().cpu()
                except NotApplicable:
                    element_scores[slot.param] = None
            scores = element_scores[slot.param]
            if scores is None:
                continue
            moved = scores.movedim(slot.dim, 0)
            idx = slot.indices(units).view(family.count, slot.span)
            sums = moved[idx].reshape(family.count, -1).sum(dim=1)
            per_tensor[slot.param] = per_tensor.get(slot.param, 0) + sums
        return per_tensor

    def prune(self, ctx: ScoringContext, mixer: "MixerInfo", param: str, sparsity: float,
              nm: tuple[int, int] | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(keep-mask, new weight) of an element cut of ``param`` when the criterion chooses the mask
        and the kept values together (SparseGPT); None: the mask comes from :meth:`score`."""
        return None

    def reconstruct(self, ctx: ScoringContext, mixer: "MixerInfo",
                    keeps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """New values of ``mixer``'s parameters (relative names, any of them, e.g. a bias) after the
        cut ``keeps`` (relative name -> keep-mask), computed from the dense weights; the masked
        elements are zeroed afterwards. Empty: the cut only zeroes (the default)."""
        return {}

    def predict_delta_loss(self, ctx: ScoringContext, mixer: "MixerInfo", param: str,
                           mask: torch.Tensor) -> float:
        """Estimated loss change from zeroing the elements where ``mask`` is False."""
        raise NotApplicable(f"{self.name} gives no loss estimate")


UNIT_AGGREGATIONS = ("sum", "mean", "std", "rank")
# Per mixer family and criterion, how criteria that sum element scores per tensor combine them into
# unit scores; DEFAULT_UNIT_AGGREGATION where not listed. Chosen by `python examples/unit_aggregation.py`
# (paired ΔL of unit cuts both ways on the embedded model of each family, every unit kind at
# 30/50/70%, seed-1 windows; ΔL(mean) − ΔL(sum) pooled over the cells, 95% t interval over 16 windows):
# "sum" only where mean-normalisation measured worse. Why the split: fisher's and snip's element scores
# are already loss estimates, additive across tensors, so the raw sum is the unit's estimated ΔL and
# rescaling distorts it; magnitude, wanda and obs scores are weight scales of unlike tensors.
# Measured 2026-12-06 (mean − sum; negative: mean better):
#   mamba1 (tiny-mamba): fisher +0.069 [+0.059, +0.079], snip +0.023 [+0.012, +0.033] -> sum;
#     magnitude −0.059 [−0.074, −0.045], obs −0.023 [−0.033, −0.014], wanda +0.004 [−0.003, +0.012] -> mean
#   mamba2 (tiny-mamba2): fisher +0.026 [+0.005, +0.046], snip +0.104 [+0.088, +0.121] -> sum;
#     magnitude −0.132 [−0.153, −0.110], obs −0.031 [−0.041, −0.021], wanda −0.004 [−0.027, +0.018] -> mean
#     (WANDA head cuts alone: mean worse at 30% and 50%, +0.07 and +0.05, far better at 70%, −0.48)
#   gated_delta (tiny-deltanet): fisher +0.021 [+0.008, +0.034] -> sum; snip +0.014 [−0.002, +0.030],
#     magnitude −0.026 [−0.042, −0.010], wanda −0.077 [−0.091, −0.062], obs −0.035 [−0.058, −0.012] -> mean
UNIT_AGGREGATION: dict[str, dict[str, str]] = {
    "mamba1": {"fisher": "sum", "snip": "sum"},
    "mamba2": {"fisher": "sum", "snip": "sum"},
    "gated_delta": {"fisher": "sum"},
}
DEFAULT_UNIT_AGGREGATION = "mean"  # also every family without an embedded model to measure on (KDA, ...)


def aggregate_unit_scores(per_tensor: dict[str, torch.Tensor], how: str = "sum") -> torch.Tensor:
    """Combine per-tensor unit scores (each float64 ``(count,)``) into one score per unit.

    Raw element scores of unlike tensors are on unlike scales (on tiny-mamba |A_log| is most of
    every magnitude state score), so each tensor's scores are made comparable before summing:
    ``"sum"`` adds them raw; ``"mean"`` divides each tensor's by its mean over the units (every
    tensor then contributes the same total); ``"rank"`` replaces each by its rank among the units
    scaled to [0, 1] (ties share their mean rank).
    """
    if how not in UNIT_AGGREGATIONS:
        raise ValueError(f"unknown unit aggregation '{how}'; choose from {', '.join(UNIT_AGGREGATIONS)}")
    if not per_tensor:
        raise ValueError("no tensor scores to aggregate")
    return sum(_comparable(scores, how) for scores in per_tensor.values())


def unit_aggregations(criteria: Iterable[str], mixer_kinds: Iterable[str]) -> dict[str, dict[str, str]]:
    """Mixer kind -> criterion -> the aggregation its unit scores ran with, for ``criteria`` that combine
    per-tensor unit scores ({} when none does): what the run record and the report name."""
    summing = [get(name) for name in dict.fromkeys(criteria) if CRITERIA.get(name).aggregates_units()]
    if not summing:
        return {}
    return {kind: {c.name: c.aggregation_for(kind) for c in summing} for kind in dict.fromkeys(mixer_kinds)}


AGGREGATION_MEANING = {"sum": "the tensors' sums added raw", "mean": "each tensor's divided by its mean over the units",
                       "std": "each tensor's standardised over the units", "rank": "each tensor's ranked among the units"}


def unit_aggregation_text(aggregations: dict[str, dict[str, str]]) -> str:
    """One sentence: how each criterion that sums element scores per tensor combined the tensors' sums,
    per mixer kind (``unit_aggregations``' mapping)."""
    parts = []
    for kind, by_criterion in aggregations.items():
        groups: dict[str, list[str]] = {}
        for criterion, how in by_criterion.items():
            groups.setdefault(how, []).append(criterion)
        ways = "; ".join(f"{', '.join(names)} by {how} ({AGGREGATION_MEANING.get(how, how)})"
                         for how, names in groups.items())
        parts.append(f"{kind} mixers: {ways}")
    return "a unit's element scores summed per tensor, the tensors' sums combined in " + "; ".join(parts)


def _comparable(scores: torch.Tensor, how: str) -> torch.Tensor:
    if how == "mean":
        mean = scores.mean()
        return scores / mean if mean > 0 else torch.zeros_like(scores)
    if how == "std":
        std = scores.std() if len(scores) > 1 else scores.new_tensor(0.0)
        return (scores - scores.mean()) / std if std > 0 else torch.zeros_like(scores)
    if how == "rank":
        ordered = scores.sort().values
        low = torch.searchsorted(ordered, scores, right=False)
        high = torch.searchsorted(ordered, scores, right=True)
        return (low + high - 1).double() / 2 / max(len(scores) - 1, 1)
    return scores


def _needs_extra(name: str, err: ImportError) -> str:
    return f"criterion '{name}' needs an optional dependency ({err.name}); pip install 'ssm-profile[{name}]'"


# Every criterion by name; other packages add theirs through the "ssm_profile.criteria" entry points.
CRITERIA: Registry[type[Criterion]] = Registry("criterion", "ssm_profile.criteria", _needs_extra)


def register(cls: type[Criterion]) -> type[Criterion]:
    """Class decorator: register a criterion under its ``name`` (a taken name is an error)."""
    return CRITERIA.add(cls.name, cls)


def register_lazy(name: str, target: str) -> None:
    """Register ``"module:Class"`` under ``name``, imported on first use (optional dependencies)."""
    CRITERIA.add_lazy(name, target)


def available() -> list[str]:
    return sorted(CRITERIA.names())


def get(name: str, **kwargs: Any) -> Criterion:
    """Instantiate a criterion by name; unknown names raise a one-line error listing the options."""
    return CRITERIA.get(name)(**kwargs)
