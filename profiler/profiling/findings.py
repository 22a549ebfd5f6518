"""What the literature reports, checked on this model's own measurements, with uncertainty.

Each finding is decided by a rule fixed in advance (the sparsity and comparison are written in
its ``claim``); nothing here is tuned per model. A rule turns the claim into one or more
statistics that the claim says are positive (e.g. ΔL(magnitude) − ΔL(WANDA)), estimated on the
measured losses and given a 95% interval by a PAIRED bootstrap over evaluation windows: every
trial a statistic uses is resampled with the same window indices (``ProfileResult.resampled_means``),
so window-to-window noise that both sides share cancels out.

Decision rule, per statistic:

* **holds** if its 95% interval excludes 0 in the claimed direction (lower end > 0);
* **contradicted** if the interval excludes 0 the other way (upper end < 0);
* **inconclusive** otherwise, or when the run has no per-window losses to resample.

A claim with several statistics (a conjunction, e.g. Fisher < random < magnitude) holds if all of
them hold and is contradicted if any is contradicted. **not measured**: the run lacks the trials
the rule needs (e.g. a criterion or target was not selected). ``holds`` mirrors the verdict for
older consumers: True (holds), False (contradicted), None (inconclusive or not measured).
Where a rule picks "the best criterion" of a target, it picks it once on the point estimates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np

if TYPE_CHECKING:
    from .sensitivity import Trial


class ProfileResult(Protocol):
    """What the rules read of a profile result (:class:`ssm_profile.profiling.results.ProfileResult`
    evaluates them, so they name this interface instead of importing it back)."""

    dense_loss: float
    tolerance: float
    analysis: Any

    def resampled_means(self, trials: list[Trial]) -> np.ndarray: ...
    def trial(self, target: str, criterion: str, sparsity: float) -> Trial | None: ...
    def criteria(self) -> list[str]: ...
    def targets(self) -> list[str]: ...

PROBE = 0.5  # the sparsity every rule compares at
FRAGILE_THRESHOLD = 0.20  # relative perplexity increase at PROBE that makes a group "fragile"

HOLDS, CONTRADICTED, INCONCLUSIVE, NOT_MEASURED = "holds", "contradicted", "inconclusive", "not measured"
VERDICTS = (HOLDS, CONTRADICTED, INCONCLUSIVE, NOT_MEASURED)
_HOLDS_FLAG = {HOLDS: True, CONTRADICTED: False, INCONCLUSIVE: None, NOT_MEASURED: None}


@dataclass
class Finding:
    id: str
    claim: str
    source: str
    holds: bool | None  # True: holds, False: contradicted, None: inconclusive or not measured
    detail: str
    numbers: dict[str, float] = field(default_factory=dict)
    verdict: str = ""  # one of VERDICTS; derived from ``holds`` when not given

    def __post_init__(self) -> None:
        if not self.verdict:
            self.verdict = {True: HOLDS, False: CONTRADICTED, None: NOT_MEASURED}[self.holds]


@dataclass(frozen=True)
class Estimate:
    """A statistic the claim says is positive: its value and paired bootstrap 95% interval."""
    name: str
    value: float
    low: float  # NaN when there were no per-window losses to resample
    high: float

    @property
    def verdict(self) -> str:
        if self.low > 0:
            return HOLDS
        if self.high < 0:
            return CONTRADICTED
        return INCONCLUSIVE  # includes NaN bounds

    def text(self) -> str:
        interval = "no interval" if np.isnan(self.low) else f"95% CI {self.low:+.4f} … {self.high:+.4f}"
        return f"{self.name} {self.value:+.4f} ({interval})"


Statistic = Callable[[np.ndarray], np.ndarray]  # mean losses (..., dense + trials) -> statistic


def estimate(result: "ProfileResult", name: str, trials: list["Trial"], statistic: Statistic) -> Estimate:
    """``statistic`` of the losses [dense, *trials] on the measured data and on paired resamples."""
    point = float(statistic(np.array([result.dense_loss] + [t.loss for t in trials])))
    means = result.resampled_means(trials)
    if means is None:
        return Estimate(name, point, float("nan"), float("nan"))
    low, high = np.percentile(statistic(means), [2.5, 97.5])
    return Estimate(name, point, float(low), float(high))


def difference(result: "ProfileResult", name: str, larger: "Trial", smaller: "Trial") -> Estimate:
    """ΔL(larger) − ΔL(smaller), paired; the claim is that it is positive."""
    return estimate(result, name, [larger, smaller], lambda m: m[..., 1] - m[..., 2])


def combine(estimates: list[Estimate]) -> str:
    """A conjunction: holds if every part holds, contradicted if any part is contradicted."""
    verdicts = [e.verdict for e in estimates]
    if not verdicts:
        return NOT_MEASURED
    if CONTRADICTED in verdicts:
        return CONTRADICTED
    return HOLDS if all(v == HOLDS for v in verdicts) else INCONCLUSIVE


def make_finding(id_: str, claim: str, source: str, estimates: list[Estimate], context: str = "") -> Finding:
    verdict = combine(estimates)
    if verdict == NOT_MEASURED:
        return Finding(id_, claim, source, None, "not measured", verdict=NOT_MEASURED)
    detail = "; ".join(e.text() for e in estimates) + (f" [{context}]" if context else "")
    numbers = {}
    for e in estimates:
        numbers.update({e.name: e.value, f"{e.name}.ci_low": e.low, f"{e.name}.ci_high": e.high})
    return Finding(id_, claim, source, _HOLDS_FLAG[verdict], detail, numbers, verdict)


def _at_probe(result: "ProfileResult", target: str, criterion: str) -> "Trial | None":
    return result.trial(target, criterion, PROBE)


def _best_at_probe(result: "ProfileResult", target: str) -> "Trial | None":
    """The criterion that loses least on ``target`` at the probe sparsity (chosen on the point estimate)."""
    trials = [t for c in result.criteria() if (t := _at_probe(result, target, c)) is not None]
    return min(trials, key=lambda t: t.delta_loss) if trials else None


def _rel_ppl(m: np.ndarray) -> np.ndarray:
    """Relative perplexity increase of the first trial over the dense model."""
    return np.exp(m[..., 1] - m[..., 0]) - 1.0


# ---------------------------------------------------------------------- the claims
def wanda_vs_magnitude(result: "ProfileResult") -> Finding:
    estimates = []
    for group in ("in_proj", "out_proj"):
        w, m = _at_probe(result, group, "wanda"), _at_probe(result, group, "magnitude")
        if w is not None and m is not None:
            estimates.append(difference(result, f"{group}: ΔL magnitude − WANDA", m, w))
    return make_finding("wanda_vs_magnitude", "WANDA loses less than magnitude at 50% unstructured sparsity on "
                        "in_proj and out_proj", "Ghattas et al. 2025; SparseSSM 2025", estimates)


def state_criteria_order(result: "ProfileResult") -> Finding:
    f, r, m = (_at_probe(result, "unit:state", c) for c in ("fisher", "random", "magnitude"))
    estimates = [] if None in (f, r, m) else [difference(result, "ΔL random − fisher", r, f),
                                              difference(result, "ΔL magnitude − random", m, r)]
    return make_finding("state_criteria_order", "For SSM states at 50%: Fisher-Taylor < random < magnitude (ΔL)",
                        "Ghattas et al. 2025 (Phi-Mamba state pruning)", estimates)


def a_log_fragility(result: "ProfileResult") -> Finding:
    trial = _at_probe(result, "A_log", "magnitude")
    kinds = result.analysis.model.get("mixer_kinds", [])
    claim = (f"Mamba-1's A_log is fragile under 50% magnitude pruning (perplexity +{FRAGILE_THRESHOLD:.0%} or "
             f"more) while Mamba-2's is not")
    if trial is None or kinds not in (["mamba1"], ["mamba2"]):  # a claim about Mamba's A_log only
        return make_finding("a_log_fragility", claim, "SparseSSM 2025", [])
    if kinds[0] == "mamba1":  # expected fragile: rel. ppl increase − threshold > 0
        est = estimate(result, "A_log rel. ppl increase − threshold", [trial],
                       lambda m: _rel_ppl(m) - FRAGILE_THRESHOLD)
    else:  # expected not fragile: threshold − rel. ppl increase > 0
        est = estimate(result, "threshold − A_log rel. ppl increase", [trial],
                       lambda m: FRAGILE_THRESHOLD - _rel_ppl(m))
    return make_finding("a_log_fragility", claim, "SparseSSM 2025", [est],
                        f"{kinds[0]}: perplexity {trial.rel_ppl_increase:+.1%}")


def heads_vs_states(result: "ProfileResult") -> Finding:
    kinds = result.analysis.model.get("mixer_kinds", [])
    wide = "unit:head" if "mamba2" in kinds else "unit:channel"
    claim = ("Cutting heads hurts more than cutting states at 50% (best criterion each)" if wide == "unit:head" else
             "Cutting channels (Mamba-1's analogue of heads) hurts more than cutting states at 50% (best criterion each)")
    return _unit_vs_states(result, "heads_vs_states", claim, wide)


def head_dim_vs_states(result: "ProfileResult") -> Finding:
    claim = "Cutting head dimensions (head channels) drops quality sharply: ΔL above state pruning's at 50% " \
            "(best criterion each)"
    return _unit_vs_states(result, "head_dim_vs_states", claim, "unit:head_channel")


def _unit_vs_states(result: "ProfileResult", id_: str, claim: str, wide: str) -> Finding:
    units, states = _best_at_probe(result, wide), _best_at_probe(result, "unit:state")
    if units is None or states is None:
        return make_finding(id_, claim, "Ghattas et al. 2025", [])
    est = difference(result, f"ΔL {wide} − unit:state", units, states)
    return make_finding(id_, claim, "Ghattas et al. 2025", [est],
                        f"{wide} ΔL {units.delta_loss:.4f} ({units.criterion}) vs unit:state ΔL "
                        f"{states.delta_loss:.4f} ({states.criterion})")


def out_proj_sensitive(result: "ProfileResult") -> Finding:
    claim = "out_proj is especially sensitive: its ΔL at 50% is above the median parameter group's (best criterion each)"
    groups = [t for t in result.targets() if not t.startswith("unit:") and t != "out_proj"]
    out = _best_at_probe(result, "out_proj")
    others = [t for g in groups if (t := _best_at_probe(result, g)) is not None]
    if out is None or len(others) < 2:
        return make_finding("out_proj_sensitive", claim, "Ghattas et al. 2025", [])
    est = estimate(result, "ΔL out_proj − median group", [out] + others,
                   lambda m: m[..., 1] - np.median(m[..., 2:], axis=-1))
    return make_finding("out_proj_sensitive", claim, "Ghattas et al. 2025", [est],
                        f"out_proj ΔL {out.delta_loss:.4f} ({out.criterion}) vs {len(others)} other groups")


def wanda_robust(result: "ProfileResult") -> Finding:
    tolerance = result.tolerance
    claim = f"WANDA is robust up to 50% unstructured sparsity on in_proj (perplexity +{tolerance:.0%} or less)"
    trial = _at_probe(result, "in_proj", "wanda")
    estimates = [] if trial is None else [estimate(result, "tolerance − in_proj rel. ppl increase", [trial],
                                                   lambda m: tolerance - _rel_ppl(m))]
    context = "" if trial is None else f"perplexity {trial.rel_ppl_increase:+.1%}"
    return make_finding("wanda_robust", claim, "SparseSSM 2025; Ghattas et al. 2025", estimates, context)


RULES = (wanda_vs_magnitude, state_criteria_order, a_log_fragility, heads_vs_states, head_dim_vs_states,
         out_proj_sensitive, wanda_robust)


def evaluate_findings(result: "ProfileResult") -> list[Finding]:
    return [rule(result) for rule in RULES]
