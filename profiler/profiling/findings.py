"""What the literature reports, checked on this model's own measurements, with uncertainty.

Each finding is decided by a rule fixed in advance (the sparsity and comparison are written in
its ``claim``); nothing here is tuned per model. A rule turns the claim into one or more
statistics that the claim says are positive (e.g. ΔL(magnitude) − ΔL(WANDA)). Every statistic is
a monotone function of a *contrast*: a fixed weighted sum of the mean losses of the dense model and
of the trials it compares (weights summing to 0, so what every window shares cancels). The
contrast is computed window by window on the windows all those trials were evaluated on, and its
95% interval is Student's t with n − 1 degrees of freedom over those n paired window values
(mapped through the monotone function at both ends).

Why t and not a bootstrap: many findings rest on an adaptive sweep's 4-window screens
(:mod:`ssm_profile.profiling.adaptive`), and a percentile bootstrap of 4 values is far too narrow
(it covers a true mean difference about 79% of the time, not 95%; ``tests/test_findings.py``
simulates both). The t interval covers 95% for normal window differences at any n, and the number
of windows it rests on is part of every finding (``Finding.windows``, shown wherever findings are).

Decision rule, per statistic:

* **holds** if its 95% interval excludes 0 in the claimed direction (lower end > 0);
* **contradicted** if the interval excludes 0 the other way (upper end < 0);
* **inconclusive** otherwise, or when fewer than two windows carry per-window losses.

A claim with several statistics (a conjunction, e.g. Fisher < random < magnitude) holds if all of
them hold and is contradicted if any is contradicted. **not measured**: the run lacks the trials
the rule needs (e.g. a criterion or target was not selected). ``holds`` mirrors the verdict for
older consumers: True (holds), False (contradicted), None (inconclusive or not measured).
Where a rule picks "the best criterion" of a target (or the median group), it picks it once on the
point estimates; the interval is then that of a fixed contrast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

import numpy as np

if TYPE_CHECKING:
    from .sensitivity import Trial


class ProfileResult(Protocol):
    """What the rules read of a profile result (:class:`ssm_profile.profiling.results.ProfileResult`
    evaluates them, so they name this interface instead of importing it back)."""

    dense_window_losses: list[float]
    dense_loss: float
    tolerance: float
    analysis: Any

    def trial(self, target: str, criterion: str, sparsity: float) -> Trial | None: ...
    def criteria(self) -> list[str]: ...
    def targets(self) -> list[str]: ...

PROBE = 0.5  # the sparsity every rule compares at
FRAGILE_THRESHOLD = 0.20  # relative perplexity increase at PROBE that makes a group "fragile"
CONFIDENCE = 0.95

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
    windows: int | None = None  # evaluation windows its intervals rest on (the fewest of its statistics')

    def __post_init__(self) -> None:
        if not self.verdict:
            self.verdict = {True: HOLDS, False: CONTRADICTED, None: NOT_MEASURED}[self.holds]

    @property
    def windows_text(self) -> str:
        return "" if self.windows is None else str(self.windows)


@dataclass(frozen=True)
class Estimate:
    """A statistic the claim says is positive: its value and 95% t interval over ``windows`` paired windows."""
    name: str
    value: float
    low: float  # NaN when fewer than two windows carried per-window losses
    high: float
    windows: int = 0

    @property
    def verdict(self) -> str:
        if self.low > 0:
            return HOLDS
        if self.high < 0:
            return CONTRADICTED
        return INCONCLUSIVE  # includes NaN bounds

    def text(self) -> str:
        interval = "no interval" if np.isnan(self.low) else f"95% CI {self.low:+.4f} … {self.high:+.4f}"
        return f"{self.name} {self.value:+.4f} ({interval}, {self.windows} windows)"


Transform = Callable[[float], float]  # monotone: the statistic as a function of the contrast


@lru_cache(maxsize=None)
def t_quantile(probability: float, dof: int) -> float:
    from scipy.stats import t as student_t

    return float(student_t.ppf(probability, dof))


def t_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """Mean of ``values`` and its Student-t interval with ``len(values) - 1`` degrees of freedom."""
    n = len(values)
    mean = float(np.mean(values))
    if n < 2:
        return mean, float("nan"), float("nan")
    half = t_quantile(0.5 + confidence / 2, n - 1) * float(np.std(values, ddof=1)) / math.sqrt(n)
    return mean, mean - half, mean + half


def paired_windows(result: "ProfileResult", trials: Sequence["Trial"]) -> np.ndarray:
    """Per-window losses (rows: dense, then each trial) on the windows every one of them was evaluated
    on: a screen or a trial stopped early holds a prefix of the search windows."""
    n = min([len(result.dense_window_losses), *(len(t.window_losses) for t in trials)])
    return np.array([result.dense_window_losses[:n], *(t.window_losses[:n] for t in trials)], dtype=float)


def estimate(result: "ProfileResult", name: str, trials: Sequence["Trial"], weights: Sequence[float],
             transform: Transform = lambda x: x) -> Estimate:
    """``transform`` of the contrast ``weights`` · [dense, *trials] mean losses, with its paired t interval."""
    losses = paired_windows(result, trials)
    if losses.shape[1] < 2:  # no per-window losses: the point estimate on the trials' own means
        point = float(np.dot(weights, [result.dense_loss, *(t.loss for t in trials)]))
        return Estimate(name, transform(point), float("nan"), float("nan"), losses.shape[1])
    mean, low, high = t_interval(np.asarray(weights, dtype=float) @ losses)
    ends = sorted((transform(low), transform(high)))
    return Estimate(name, transform(mean), ends[0], ends[1], losses.shape[1])


def difference(result: "ProfileResult", name: str, larger: "Trial", smaller: "Trial") -> Estimate:
    """ΔL(larger) − ΔL(smaller), paired; the claim is that it is positive."""
    return estimate(result, name, [larger, smaller], [0.0, 1.0, -1.0])


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
    return Finding(id_, claim, source, _HOLDS_FLAG[verdict], detail, numbers, verdict,
                   windows=min(e.windows for e in estimates))


def _at_probe(result: "ProfileResult", target: str, criterion: str) -> "Trial | None":
    return result.trial(target, criterion, PROBE)


def _best_at_probe(result: "ProfileResult", target: str) -> "Trial | None":
    """The criterion that loses least on ``target`` at the probe sparsity (chosen on the point estimate)."""
    trials = [t for c in result.criteria() if (t := _at_probe(result, target, c)) is not None]
    return min(trials, key=lambda t: t.delta_loss) if trials else None


RISE = [-1.0, 1.0]  # the contrast ΔL of one trial: its loss minus the dense model's


def _rel_ppl(delta: float) -> float:
    """Relative perplexity increase of a loss increase ``delta``."""
    return math.expm1(min(delta, 700.0))


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
    kinds = result.analysis.model.mixer_kinds
    claim = (f"Mamba-1's A_log is fragile under 50% magnitude pruning (perplexity +{FRAGILE_THRESHOLD:.0%} or "
             f"more) while Mamba-2's is not")
    if trial is None or kinds not in (["mamba1"], ["mamba2"]):  # a claim about Mamba's A_log only
        return make_finding("a_log_fragility", claim, "SparseSSM 2025", [])
    if kinds[0] == "mamba1":  # expected fragile: rel. ppl increase − threshold > 0
        est = estimate(result, "A_log rel. ppl increase − threshold", [trial], RISE,
                       lambda d: _rel_ppl(d) - FRAGILE_THRESHOLD)
    else:  # expected not fragile: threshold − rel. ppl increase > 0
        est = estimate(result, "threshold − A_log rel. ppl increase", [trial], RISE,
                       lambda d: FRAGILE_THRESHOLD - _rel_ppl(d))
    return make_finding("a_log_fragility", claim, "SparseSSM 2025", [est],
                        f"{kinds[0]}: perplexity {trial.rel_ppl_increase:+.1%}")


def heads_vs_states(result: "ProfileResult") -> Finding:
    kinds = result.analysis.model.mixer_kinds
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
    est = estimate(result, "ΔL out_proj − median group", [out] + others, [0.0, 1.0, *_median_weights(others)])
    return make_finding("out_proj_sensitive", claim, "Ghattas et al. 2025", [est],
                        f"out_proj ΔL {out.delta_loss:.4f} ({out.criterion}) vs {len(others)} other groups")


def _median_weights(trials: list["Trial"]) -> list[float]:
    """Weights −1 on the median trial by ΔL (−½ on each of the middle two of an even count), 0 elsewhere:
    the median group, picked on the point estimates."""
    order = sorted(range(len(trials)), key=lambda i: trials[i].delta_loss)
    middle = order[(len(order) - 1) // 2: len(order) // 2 + 1]
    return [-1.0 / len(middle) if i in middle else 0.0 for i in range(len(trials))]


def wanda_robust(result: "ProfileResult") -> Finding:
    tolerance = result.tolerance
    claim = f"WANDA is robust up to 50% unstructured sparsity on in_proj (perplexity +{tolerance:.0%} or less)"
    trial = _at_probe(result, "in_proj", "wanda")
    estimates = [] if trial is None else [estimate(result, "tolerance − in_proj rel. ppl increase", [trial], RISE,
                                                   lambda d: tolerance - _rel_ppl(d))]
    context = "" if trial is None else f"perplexity {trial.rel_ppl_increase:+.1%}"
    return make_finding("wanda_robust", claim, "SparseSSM 2025; Ghattas et al. 2025", estimates, context)


RULES = (wanda_vs_magnitude, state_criteria_order, a_log_fragility, heads_vs_states, head_dim_vs_states,
         out_proj_sensitive, wanda_robust)


def evaluate_findings(result: "ProfileResult") -> list[Finding]:
    return [rule(result) for rule in RULES]
